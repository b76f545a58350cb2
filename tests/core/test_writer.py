"""Writers: appending, positions, growth, reopening, many processes, commit semantics."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from open_files import open_paths

from bigarray import MmapArray, MmapArrayWriter, PointerArray, PointerArrayWriter
from bigarray.core.verify import verify_store
from bigarray.errors import (
    ClosedError,
    DuplicateSegmentError,
    NotAStoreError,
    OverlapError,
    SchemaError,
    StoreExistsError,
)


def test_append_in_several_calls_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="float32") as w:
        assert w.write({"a": np.ones((3, 4)), "b": np.zeros((2, 4))}) == (0, 5)
        assert w.write({"c": np.full((4, 4), 7.0)}) == (5, 9)
    with PointerArrayWriter(path) as w:  # reopen: dtype and row shape come from the store
        assert w.write({"d": np.arange(8).reshape(2, 4)}) == (9, 11)
    x = PointerArray(path)
    assert x.shape == (11, 4) and x.dtype == np.float32
    assert dict(x.indices.items()) == {"a": (0, 3), "b": (3, 5), "c": (5, 9), "d": (9, 11)}
    np.testing.assert_array_equal(x["d"], np.arange(8).reshape(2, 4))
    assert list(x.indices) == ["a", "b", "c", "d"]  # row order
    # the data file is a standard .npy that numpy opens without bigarray
    raw = np.load(path / "data.npy", mmap_mode="r")
    np.testing.assert_array_equal(raw, x)


def test_positions_grow_and_declared_rows(tmp_path: Path) -> None:
    path = tmp_path / "s"
    w = PointerArrayWriter(path, shape=(10,), dtype="int64", remove_exist=True)
    w.write({"late": np.arange(5)}, start_position=20)  # past the declared end: grows
    w.write({"early": np.arange(3)}, start_position=2)
    w.close()
    x = PointerArray(path)
    assert x.shape == (25,)
    np.testing.assert_array_equal(x["late"], np.arange(5))
    np.testing.assert_array_equal(x[:2], [0, 0])  # never written: zeros
    assert x.indices["early"] == (2, 5)


def test_declared_shape_without_writes(tmp_path: Path) -> None:
    with MmapArrayWriter(tmp_path / "m", shape=(6, 2), dtype="int16"):
        pass
    m = MmapArray(tmp_path / "m")
    assert m.shape == (6, 2) and not m.any()


def test_mmap_writer_list_and_positions(tmp_path: Path) -> None:
    with MmapArrayWriter(tmp_path / "m", dtype="float64") as w:
        w.write([np.ones(3), np.zeros(2)])
        w.write(np.arange(4.0))
        w.write(np.full(2, 9.0), start_position=0)  # unnamed rows may be rewritten
    m = MmapArray(tmp_path / "m")
    np.testing.assert_array_equal(m, [9, 9, 1, 0, 0, 0, 1, 2, 3])


def test_remove_exist(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int8") as w:
        w.write({"a": np.ones(3, np.int8)})
    with PointerArrayWriter(path, dtype="int8", remove_exist=True) as w:
        w.write({"b": np.ones(2, np.int8)})
    assert list(PointerArray(path).indices) == ["b"]
    other = tmp_path / "notastore"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(NotAStoreError, match="refusing to delete"):
        PointerArrayWriter(other, dtype="int8", remove_exist=True)
    assert (other / "precious.txt").exists()
    with pytest.raises(StoreExistsError, match="remove_exist=True"):
        PointerArrayWriter(other, dtype="int8")


def test_dtype_rules(tmp_path: Path) -> None:
    with PointerArrayWriter(tmp_path / "s", dtype="int32") as w:
        w.write({"ok": np.arange(3, dtype=np.int64)})  # same kind: cast, as the seed does
        with pytest.raises(SchemaError, match="cannot store float64 data in this int32 store"):
            w.write({"bad": np.ones(3)})
        with pytest.raises(SchemaError, match="rows of this store have shape"):
            w.write({"bad": np.ones((3, 2), np.int32)})
        with pytest.raises(SchemaError, match="names must be str"):
            w.write({7: np.ones(3, np.int32)})  # type: ignore[dict-item]
        with pytest.raises(SchemaError, match="is a scalar"):
            w.write({"s": np.int32(4)})
        with pytest.raises(SchemaError, match="takes a mapping"):
            w.write([np.ones(3)])  # type: ignore[arg-type]
        with pytest.raises(SchemaError, match="start_position must be >= 0"):
            w.write({"n": np.ones(3, np.int32)}, start_position=-1)
    with pytest.raises(SchemaError, match="holds int32 data"):
        PointerArrayWriter(tmp_path / "s", dtype="float32")
    with pytest.raises(SchemaError, match="cannot be stored"):
        PointerArrayWriter(tmp_path / "o", dtype=object)
    with pytest.raises(SchemaError, match="cannot be stored"):
        PointerArrayWriter(tmp_path / "v", dtype=[("a", "<f4"), ("b", "<i4")])


def test_strings_never_truncated(tmp_path: Path) -> None:
    with PointerArrayWriter(tmp_path / "s", dtype="U4") as w:
        w.write({"a": np.array(["ab", "abcd"])})
        with pytest.raises(SchemaError, match="without losing information"):
            w.write({"b": np.array(["abcdefgh"])})
    np.testing.assert_array_equal(PointerArray(tmp_path / "s")["a"], ["ab", "abcd"])


def test_duplicates_and_overlaps(tmp_path: Path) -> None:
    path = tmp_path / "s"
    w = PointerArrayWriter(path, dtype="float32")
    w.write({"a": np.ones(3)})
    with pytest.raises(DuplicateSegmentError, match="'a' was already written"):
        w.write({"a": np.ones(2)})
    w.writer.abort()
    w.write({"b": np.ones(2)}, start_position=10)
    with pytest.raises(OverlapError, match="overlap"):
        w.write({"c": np.ones(2)}, start_position=11)
    w.writer.abort()
    w.write({"d": np.arange(4)}, start_position=0)
    w.close()
    assert dict(PointerArray(path).indices.items()) == {"d": (0, 4)}
    # committed rows are never overwritten, by this session or a later one
    with PointerArrayWriter(path) as w2:
        with pytest.raises(OverlapError, match="committed segment 'd'"):
            w2.write({"e": np.ones(2)}, start_position=3)
        w2.write({"e": np.ones(2)}, start_position=4)
    np.testing.assert_array_equal(PointerArray(path)["d"], np.arange(4))


def test_closed_writer(tmp_path: Path) -> None:
    w = PointerArrayWriter(tmp_path / "s", dtype="int8")
    w.close()
    w.close()  # harmless
    with pytest.raises(ClosedError, match="is closed"):
        w.write({"a": np.ones(2, np.int8)})
    with pytest.raises(ClosedError):
        w.flush()


def test_unicode_and_empty_segments(tmp_path: Path) -> None:
    names = ["utt-é", "語音/01", "", "x" * 300, "emoji-🎧"]
    data = {n: np.arange(i, dtype=np.int16) for i, n in enumerate(names)}
    with PointerArrayWriter(tmp_path / "s") as w:
        w.write(data)
    x = PointerArray(tmp_path / "s")
    for n, a in data.items():
        np.testing.assert_array_equal(x[n], a)
    assert len(x.indices) == len(names) and "missing" not in x.indices


# --------------------------------------------------------------------- many processes


def _child_write(args: tuple[PointerArrayWriter, int]) -> int:
    writer, k = args
    writer.write({f"p{k}-{i}": np.full((i + 1, 2), k, np.int32) for i in range(20)})
    return os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_children_append_without_manager(tmp_path: Path, method: str) -> None:
    """Appends (start_position=None) from pool children: rows are allocated under a lock,
    every child's segments reach the parent's commit, nothing is lost."""
    path = tmp_path / "s"
    w = PointerArrayWriter(path, shape=(0, 2), dtype="int32")
    with mp.get_context(method).Pool(2) as pool:
        pids = pool.map(_child_write, [(w, k) for k in range(8)])
    assert os.getpid() not in pids
    w.close()
    x = PointerArray(path)
    assert len(x.indices) == 160 and x.shape == (8 * 210, 2)
    for k in range(8):
        for i in range(20):
            np.testing.assert_array_equal(x[f"p{k}-{i}"], np.full((i + 1, 2), k))


def _child_overlap(args: tuple[PointerArrayWriter, str]) -> None:
    writer, name = args
    writer.write({name: np.ones(5, np.int8)}, start_position=3)


def test_overlap_between_processes_detected(tmp_path: Path) -> None:
    w = PointerArrayWriter(tmp_path / "s", dtype="int8")
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(_child_overlap, [(w, "a"), (w, "b")])
    with pytest.raises(
        OverlapError, match=r"'[ab]' rows \[3, 8\) and '[ab]' rows \[3, 8\) overlap"
    ):
        w.flush()
    assert not PointerArray(tmp_path / "s").indices  # nothing committed
    w.writer.abort()
    w.close()


def test_pickle_by_reference(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    for path, n in ((small, 10), (big, 200_000)):
        with PointerArrayWriter(path, dtype="float64") as w:
            w.write({f"s{i}": np.full((n // 10, 3), i, np.float64) for i in range(10)})
    sizes = []
    for path in (small, big):
        x = PointerArray(path)
        raw = pickle.dumps(x)
        sizes.append(len(raw))
        y = pickle.loads(raw)
        assert isinstance(y, PointerArray)
        np.testing.assert_array_equal(y["s3"], x["s3"])
        # a row range of the array pickles by reference too, and comes back as that range
        part = x[5 : len(x) - 2]
        raw_part = pickle.dumps(part)
        assert len(raw_part) < 1000
        np.testing.assert_array_equal(pickle.loads(raw_part), part)
        m = MmapArray(path)
        assert len(pickle.dumps(m)) < 1000
    assert sizes[0] == sizes[1] or abs(sizes[0] - sizes[1]) < 16  # bytes do not grow with data
    assert max(sizes) < 1000
    w = PointerArrayWriter(tmp_path / "w", dtype="int8")
    assert len(pickle.dumps(w)) < 2000
    w.close()
    # a strided view is not a row range: it pickles by value, correctly
    x = PointerArray(small)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(x[::2, 1])), x[::2, 1])


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.ones((2, 3), np.float32), "array #4500 has shape \\(2, 3\\)"),
        (np.ones((2, 2), np.float64) + 0.5, "cannot store float64 data in this int32"),
        (np.int32(1), "array #4500 is a scalar"),
    ],
)
def test_many_small_arrays_checked_too(tmp_path: Path, bad: np.ndarray, match: str) -> None:
    """From thousands of arrays the checks ride on the packing step: same errors, no commit."""
    segs = {f"s{i}": np.full((1 + i % 3, 2), i, np.int32) for i in range(9000)}
    segs["s4500"] = bad
    with PointerArrayWriter(tmp_path / "s", shape=(0, 2), dtype="int32") as w:
        with pytest.raises(SchemaError, match=match):
            w.write(segs)
        del segs["s4500"]
        w.write(segs)
    x = PointerArray(tmp_path / "s")
    assert len(x.indices) == 8999
    np.testing.assert_array_equal(x["s8999"], np.full((3, 2), 8999))


def test_first_commit_holds_the_variable(tmp_path: Path) -> None:
    """With dtype and row shape known, creating the store and its variable is one commit: a
    reader (or a writer killed right after creating it) never sees a store without it."""
    w = PointerArrayWriter(tmp_path / "s", shape=(0, 3), dtype="float32")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["generation"] == 1 and list(manifest["variables"]) == ["data"]
    x = PointerArray(tmp_path / "s")
    assert x.shape == (0, 3) and x.dtype == np.float32 and len(x.indices) == 0
    w.close()


def _copy_writes_twice(blob: bytes, out: mp.Queue) -> None:  # type: ignore[type-arg]
    w = pickle.loads(blob)
    data = os.path.realpath(os.path.join(w.writer.path, "data.npy"))
    w.write({"from-child": np.ones((10, 4), "f4")})
    after_first = data in open_paths()
    w.write({"again": np.full((5, 4), 2, "f4")})  # reopens the file
    out.put((after_first, data in open_paths()))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_worker_copy_does_not_keep_the_data_file_open(tmp_path: Path) -> None:
    """Pool children and dask tasks get a writer per message or task, and may live long:
    between writes a worker copy holds no descriptor, so it pins no store (nor the page
    cache of one deleted later; holding it made the next write on this VM 10x slower)."""
    w = PointerArrayWriter(str(tmp_path / "s"), shape=(0, 4), dtype="float32")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_copy_writes_twice, args=(pickle.dumps(w), q))
    p.start()
    held = q.get(timeout=60)
    p.join(60)
    w.close()
    assert held == (False, False)
    x = PointerArray(str(tmp_path / "s"))
    assert set(x.indices) == {"from-child", "again"} and float(x["again"].sum()) == 40.0


def _threads_share_one_copy(w: Any, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import threading

    errors: list[str] = []

    def job(t: int) -> None:
        for i in range(50):
            k = t * 50 + i
            try:
                w.write_rows([np.full((64, 16), k, np.int64)], start_position=k * 64)
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=job, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(errors)


def test_threads_of_a_worker_share_its_writer_copy(tmp_path: Path) -> None:
    """A dask worker with several threads runs tasks through one attached writer: one
    thread's write must never close or reuse the descriptor another is writing through."""
    from bigarray import StoreWriter
    from bigarray.core.verify import verify_store

    w = StoreWriter(str(tmp_path / "s"), dtype="int64", shape=(0, 16), named=False, fsync=False)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_threads_share_one_copy, args=(w, q))
    p.start()
    errors = q.get(timeout=120)
    p.join(60)
    w.close()
    assert errors == []
    got = np.asarray(MmapArray(str(tmp_path / "s")))[:, 0]
    assert (got == np.repeat(np.arange(200), 64)).all()
    assert verify_store(str(tmp_path / "s")).ok


