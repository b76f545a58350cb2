"""Crash points: test hooks that kill the process at a named step of a write or commit.

``BIGARRAY_CRASH_AT=after-index`` SIGKILLs the process the first time the step is reached,
``after-index@3`` the third time. The fault tests use them to stop a commit exactly between
two of its steps and check that the store reopens at the previous commit or the new one.
With the variable unset a crash point costs one dictionary lookup.

Steps: ``after-allocate``, ``mid-data``, ``after-data``, ``after-journal`` (writes);
``commit-locked``, ``after-data-fsync``, ``after-header``, ``mid-index``, ``after-index``,
``before-manifest``, ``after-manifest``, ``after-discard`` (the local commit);
``compact-after-index``, ``compact-before-manifest``, ``compact-after-manifest``;
``dataset-after-variable`` (the xarray Dataset writer, between two variables' data).

The object-store paths use ``BIGARRAY_REMOTE_CRASH_AT=<step>`` (exit code 77, as a killed
client would leave the store) or ``<step>:sleep=<seconds>`` (a pause, to kill a server or
race another writer there): ``remote-before-manifest``, ``copy-before-manifest``.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["crash_point", "remote_crash_point"]

_CRASH_ENV = "BIGARRAY_CRASH_AT"
_REMOTE_CRASH_ENV = "BIGARRAY_REMOTE_CRASH_AT"
_hits: dict[str, int] = {}


def crash_point(step: str) -> None:
    """SIGKILL this process at ``step`` when ``BIGARRAY_CRASH_AT`` names it."""
    spec = os.environ.get(_CRASH_ENV)
    if spec is None:
        return
    name, _, nth = spec.partition("@")
    if name != step:
        return
    _hits[step] = hits = _hits.get(step, 0) + 1
    if hits >= (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)


def remote_crash_point(step: str) -> None:
    """Exit (code 77) or pause at ``step`` when ``BIGARRAY_REMOTE_CRASH_AT`` names it."""
    want = os.environ.get(_REMOTE_CRASH_ENV, "")
    if not want or want.split(":", 1)[0] != step:
        return
    if ":sleep=" in want:
        time.sleep(float(want.split(":sleep=", 1)[1]))
        return
    os._exit(77)
