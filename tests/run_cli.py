"""Run the ``bigarray`` command as users run it: the installed script, in a subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = shutil.which("bigarray") or str(Path(sys.executable).parent / "bigarray")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``bigarray ARGS...``: its exit status, stdout and stderr (text)."""
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300, cwd=cwd)
