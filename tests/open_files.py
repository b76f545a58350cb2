"""What this process has open, read from ``/proc`` (Linux): for descriptor-leak tests."""

from __future__ import annotations

import os


def open_paths() -> list[str]:
    """Real paths of every descriptor this process holds open."""
    out = []
    for f in os.listdir("/proc/self/fd"):
        try:
            out.append(os.path.realpath(os.readlink(f"/proc/self/fd/{f}")))
        except OSError:
            pass  # the descriptor listdir itself used
    return out