def _flush_in_worker(w: Any, out: mp.Queue) -> None:  # type: ignore[type-arg]
    calls = []
    real = os.fsync
    os.fsync = lambda fd: (calls.append(fd), real(fd))[1]  # type: ignore[assignment]
    w.write({"c": np.ones((4, 4), "f4")})
    w.flush()  # in a worker: makes its own rows durable, commits nothing
    out.put(len(calls))


def test_flush_in_a_worker_makes_its_rows_durable(tmp_path: Path) -> None:
    w = PointerArrayWriter(str(tmp_path / "s"), shape=(0, 4), dtype="float32")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_flush_in_worker, args=(w, q))
    p.start()
    assert q.get(timeout=60) == 1
    p.join(60)
    w.close()
    assert "c" in PointerArray(str(tmp_path / "s")).indices


# ---------------------------------------------------------------- no write that returned is lost


def test_duplicate_name_is_refused_at_write_and_the_session_survives(tmp_path: Path) -> None:
    """1,000 good segments and one duplicate name: the duplicate write raises before any
    byte is written, and the 1,000 segments still commit."""
    path = tmp_path / "s"
    w = PointerArrayWriter(path, dtype="float32")
    for i in range(1000):
        w.write({f"s{i}": np.full(2, i, np.float32)})
    with pytest.raises(DuplicateSegmentError, match="'s7' was already written"):
        w.write({"s7": np.ones(3, np.float32)})
    w.close()
    x = PointerArray(path)
    assert len(x.indices) == 1000
    np.testing.assert_array_equal(x["s7"], [7, 7])


