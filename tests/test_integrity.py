"""Checksums recorded at commit and ``verify_store``."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import MmapArray, PointerArray, StoreWriter
from bigarray.errors import IntegrityError, StoreNotFoundError
from bigarray.integrity import (
    BLOCK_BYTES,
    DataChecksums,
    block_rows_for,
    verify_store,
)

ROW = 64  # float32 columns: 256-byte rows, 4096 rows per 1 MiB block
BR = block_rows_for(ROW * 4)


def seg(i: int, n: int) -> np.ndarray:
    return np.full((n, ROW), i, "f4") + np.arange(n, dtype="f4")[:, None]


def write(path: Path, segs: dict[str, np.ndarray], **kw: Any) -> None:
    w = StoreWriter(path, dtype="f4", shape=(0, ROW), fsync=False, **kw)
    w.write_rows(list(segs.values()), list(segs))
    w.close()


def checksums(path: Path) -> DataChecksums:
    doc = json.loads((path / "manifest.json").read_bytes())
    return DataChecksums.from_json(doc["variables"]["data"]["checksums"], "test")


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ 0xFF]))


def data_offset(path: Path) -> int:
    doc = json.loads((path / "manifest.json").read_bytes())
    return int(doc["variables"]["data"]["shards"][0]["offset"])


def test_commit_records_block_and_index_checksums(tmp_path: Path) -> None:
    segs = {f"s{i}": seg(i, 1000) for i in range(10)}  # 10,000 rows: 3 blocks
    write(tmp_path / "s", segs)
    sums = checksums(tmp_path / "s")
    assert sums.block_rows == BR == BLOCK_BYTES // (ROW * 4)
    assert sums.rows == 10_000 and sums.nblocks == 3
    assert sums.index is not None and set(sums.index["files"]) >= {"names", "bounds", "table"}
    report = verify_store(tmp_path / "s")
    assert report.ok and report.blocks_checked == 3 and report.segments == 10
    assert "OK" in str(report)


def test_first_bad_block_and_the_segments_it_touches(tmp_path: Path) -> None:
    segs = {f"s{i}": seg(i, 1000) for i in range(10)}
    write(tmp_path / "s", segs)
    # a byte in row 5,000: block 1 (rows [4096, 8192)) holds segments s4 .. s8
    flip(tmp_path / "s" / "data.npy", data_offset(tmp_path / "s") + 5000 * ROW * 4 + 3)
    report = verify_store(tmp_path / "s")
    assert not report.ok
    bad = report.first_bad_block
    assert bad is not None
    assert (bad.block, bad.rows) == (1, (BR, 2 * BR))
    assert bad.segments == ["s4", "s5", "s6", "s7", "s8"]
    assert bad.file == "data.npy" and bad.bytes[0] == data_offset(tmp_path / "s") + BR * ROW * 4
    assert report.bad_block_count == 1
    assert "block 1" in str(report) and "'s5'" in str(report)
    with pytest.raises(IntegrityError, match="segments touching it: 's4'"):
        PointerArray(tmp_path / "s", verify=True)
    with pytest.raises(IntegrityError, match="block 1"):
        MmapArray(tmp_path / "s", verify=True)


def test_commit_sums_only_the_blocks_it_touched(tmp_path: Path) -> None:
    """Damage to an untouched committed block survives the next commit's sums (they were
    reused, not recomputed over the damage), so verify still reports it."""
    path = tmp_path / "s"
    write(path, {f"s{i}": seg(i, 1000) for i in range(10)})
    before = checksums(path)
    flip(path / "data.npy", data_offset(path) + 10 * ROW * 4)  # block 0, not touched below
    w = StoreWriter(path, fsync=False)
    w.write_rows([seg(99, 5000)], ["more"])  # rows [10000, 15000): blocks 2 and 3
    w.close()
    after = checksums(path)
    assert after.blocks[0] == before.blocks[0] and after.blocks[1] == before.blocks[1]
    assert after.blocks[2] != before.blocks[2]  # the old partial last block was resummed
    report = verify_store(path)
    assert not report.ok and report.first_bad_block is not None
    assert report.first_bad_block.block == 0


def test_rows_rewritten_in_place_are_resummed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    w = StoreWriter(path, dtype="f4", shape=(20_000, ROW), named=False, fsync=False)
    w.close()
    w = StoreWriter(path, named=False, fsync=False)
    w.write_rows([np.ones((10, ROW), "f4")], start_position=9000)  # inside committed rows
    w.close()
    assert verify_store(path).ok
    assert float(np.asarray(MmapArray(path))[9000:9010].sum()) == 10 * ROW


def _child_writes(w: StoreWriter, name: str) -> None:
    w.write_rows([seg(7, 3000)], [name])


def test_rows_written_by_child_processes_are_summed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write(path, {"a": seg(1, 100)})
    w = StoreWriter(path, fsync=False)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_child_writes, args=(w, f"c{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    w.close()
    assert len(PointerArray(path).indices) == 4
    assert verify_store(path).ok


def test_checksums_off_drops_them_and_verify_says_so(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write(path, {"a": seg(1, 100)})
    w = StoreWriter(path, fsync=False, checksums=False)
    w.write_rows([seg(2, 100)], ["b"])
    w.close()
    doc = json.loads((path / "manifest.json").read_bytes())
    assert "checksums" not in doc["variables"]["data"]  # never stale sums
    report = verify_store(path)
    assert report.ok and any("no recorded checksums" in n for n in report.notes)
    # the next commit with checksums on sums everything again
    write(path, {"c": seg(3, 100)})
    assert verify_store(path).ok and checksums(path).rows == 300


def test_damaged_index_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write(path, {f"s{i}": seg(i, 10) for i in range(50)})
    rel = json.loads((path / "manifest.json").read_bytes())["segments"]["files"]["bounds"]
    flip(path / rel, (path / rel).stat().st_size - 3)
    report = verify_store(path)
    assert not report.ok
    assert any("bounds" in p and "crc32" in p for p in report.problems)


def test_manifest_pointing_elsewhere_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write(path, {"a": seg(1, 100), "b": seg(2, 100)})
    doc = json.loads((path / "manifest.json").read_bytes())
    doc["variables"]["data"]["shards"][0]["offset"] = 0  # reads the header as data
    (path / "manifest.json").write_text(json.dumps(doc))
    report = verify_store(path)
    assert not report.ok and "shard list differ" in str(report)


def test_malformed_checksums_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write(path, {"a": seg(1, 100)})
    doc = json.loads((path / "manifest.json").read_bytes())
    doc["variables"]["data"]["checksums"]["blocks"] = "not base64!"
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="checksums are malformed .*not base64"):
        PointerArray(path, verify=True)


def test_header_row_count_may_run_ahead_but_not_behind(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write(path, {"a": seg(1, 100)})
    with open(path / "data.npy", "r+b") as f:
        head = f.read(data_offset(path))
        f.seek(0)
        f.write(head.replace(b"(100, 64)", b"(99, 64) "))
    report = verify_store(path)
    assert not report.ok and "fewer than the 100 committed" in str(report)


def test_verify_missing_store_raises(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        verify_store(tmp_path / "nope")
