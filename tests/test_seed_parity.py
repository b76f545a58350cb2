"""The 2020 benchmark script's workload: one big ``write()``, open, slices, cleanup.

Behaviour only (speed is measured in ``benchmarks/seed_script.py``): a large write returns
before its block sums are done and the commit still records them; the GIL-free CRC path
gives google-crc32c's sums; stores are removed and sized through the API and the CLI.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import MmapArray, MmapArrayWriter, integrity
from bigarray.integrity import verify_store


def test_large_write_returns_before_its_block_sums_and_commit_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold the follower thread's summing until the write has returned: if write() waited
    # for the sums (as it did), it would never return while they are held.
    release = threading.Event()
    real = integrity.sum_blocks

    def held(*args: Any) -> np.ndarray:
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(integrity, "sum_blocks", held)
    x = np.random.default_rng(0).random((4096, 512))  # 16 MiB: 16 blocks, followed
    w = MmapArrayWriter(tmp_path / "s", dtype="float64", shape=(0, 512))
    done = threading.Event()
    t = threading.Thread(target=lambda: (w.write(x), done.set()))
    t.start()
    returned = done.wait(20)
    release.set()
    t.join(30)
    assert returned, "write() waited for its block sums"
    w.close()
    report = verify_store(tmp_path / "s")
    assert report.ok, report
    np.testing.assert_array_equal(MmapArray(tmp_path / "s"), x)


def test_discarded_writer_stops_its_followers(tmp_path: Path) -> None:
    w = MmapArrayWriter(tmp_path / "s", dtype="float64", shape=(0, 512))
    w.write(np.ones((4096, 512)))
    w.writer.discard()  # must not hang nor leave a thread reading a closed descriptor
    assert w.closed
    assert len(MmapArray(tmp_path / "s")) == 0


@pytest.mark.parametrize("nbytes", [0, 1, 1000, (64 << 10) - 1, 64 << 10, (1 << 20) + 3])
def test_gil_free_crc_matches_google_crc32c(nbytes: int) -> None:
    import google_crc32c

    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    assert integrity._extend(7, data) == google_crc32c.extend(7, data)
    assert integrity._extend(0, data.tobytes()) == google_crc32c.extend(0, data.tobytes())
