"""The README's main job, at smoke size: it must run end to end and say what it did."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bigarray import PointerArray
from bigarray.demo import utterance, utterance_lengths


def test_demo_smoke(tmp_path: Path) -> None:
    script = shutil.which("bigarray") or str(Path(sys.executable).parent / "bigarray")
    store = tmp_path / "corpus.bigarray"
    result = subprocess.run(
        [script, "demo", "--size", "smoke", "--quiet", "--path", str(store)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in (
        "generate + write (worker processes)",
        "commit (merge journals, index)",
        "xr.open_dataset(engine='bigarray')",
        "per-utterance energy (map_segments)",
        "global mean/std over all frames",
        "read 200 utterances by name",
        "done: every utterance written by the workers was committed and read back",
    ):
        assert step in out, out
    # the store the workers wrote holds exactly the generated corpus
    x = PointerArray(store)
    lengths = utterance_lengths(400)
    assert len(x.indices) == 400 and len(x) == int(lengths.sum())
    for k in (0, 123, 399):
        assert (x[f"utt{k:07d}"] == utterance(k, int(lengths[k]))).all()
