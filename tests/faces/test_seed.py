"""The seed README's example is the compatibility contract: same code, same output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED_OUTPUT = """\
[0 1 2 3 4 5 6 7 8 9]
[660 661 662 663 664 665 666 667 668 669]
[780 781 782 783 784 785 786 787 788 789]
319600 319600
"""


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    target = tmp_path / "seed.py"
    # Only the store path changes, so tests running side by side do not share /tmp/array.
    target.write_text(script.replace("path = '/tmp/array'", f"path = {str(tmp_path / 'array')!r}"))
    return subprocess.run(
        [sys.executable, str(target)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "error::UserWarning"},
    )


def test_seed_text_is_verbatim() -> None:
    """examples/seed_example.py is the 2020 README's example, byte for byte, as this
    project's README quotes it (the first python block of the original API section)."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme.split("## The original API", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert (EXAMPLES / "seed_example.py").read_text() == block


def test_seed_example_fork(tmp_path: Path) -> None:
    script = (EXAMPLES / "seed_example.py").read_text()
    assert "path = '/tmp/array'" in script
    result = _run(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SEED_OUTPUT


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_seed_example_guarded(tmp_path: Path, method: str) -> None:
    script = (EXAMPLES / "seed_example_guarded.py").read_text()
    script = script.replace("START_METHOD = 'spawn'", f"START_METHOD = {method!r}")
    # twice: the second run replaces the first one's store (remove_exist=True), and its
    # pool children, started after close(), must join the closed session, never replace the
    # new store with one of their own
    for _ in range(2):
        result = _run(script, tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == SEED_OUTPUT
    # the journals of the pool children were merged and removed
    journal = tmp_path / "array" / "journal"
    assert not any(journal.rglob("*.rec"))