def test_names_already_committed_are_refused_at_write_when_resuming(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int16") as w:
        w.write({f"s{i}": np.full(2, i, np.int16) for i in range(100)})
    with PointerArrayWriter(path) as w:
        w.write({"new": np.arange(3, dtype=np.int16)})
        with pytest.raises(DuplicateSegmentError, match="'s42' is already committed"):
            w.write({"other": np.ones(1, np.int16), "s42": np.ones(1, np.int16)})
        w.write({"other": np.ones(1, np.int16)})
        many = {f"m{i}": np.ones(1, np.int16) for i in range(50)}  # the sorted-hash path
        many["s99"] = np.ones(1, np.int16)
        with pytest.raises(DuplicateSegmentError, match="'s99' is already committed"):
            w.write(many)
    x = PointerArray(path)
    assert len(x.indices) == 102
    np.testing.assert_array_equal(x["s42"], [42, 42])


def test_a_positioned_write_over_own_uncommitted_rows_is_refused_at_write(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int8") as w:
        w.write({"a": np.ones(4, np.int8)}, start_position=10)
        with pytest.raises(OverlapError, match=r"overlap rows \[10, 14\)"):
            w.write({"b": np.ones(4, np.int8)}, start_position=12)
        w.write({"b": np.full(4, 2, np.int8)}, start_position=14)
    assert dict(PointerArray(path).indices.items()) == {"a": (10, 14), "b": (14, 18)}


def test_a_duplicate_in_one_list_is_refused_before_writing(tmp_path: Path) -> None:
    from bigarray import StoreWriter

    w = StoreWriter(str(tmp_path / "s"), dtype="int8")
    with pytest.raises(DuplicateSegmentError, match="appears twice in one write"):
        w.write_rows([np.ones(1, np.int8)] * 2, ["x", "x"])
    w.write_rows([np.ones(1, np.int8)] * 2, ["x", "y"])
    w.close()
    assert len(PointerArray(tmp_path / "s").indices) == 2


def _child_writes_name(args: tuple[PointerArrayWriter, str]) -> None:
    w, name = args
    w.write({name: np.full(3, 9, np.int32)})


def test_a_failed_commit_keeps_the_writer_open_and_names_the_conflicts(tmp_path: Path) -> None:
    """A conflict the writer cannot see at write() (a pool child used the same name):
    flush() and close() raise naming it, the writer stays open with every pending segment,
    and forget() + close() commits the rest."""
    path = tmp_path / "s"
    w = PointerArrayWriter(path, dtype="int32")
    for i in range(1000):
        w.write({f"s{i}": np.full(2, i, np.int32)})
    w.write({"clash": np.zeros(1, np.int32)})
    with mp.get_context("fork").Pool(1) as pool:
        pool.map(_child_writes_name, [(w, "clash"), (w, "child-ok")])
    with pytest.raises(DuplicateSegmentError, match="stays open") as info:
        w.flush()
    assert info.value.segments == ["clash"]  # type: ignore[attr-defined]
    assert not w.closed
    with pytest.raises(DuplicateSegmentError, match="'clash'"):
        w.close()
    assert not w.closed
    assert w.writer.forget(["clash"]) == 2
    w.close()
    x = PointerArray(path)
    assert len(x.indices) == 1001 and "clash" not in x.indices
    np.testing.assert_array_equal(x["child-ok"], [9, 9, 9])
    np.testing.assert_array_equal(x["s999"], [999, 999])


def test_a_commit_lost_to_another_session_keeps_the_writer_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    a = PointerArrayWriter(path, dtype="int8")
    b = PointerArrayWriter(path, dtype="int8")
    a.write({"mine": np.ones(2, np.int8), "same": np.ones(2, np.int8)})
    b.write({"same": np.full(2, 2, np.int8)})
    b.close()
    with pytest.raises(DuplicateSegmentError, match="'same'") as info:
        a.close()
    assert info.value.segments == ["same"]  # type: ignore[attr-defined]
    a.writer.forget(info.value.segments)  # type: ignore[attr-defined]
    a.close()
    x = PointerArray(path)
    assert sorted(x.indices) == ["mine", "same"]
    np.testing.assert_array_equal(x["same"], [2, 2])


def test_unnamed_committed_rows_are_never_overwritten(tmp_path: Path) -> None:
    from bigarray.core.verify import verify_store

    path = tmp_path / "m"
    with MmapArrayWriter(path, dtype="int32") as w:
        w.write(np.arange(10, dtype=np.int32))
    with MmapArrayWriter(path) as w:
        with pytest.raises(OverlapError, match="committed rows are never overwritten"):
            w.write(np.full(4, -1, np.int32), start_position=0)
        with pytest.raises(OverlapError):
            w.write(np.full(4, -1, np.int32), start_position=8)
        w.write(np.full(2, 7, np.int32), start_position=10)
    np.testing.assert_array_equal(MmapArray(path), [*range(10), 7, 7])
    assert verify_store(str(path)).ok


def test_declared_rows_nobody_wrote_stay_writable(tmp_path: Path) -> None:
    """shape[0] commits rows that read as zeros; a later session may still fill them
    (not the rows a commit wrote)."""
    path = tmp_path / "m"
    with MmapArrayWriter(path, shape=(30, 2), dtype="int16") as w:
        w.write(np.ones((10, 2), np.int16), start_position=0)
    assert MmapArray(path).shape == (30, 2)
    with MmapArrayWriter(path) as w:
        w.write(np.full((10, 2), 2, np.int16), start_position=20)
        with pytest.raises(OverlapError):
            w.write(np.full((10, 2), 3, np.int16), start_position=5)
    with MmapArrayWriter(path) as w:
        w.write(np.full((10, 2), 3, np.int16), start_position=10)
        with pytest.raises(OverlapError):
            w.write(np.full((1, 2), 3, np.int16), start_position=29)
    got = np.asarray(MmapArray(path))[:, 0]
    np.testing.assert_array_equal(got, np.repeat([1, 3, 2], 10))


@pytest.mark.parametrize("many", [False, True])
def test_integers_that_do_not_fit_are_refused(tmp_path: Path, many: bool) -> None:
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int32") as w:
        bad = np.array([2**40, -(2**33), 3], np.int64)
        segs = {f"s{i}": np.array([i], np.int64) for i in range(5000 if many else 1)}
        segs["bad"] = bad
        with pytest.raises(SchemaError, match="does not fit this int32 store"):
            w.write(segs)
        del segs["bad"]
        w.write(segs)  # int64 values that fit are fine
        with pytest.raises(SchemaError, match="does not fit"):
            w.write({"u": np.array([2**63], np.uint64)})
    x = PointerArray(path)
    assert "bad" not in x.indices
    np.testing.assert_array_equal(x["s0"], [0])


def test_dtype_without_shape_and_no_write_opens_as_empty(tmp_path: Path) -> None:
    from bigarray.dask_backend import from_bigarray

    for cls, reader in ((PointerArrayWriter, PointerArray), (MmapArrayWriter, MmapArray)):
        path = tmp_path / cls.__name__
        cls(path, dtype="float32").close()
        x = reader(path)
        assert x.shape == (0,) and x.dtype == np.float32
        assert from_bigarray(str(path)).shape == (0,)


def test_an_empty_mkstemp_file_is_a_free_location(tmp_path: Path) -> None:
    import tempfile

    fd, path = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    with MmapArrayWriter(path, (None, 25, 8), "float64") as w:
        w.write(np.ones((3, 25, 8)))
        w.write(np.ones((2, 25, 8)))
    assert MmapArray(path).shape == (5, 25, 8)
    other = tmp_path / "not-empty"
    other.write_bytes(b"user data")
    with pytest.raises(StoreExistsError):
        MmapArrayWriter(other, (None, 25, 8), "float64")
    assert other.read_bytes() == b"user data"


def _write_pickled_copy(blob: bytes, out: mp.Queue) -> None:  # type: ignore[type-arg]
    w = pickle.loads(blob)
    try:
        w.write({"late": np.ones(2, np.int8)})
        out.put("returned")
    except ClosedError as exc:
        out.put(f"ClosedError: {exc}")


def test_a_copy_writing_after_its_owner_closed_raises(tmp_path: Path) -> None:
    """Rows written through a pickled copy after the owner closed the session would never
    be committed: the write raises instead of returning."""
    w = PointerArrayWriter(tmp_path / "s", dtype="int8")
    blob = pickle.dumps(w)
    w.close()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_write_pickled_copy, args=(blob, q))
    p.start()
    got = q.get(timeout=60)
    p.join(60)
    assert got.startswith("ClosedError") and "has ended" in got


def test_remove_exist_refuses_an_open_writer_but_not_a_dropped_one(tmp_path: Path) -> None:
    import gc
    import warnings

    path = tmp_path / "s"
    w = PointerArrayWriter(path, dtype="int8")
    w.write({"a": np.ones(2, np.int8)})
    with pytest.raises(StoreExistsError, match="live writer session"):
        PointerArrayWriter(path, dtype="int8", remove_exist=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        del w
        gc.collect()
    with PointerArrayWriter(path, dtype="int16", remove_exist=True) as w2:
        w2.write({"b": np.ones(2, np.int16)})
    x = PointerArray(path)
    assert list(x.indices) == ["b"] and x.dtype == np.int16


def test_remove_exist_refuses_a_non_empty_file_that_is_not_a_store(tmp_path: Path) -> None:
    """remove_exist deletes stores only: a user's file is refused like a foreign directory,
    while an empty file (tempfile.mkstemp) is still a free location."""
    import tempfile

    other = tmp_path / "user-file"
    other.write_bytes(b"user data")
    for cls in (PointerArrayWriter, MmapArrayWriter):
        with pytest.raises(NotAStoreError, match="non-empty file that is not a bigarray store"):
            cls(other, dtype="int8", remove_exist=True)
        assert other.read_bytes() == b"user data"
    fd, path = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    with PointerArrayWriter(path, dtype="int8", remove_exist=True) as w:
        w.write({"a": np.ones(2, np.int8)})
    assert list(PointerArray(path).indices) == ["a"]


def test_unnamed_committed_rows_of_a_named_store_are_never_overwritten(tmp_path: Path) -> None:
    """Rows an MmapArrayWriter committed into a store with named segments are committed
    rows like any other: a positioned write over them (named or not) raises at write(),
    while the rows a declared shape added and nobody wrote stay writable."""
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int32") as w:
        w.write({"a": np.full(3, 1, "int32")})
    with MmapArrayWriter(path, (None,), "int32") as w:
        w.write(np.full(4, 2, "int32"))
    with PointerArrayWriter(path) as w, pytest.raises(OverlapError, match="never overwritten"):
        w.write({"b": np.full(2, 9, "int32")}, start_position=4)
    with MmapArrayWriter(path) as w, pytest.raises(OverlapError, match="never overwritten"):
        w.write(np.full(2, 9, "int32"), start_position=5)
    assert MmapArray(path)[:].tolist() == [1, 1, 1, 2, 2, 2, 2]
    # a declared shape's unwritten rows in a named store stay free for positioned writes
    path = tmp_path / "declared"
    with PointerArrayWriter(path, shape=(10,), dtype="int32") as w:
        w.write({"a": np.full(2, 1, "int32")}, start_position=0)
    with MmapArrayWriter(path) as w:  # an unnamed write into the padding, committed
        w.write(np.full(2, 3, "int32"), start_position=2)
    with PointerArrayWriter(path) as w:
        w.write({"b": np.full(2, 5, "int32")}, start_position=6)
        with pytest.raises(OverlapError, match="never overwritten"):
            w.write({"c": np.full(2, 7, "int32")}, start_position=3)
    x = PointerArray(path)
    assert x[:].tolist() == [1, 1, 3, 3, 0, 0, 5, 5, 0, 0]
    assert sorted(x.indices) == ["a", "b"]


def test_a_directory_with_only_a_dead_sessions_lock_files_is_a_free_location(
    tmp_path: Path,
) -> None:
    """What a writer that never wrote leaves when its store vanished under it (its lock,
    its session's owner lock and gate) is debris, not a user's directory."""
    for rm in (False, True):
        path = tmp_path / f"s{rm}"
        (path / "journal" / "0123456789abcdef").mkdir(parents=True)
        for name in ("owner.lock", "gate"):
            (path / "journal" / "0123456789abcdef" / name).touch()
        (path / ".lock").touch()
        with PointerArrayWriter(path, dtype="int32", remove_exist=rm) as w:
            w.write({"a": np.arange(3)})
        assert list(PointerArray(path).indices) == ["a"]
    # a journal holding a record of a write is not debris
    path = tmp_path / "records"
    (path / "journal" / "0123456789abcdef").mkdir(parents=True)
    (path / "journal" / "0123456789abcdef" / "1-000000001-abcd.rec").write_bytes(b"x")
    with pytest.raises(StoreExistsError):
        PointerArrayWriter(path, dtype="int32")


def test_remove_exist_writes_beside_the_old_store_and_switches_at_close(
    tmp_path: Path,
) -> None:
    """Replace, never delete first: until ``close`` readers see the old store, whole
    (``flush`` commits in the new one, beside it); a writer session opened on the old store
    meanwhile refuses the switch, which ``close()`` tries again once it is gone."""
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int8") as w:
        w.write({"old": np.ones(2, np.int8)})
    w = PointerArrayWriter(path, dtype="int32", remove_exist=True)
    assert w.path == str(path)
    w.write({"a": np.ones((2, 3), np.int32)})
    w.flush()
    for reader in (PointerArray, MmapArray):
        x = reader(path)
        assert x.shape == (2,) and x.dtype == np.int8
    assert list(PointerArray(path).indices) == ["old"]
    other = PointerArrayWriter(path)  # a session of the old store: the switch waits for it
    with pytest.raises(StoreExistsError, match=r"call close\(\) again"):
        w.close()
    assert list(PointerArray(path).indices) == ["old"]
    other.close()
    w.close()
    x = PointerArray(path)
    assert x.shape == (2, 3) and x.dtype == np.int32
    assert dict(x.indices.items()) == {"a": (0, 2)}
    assert verify_store(str(path)).ok
    assert sorted(os.listdir(tmp_path)) == ["s"]  # nothing left beside it


def test_remove_exist_discarded_or_killed_leaves_the_old_store(tmp_path: Path) -> None:
    """A replacement that is discarded, or whose program is killed after writing and
    flushing, leaves the old store as it was; the next writer removes the leftovers."""
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int8") as w:
        w.write({"old": np.ones(2, np.int8)})
    w = PointerArrayWriter(path, dtype="int8", remove_exist=True)
    w.write({"new": np.zeros(3, np.int8)})
    w.writer.discard()
    assert list(PointerArray(path).indices) == ["old"]
    assert sorted(os.listdir(tmp_path)) == ["s"]

    ctx = mp.get_context("fork")
    p = ctx.Process(target=_replace_then_die, args=(str(path),))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    assert list(PointerArray(path).indices) == ["old"]
    assert verify_store(str(path)).ok
    assert len(os.listdir(tmp_path)) == 2  # the killed replacement, beside it
    with PointerArrayWriter(path, dtype="int8", remove_exist=True) as w:
        w.write({"again": np.zeros(1, np.int8)})
    assert list(PointerArray(path).indices) == ["again"]
    assert sorted(os.listdir(tmp_path)) == ["s"]


def _replace_then_die(path: str) -> None:
    w = PointerArrayWriter(path, dtype="int8", remove_exist=True)
    w.write({"new": np.zeros(3, np.int8)})
    w.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def test_rows_written_into_a_declared_shape_without_checksums_are_committed(
    tmp_path: Path,
) -> None:
    """Without checksums, a positioned write into a declared shape's unwritten rows adds no
    row and no segment: its commit still records those rows as written, so a later
    positioned write over them is refused."""
    from bigarray import StoreWriter

    path = str(tmp_path / "s")
    StoreWriter(path, shape=(10,), dtype="int32", named=False, checksums=False).close()
    with StoreWriter(path, named=False, checksums=False) as w:
        w.write_rows([np.full(2, 5, np.int32)], start_position=2)
    with StoreWriter(path, named=False, checksums=False) as w:
        with pytest.raises(OverlapError, match="never overwritten"):
            w.write_rows([np.full(2, 7, np.int32)], start_position=3)
        w.write_rows([np.full(2, 7, np.int32)], start_position=4)
    assert MmapArray(path)[:].tolist() == [0, 0, 5, 5, 7, 7, 0, 0, 0, 0]


def test_a_writer_killed_before_its_first_manifest_leaves_a_free_location(tmp_path: Path) -> None:
    """A writer given dtype and shape writes the data file, then the first manifest: killed
    in between, it leaves the lock, the index directory and the data file. That is an
    interrupted creation, not a user's directory; a user's directory of .npy files is not."""
    path = tmp_path / "s"
    (path / "index").mkdir(parents=True)
    (path / ".lock").touch()
    np.save(path / "data.npy", np.zeros((0, 3), np.int32))
    with PointerArrayWriter(path, shape=(0, 3), dtype="int32") as w:
        w.write({"a": np.ones((2, 3), np.int32)})
    assert list(PointerArray(path).indices) == ["a"]
    user = tmp_path / "user"
    user.mkdir()
    np.save(user / "data.npy", np.ones(3))
    with pytest.raises(StoreExistsError):
        PointerArrayWriter(user, dtype="int32")
    assert np.load(user / "data.npy").tolist() == [1.0, 1.0, 1.0]


def test_a_commit_into_a_store_deleted_by_hand_is_a_bigarray_error(tmp_path: Path) -> None:
    import shutil

    from bigarray.errors import BigArrayError

    path = tmp_path / "s"
    w = PointerArrayWriter(path, shape=(None,), dtype="int32")
    w.write({"a": np.arange(2, dtype=np.int32)})
    w.flush()
    w.write({"b": np.arange(2, dtype=np.int32)})
    shutil.rmtree(path)  # not bigarray.remove, which refuses an open writer's store
    with pytest.raises(BigArrayError, match="was deleted"):
        w.close()
    assert not path.exists()
    w.writer.discard()


def _write_named(w: Any, items: list[tuple[str, float]]) -> None:
    w.write({name: np.full((5, 2), value) for name, value in items})


def test_a_rerun_in_another_order_is_recognised_and_counted_once(tmp_path: Path) -> None:
    """A task rerun whose dict comes out in another order (built from a set, in another
    worker) writes the same segments: they are committed once and the shape counts them
    once."""
    import multiprocessing

    from bigarray import PointerArray, PointerArrayWriter

    path = tmp_path / "r.bigarray"
    w = PointerArrayWriter(path, dtype="f8")
    ctx = multiprocessing.get_context("fork")
    for items in ([("a", 1.0), ("b", 2.0)], [("b", 2.0), ("a", 1.0)]):
        p = ctx.Process(target=_write_named, args=(w, items))
        p.start()
        p.join(60)
        assert p.exitcode == 0
    w.close()
    x = PointerArray(path)
    assert sorted(x.indices) == ["a", "b"]
    assert x.shape == (10, 2), "the rerun's rows are counted in the shape"
    assert float(np.asarray(x).sum()) == 30.0


def test_two_sessions_writing_one_name_at_the_same_rows_is_a_conflict(tmp_path: Path) -> None:
    """Two writer sessions write segment 't' at the same explicit rows: the second one to
    commit is told (its bytes may have replaced the first one's), never silently merged."""
    from bigarray import PointerArrayWriter
    from bigarray.errors import DuplicateSegmentError

    path = tmp_path / "t.bigarray"
    with PointerArrayWriter(path, dtype="f8") as w0:
        w0.write({"base": np.zeros((4, 2))})
    w4 = PointerArrayWriter(path)
    w5 = PointerArrayWriter(path)
    w4.write({"t": np.full((4, 2), 4.0)}, start_position=100)
    w5.write({"t": np.full((4, 2), 9.0)}, start_position=100)
    w4.close()
    with pytest.raises(DuplicateSegmentError, match="committed by another writer session") as e:
        w5.close()
    assert e.value.segments == ["t"]  # type: ignore[attr-defined]
    w5.writer.discard()


def test_remove_exist_given_up_when_the_with_block_raises(tmp_path: Path) -> None:
    """An exception leaving the ``with`` block of a replacing writer gives the replacement
    up: a half-written store never takes the old one's place (a writer that appends still
    commits what was fully written)."""
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int8") as w:
        w.write({"old": np.ones(2, np.int8)})
    for make in (
        lambda: PointerArrayWriter(path, dtype="int8", remove_exist=True),
        lambda: MmapArrayWriter(path, dtype="int8", remove_exist=True),
    ):
        with pytest.raises(KeyboardInterrupt), make() as w:
            w.write(
                {"new": np.zeros(3, np.int8)}
                if isinstance(w, PointerArrayWriter)
                else np.zeros(3, np.int8)
            )
            raise KeyboardInterrupt
        assert list(PointerArray(path).indices) == ["old"]
        assert sorted(os.listdir(tmp_path)) == ["s"]
    with pytest.raises(RuntimeError), PointerArrayWriter(path) as w:  # appending: committed
        w.write({"more": np.ones(1, np.int8)})
        raise RuntimeError
    assert list(PointerArray(path).indices) == ["old", "more"]


def test_discard_after_a_refused_switch_gives_the_replacement_up(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int8") as w:
        w.write({"old": np.ones(2, np.int8)})
    w = PointerArrayWriter(path, dtype="int8", remove_exist=True)
    w.write({"new": np.zeros(3, np.int8)})
    other = PointerArrayWriter(path)
    with pytest.raises(StoreExistsError):
        w.close()
    w.writer.discard()
    assert sorted(os.listdir(tmp_path)) == ["s"]
    other.write({"other": np.ones(1, np.int8)})
    other.close()
    w.close()  # nothing left to switch in
    assert list(PointerArray(path).indices) == ["old", "other"]
