"""Checksums recorded at commit and ``verify_store``."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import MmapArray, PointerArray, StoreWriter
from bigarray.core import integrity
from bigarray.core.integrity import (
    BLOCK_BYTES,
    DataChecksums,
    block_rows_for,
)
from bigarray.core.verify import verify_store
from bigarray.errors import IntegrityError, SchemaError, StoreNotFoundError

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


# ------------------------------------------------------------------ sums computed while writing
def _spy_sums(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[int]]]:
    """Record which thread summed which blocks (the writer's follower or the commit)."""
    calls: list[tuple[str, list[int]]] = []
    real = integrity.sum_blocks

    def spy(*args: Any) -> np.ndarray:
        calls.append((threading.current_thread().name, [int(b) for b in args[-1]]))
        return real(*args)

    monkeypatch.setattr(integrity, "sum_blocks", spy)
    return calls


@pytest.mark.parametrize("fsync", [False, True])
def test_a_large_write_is_summed_while_writing_and_the_commit_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    path = tmp_path / "s"
    calls = _spy_sums(monkeypatch)
    w = StoreWriter(path, dtype="f4", shape=(0, ROW), fsync=fsync)
    w.write_rows([seg(1, 100)], ["head"])  # the big write below starts inside block 0
    n = 20 * BR + 123
    w.write_rows(
        [seg(i, n // 20) for i in range(20)] + [seg(21, n % 20)], [f"s{i}" for i in range(21)]
    )
    w.close()
    follower = sorted(b for name, bs in calls if name.startswith("bigarray-write-crc") for b in bs)
    commit = sorted(
        b for name, bs in calls if not name.startswith("bigarray-write-crc") for b in bs
    )
    # rows [100, 100 + n): whole blocks 1 .. 19 summed while writing; the commit reads back
    # only block 0 (shared with "head") and the partial last block 20
    assert follower == list(range(1, 20))
    assert commit == [0, 20]
    report = verify_store(path)
    assert report.ok and report.blocks_checked == 21
    assert (
        checksums(path).blocks.tolist()
        == integrity.sum_blocks(*_whole_file_args(path), np.arange(21)).tolist()
    )


def _whole_file_args(path: Path) -> tuple[int, int, int, int, int]:
    import os

    doc = json.loads((path / "manifest.json").read_bytes())
    rows = doc["variables"]["data"]["shape"][0]
    fd = os.open(path / "data.npy", os.O_RDONLY)
    return fd, data_offset(path), ROW * 4, rows, BR


def _child_writes_blocks(w: StoreWriter) -> None:
    w.write_rows([seg(5, 16 * BR)], start_position=0)


def test_sums_of_blocks_written_twice_before_a_commit_are_not_reused(tmp_path: Path) -> None:
    """A child sums blocks 0..15 as it writes them, then the owner rewrites part of blocks 4
    and 5 before the commit: the child's sums of those blocks are stale and must be re-read."""
    path = tmp_path / "s"
    w = StoreWriter(path, dtype="f4", shape=(0, ROW), named=False, fsync=False)
    p = multiprocessing.get_context("fork").Process(target=_child_writes_blocks, args=(w,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    w.write_rows([seg(9, 2 * BR - 10)], start_position=4 * BR + 10)
    w.close()
    assert verify_store(path).ok
    got = np.asarray(MmapArray(path))
    assert (got[4 * BR + 10 : 6 * BR] == seg(9, 2 * BR - 10)).all()
    assert (got[: 4 * BR + 10] == seg(5, 16 * BR)[: 4 * BR + 10]).all()


def test_reuse_written_sums_only_for_blocks_one_record_touches() -> None:
    from bigarray.core.integrity import WrittenSums, reuse_written_sums

    plan = DataChecksums(10, 100, 0, np.zeros(10, np.uint32))
    todo = np.arange(10)
    a = WrittenSums(10, np.arange(0, 6), np.arange(100, 106, dtype=np.uint32))  # rows [0, 60)
    b = WrittenSums(10, np.arange(6, 10), np.arange(206, 210, dtype=np.uint32))  # rows [55, 100)
    left = reuse_written_sums(plan, todo, [(0, 60), (55, 100)], [a, b])
    assert left.tolist() == [5]  # both records touch block 5
    assert plan.blocks.tolist() == [100, 101, 102, 103, 104, 0, 206, 207, 208, 209]
    other_layout = WrittenSums(20, np.arange(0, 2), np.ones(2, np.uint32))
    assert reuse_written_sums(plan, todo, [(0, 40)], [other_layout]).tolist() == todo.tolist()


KIB_ROWS = 1024  # int64 x 128 = 1 KiB rows: 1,024 rows per 1 MiB block


def test_a_write_that_failed_midway_is_read_back_at_commit(tmp_path: Path) -> None:
    """A rewrite that raises after its first 32 MiB reached the file leaves no record: the
    commit must read those blocks back, not reuse the first write's (now stale) sums."""
    path = tmp_path / "s"
    w = StoreWriter(path, dtype="int64", shape=(0, 128), named=False, fsync=False)
    w.write_rows([np.ones((40 * KIB_ROWS, 128), np.int64)])  # 40 blocks, summed while written
    arrays = [np.full((8, 128), 2, np.int64) for _ in range(5000)] + [np.zeros((8, 7), np.int64)]
    with pytest.raises(SchemaError):
        w.write_rows(arrays, start_position=0)  # packed: the first batch is written first
    w.close()
    assert verify_store(path).ok
    got = np.asarray(MmapArray(path))
    assert (got[:8] == 2).all() and (got[-8:] == 1).all()  # the failed write did land, in part


def _write_ones(w: StoreWriter) -> None:
    w.write_rows([np.ones((40 * KIB_ROWS, 128), np.int64)], start_position=0)


def _rewrite_and_die(w: StoreWriter) -> None:
    os.environ["BIGARRAY_CRASH_AT"] = "mid-data"  # SIGKILL after the first 32 MiB batch
    w.write_rows([np.full((8, 128), 2, np.int64) for _ in range(5000)], start_position=0)


def test_a_worker_killed_midway_leaves_its_rows_to_be_read_back(tmp_path: Path) -> None:
    path = tmp_path / "s"
    w = StoreWriter(path, dtype="int64", shape=(0, 128), named=False, fsync=False)
    ctx = multiprocessing.get_context("fork")
    for target, code in ((_write_ones, 0), (_rewrite_and_die, -9)):
        p = ctx.Process(target=target, args=(w,))
        p.start()
        p.join(60)
        assert p.exitcode == code
    w.close()
    assert verify_store(path).ok
    assert (np.asarray(MmapArray(path))[:8] == 2).all()


def test_attached_copies_follow_the_owners_checksums_setting(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "s", dtype="f4", shape=(0, 4), fsync=False, checksums=False)
    assert StoreWriter.attach(w.handoff()).checksums is False
    w.close()


def _slow_to_publish(w: StoreWriter, go: Any) -> None:
    from bigarray.core import journal

    real = journal.Journal.append

    def late(self: Any, *args: Any, **kwargs: Any) -> None:
        go.wait(60)
        real(self, *args, **kwargs)

    journal.Journal.append = late  # type: ignore[method-assign]
    w.write_rows([np.full((16 * KIB_ROWS, 128), 1, np.int64)], start_position=0)


def test_sums_of_a_write_a_commit_saw_running_are_not_trusted(tmp_path: Path) -> None:
    """Process A writes and sums rows but publishes its record late; B rewrites the same
    rows and a commit merges B's record meanwhile. A's sums predate B's bytes: the commit
    that finally merges A's record must read the blocks back."""
    path = tmp_path / "s"
    w = StoreWriter(path, dtype="int64", shape=(0, 128), named=False, fsync=False)
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    a = ctx.Process(target=_slow_to_publish, args=(w, go))
    a.start()
    deadline = time.monotonic() + 60
    while not list((path / "journal").glob("*/*.inflight")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # A's data and sums are done; it waits to publish
    b = ctx.Process(target=_write_twos, args=(w,))
    b.start()
    b.join(60)
    w.flush()  # merges B's record; A's write is still marked as running
    go.set()
    a.join(60)
    w.close()  # merges A's record alone
    assert (a.exitcode, b.exitcode) == (0, 0)
    assert verify_store(path).ok


def _write_twos(w: StoreWriter) -> None:
    w.write_rows([np.full((16 * KIB_ROWS, 128), 2, np.int64)], start_position=0)
