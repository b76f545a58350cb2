"""The dask face on real schedulers: threads, processes (spawn) and a distributed cluster."""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
from dask.delayed import Delayed
from open_files import open_paths

import bigarray
from bigarray import MmapArray, MmapArrayWriter, PointerArray, PointerArrayWriter
from bigarray.dask_backend import (
    BigArrayTarget,
    from_bigarray,
    map_segments,
    to_bigarray,
)
from bigarray.errors import (
    BigArrayWarning,
    OverlapError,
    SchemaError,
    StoreExistsError,
)

SCHEDULERS = ["threads", "processes", "distributed"]


@pytest.fixture(scope="module")
def w1(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, np.ndarray]:
    """A small W1-shaped store: 300 segments of 50..150 rows, 8 float64 features."""
    path = tmp_path_factory.mktemp("w1") / "w1.bigarray"
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 150, 300)
    data = rng.random((int(lengths.sum()), 8))
    off = np.concatenate([[0], np.cumsum(lengths)])
    with PointerArrayWriter(str(path), dtype="f8") as w:
        w.write({f"seg{i:04d}": data[off[i] : off[i + 1]] for i in range(len(lengths))})
    return str(path), data, off


@pytest.fixture(scope="module")
def w1_1m(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """1,000,000 tiny segments (1..3 rows, 4 float32 features): the index dominates."""
    path = tmp_path_factory.mktemp("w1m") / "w1m.bigarray"
    lengths = np.random.default_rng(0).integers(1, 4, 1_000_000)
    rows = int(lengths.sum())
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) % 7
    off = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    with PointerArrayWriter(str(path), dtype="f4") as w:
        w.write({f"u{i}": data[off[i] : off[i + 1]] for i in range(len(lengths))})
    return str(path), data


@pytest.fixture(params=SCHEDULERS)
def scheduler(request: pytest.FixtureRequest) -> Iterator[str]:
    """Make one of the three schedulers the default while the test runs."""
    name = request.param
    if name == "distributed":
        request.getfixturevalue("client")  # the client registers itself as the default
        yield name
    elif name == "processes":
        with dask.config.set(
            {"scheduler": "processes", "multiprocessing.context": "spawn", "num_workers": 2}
        ):
            yield name
    else:
        with dask.config.set(scheduler="threads"):
            yield name


def _cuts(chunks: tuple[int, ...]) -> set[int]:
    return set(np.cumsum(chunks).tolist())


# ----------------------------------------------------------------------------- reading
def test_reductions_equal_numpy(w1: Any, scheduler: str) -> None:
    path, data, _ = w1
    x = from_bigarray(path, chunks=3000)
    assert x.numblocks[0] > 5
    total, mean, std = dask.compute(x.sum(), x.mean(axis=0), x.std(axis=0))
    np.testing.assert_allclose(total, data.sum(), rtol=1e-12)
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, data.std(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(x[1234:2345, 3].compute(), data[1234:2345, 3])


def test_chunk_boundaries_fall_on_segment_boundaries(w1: Any) -> None:
    path, data, off = w1
    seg_cuts = set(off.tolist())
    for chunks in [1000, 5000, "200 KiB", "auto", "segments"]:
        x = from_bigarray(path, chunks=chunks)
        assert _cuts(x.chunks[0]) <= seg_cuts, chunks
        assert x.chunks[1] == (8,)
    assert from_bigarray(path, chunks="segments").chunks[0] == tuple(np.diff(off).tolist())
    with dask.config.set({"array.chunk-size": "100 KiB"}):
        x = from_bigarray(path)
        assert _cuts(x.chunks[0]) <= seg_cuts
        assert max(x.chunks[0]) <= 2 * (100 * 1024 // 64)
        assert len(x.chunks[0]) > 10
    explicit = (*np.diff(off[::50]).tolist(), int(off[-1] - off[::50][-1]))
    assert from_bigarray(path, chunks=explicit).chunks[0] == explicit
    with pytest.raises(SchemaError, match="chunk boundary at row 7 cuts segment #0"):
        from_bigarray(path, chunks=(7, len(data) - 7))


def test_oversize_segment_is_the_only_one_split(tmp_path: Path) -> None:
    path = str(tmp_path / "big.bigarray")
    data = np.arange(2000, dtype=np.int64).reshape(1000, 2)
    with PointerArrayWriter(path) as w:
        w.write({"a": data[:30], "huge": data[30:930], "b": data[930:]})
    x = from_bigarray(path, chunks=100)
    cuts = np.cumsum(x.chunks[0])
    assert set(cuts[(cuts <= 30) | (cuts >= 930)].tolist()) <= {30, 930, 1000}
    assert max(x.chunks[0]) <= 100 and 30 in cuts and 930 in cuts
    np.testing.assert_array_equal(x.compute(scheduler="threads"), data)


def test_unnamed_mmap_array_and_pointer_array_entry_points(tmp_path: Path) -> None:
    path = str(tmp_path / "plain.bigarray")
    data = np.arange(3000, dtype=np.float32)
    with MmapArrayWriter(path) as w:
        w.write(data)
    x = from_bigarray(MmapArray(path), chunks=1000)
    assert x.chunks == ((1000, 1000, 1000),)
    assert float(x.sum().compute(scheduler="threads")) == float(data.sum())
    y = PointerArray(path).to_dask(chunks=700)
    assert sum(y.chunks[0]) == 3000 and max(y.chunks[0]) <= 700
    np.testing.assert_array_equal(y.compute(scheduler="threads"), data)
    with pytest.raises(SchemaError, match="is a slice"):
        from_bigarray(PointerArray(path)[10:20])
    with pytest.raises(SchemaError, match="is not a store"):
        from_bigarray(np.zeros(3))


def test_token_is_stable_and_content_aware(tmp_path: Path) -> None:
    path = str(tmp_path / "tok.bigarray")
    with PointerArrayWriter(path) as w:
        w.write({"a": np.zeros((4, 2))})
    n1, n2 = from_bigarray(path).name, from_bigarray(path).name
    assert n1 == n2
    assert from_bigarray(path, chunks=2).name != n1
    with PointerArrayWriter(path) as w:
        w.write({"b": np.ones((4, 2))})
    x = from_bigarray(path)
    assert x.name != n1 and x.shape == (8, 2)
    assert float(x.sum().compute(scheduler="threads")) == 8.0


def test_w1_1m_graph_is_small(w1_1m: Any) -> None:
    path, data = w1_1m
    x = from_bigarray(path, chunks="1 MiB")
    assert len(pickle.dumps(x)) < 1_000_000
    graph = dict(x.__dask_graph__())
    assert len(cloudpickle.dumps(graph)) < 1_000_000
    assert len(pickle.dumps(from_bigarray(path))) < 100_000
    h = bigarray.open(path)
    bounds = h.segment_bounds()
    assert bounds is not None and len(bounds) == 1_000_000
    seg_cuts = np.concatenate([bounds[:, 0], [len(data)]])
    assert np.isin(np.cumsum(x.chunks[0]), seg_cuts).all()
    np.testing.assert_allclose(
        float(x.sum(dtype="f8").compute(scheduler="threads")), float(data.sum(dtype="f8"))
    )


def test_w1_1m_segments_graph_stays_lazy(w1_1m: Any) -> None:
    path, _ = w1_1m
    x = from_bigarray(path, chunks="segments")
    assert x.numblocks[0] == 1_000_000
    # the layer holds the chunks tuple (one int per chunk) and one handle, not 1M tasks
    assert len(pickle.dumps(x)) < 10_000_000


def test_remote_store_on_distributed(w1: Any, client: Any, s3_options: dict[str, Any]) -> None:
    s3fs = pytest.importorskip("s3fs")
    path, data, _ = w1
    fs = s3fs.S3FileSystem(**s3_options)
    # conftest's s3_bucket sends LocationConstraint=us-east-1, which moto refuses
    bucket = f"test-{os.urandom(6).hex()}"
    fs.call_s3("create_bucket", Bucket=bucket)
    fs.invalidate_cache()
    url = f"s3://{bucket}/w1.bigarray"
    fs.put(path, url, recursive=True)
    x = from_bigarray(url, chunks=5000, storage_options=s3_options)
    assert len(pickle.dumps(x)) < 50_000
    np.testing.assert_allclose(x.sum().compute(), data.sum(), rtol=1e-12)


# ----------------------------------------------------------------------------- from_array
def test_from_array_on_handle_copies_nothing(w1: Any, scheduler: str) -> None:
    path, data, off = w1
    h = bigarray.open(path)
    with dask.config.set({"array.chunk-size": "256 KiB"}):
        x = da.from_array(h)
    assert _cuts(x.chunks[0]) <= set(off.tolist())
    assert len(x.chunks[0]) > 3
    assert len(pickle.dumps(x)) < 20_000
    np.testing.assert_allclose(x.mean(axis=0).compute(), data.mean(axis=0), rtol=1e-12)


def test_from_array_on_pointer_array_warns(w1: Any) -> None:
    path, data, _ = w1
    with pytest.warns(BigArrayWarning, match=r"copies the whole array .*from_array\(x\.lazy\)"):
        x = da.from_array(PointerArray(path))
    np.testing.assert_allclose(x.sum().compute(scheduler="threads"), data.sum())


def test_from_array_handle_memory_stays_flat(tmp_path: Path, client: Any) -> None:
    psutil = pytest.importorskip("psutil")
    path = str(tmp_path / "big400.bigarray")
    rows = 400 * 1024 * 1024 // (128 * 4)
    block = np.ones((rows // 8, 128), np.float32)
    with MmapArrayWriter(path, shape=(rows, 128), dtype="f4") as w:
        for i in range(8):
            w.write(block, start_position=i * (rows // 8))
    del block
    gc.collect()
    proc = psutil.Process(os.getpid())
    before = proc.memory_info().rss
    x = da.from_array(bigarray.open(path))
    graph_bytes = len(cloudpickle.dumps(dict(x.__dask_graph__())))
    total = float(x.sum(dtype="f8").compute())
    grown = proc.memory_info().rss - before
    assert total == float(rows * 128)
    assert graph_bytes < 50_000
    assert grown < 60 * 1024 * 1024, f"client grew by {grown / 2**20:.0f} MiB for 400 MiB data"


# ----------------------------------------------------------------------------- map_segments
def test_map_segments_bag_and_stack(w1: Any, scheduler: str) -> None:
    path, data, off = w1
    bag = map_segments(len, path, chunks=4000)
    assert bag.npartitions > 3
    got = dict(bag.compute())
    assert len(got) == 300
    assert got["seg0007"] == off[8] - off[7]
    means = map_segments(
        lambda s, k: s.mean(axis=0) * k, path, 2.0, chunks=4000, dtype="f8", shape=(8,)
    )
    assert means.shape == (300, 8)
    res = means.compute()
    np.testing.assert_allclose(res[17], data[off[17] : off[18]].mean(axis=0) * 2.0)
    np.testing.assert_allclose(res[-1], data[off[-2] : off[-1]].mean(axis=0) * 2.0)


def test_map_segments_errors(tmp_path: Path, w1: Any) -> None:
    path = str(tmp_path / "plain.bigarray")
    with MmapArrayWriter(path) as w:
        w.write(np.zeros(10))
    with pytest.raises(SchemaError, match="has no named segments"):
        map_segments(len, path)
    bad = map_segments(lambda s: s[:2], w1[0], dtype="f8", shape=(3,))
    with pytest.raises(SchemaError, match="returned shape"):
        bad.compute(scheduler="threads")


# ----------------------------------------------------------------------------- writing
def test_to_bigarray_round_trip(w1: Any, scheduler: str, tmp_path: Path) -> None:
    _, data, off = w1
    names = [f"seg{i:04d}" for i in range(len(off) - 1)]
    x = da.from_array(data, chunks=(1777, 4))  # blocks cut segments and split rows
    out = str(tmp_path / "out.bigarray")
    assert to_bigarray(x, out, segments=list(zip(names, np.diff(off).tolist()))) is None
    p = PointerArray(out)
    np.testing.assert_array_equal(np.asarray(p), data)
    assert len(p.indices) == 300
    np.testing.assert_array_equal(p["seg0123"], data[off[123] : off[124]])
    assert not os.listdir(os.path.join(out, "journal"))


def test_to_bigarray_mapping_unnamed_and_delayed(tmp_path: Path) -> None:
    data = np.arange(600, dtype=np.int32).reshape(200, 3)
    x = da.from_array(data, chunks=(33, 3))
    a = str(tmp_path / "a")
    to_bigarray(x, a, segments={"late": (150, 200), "early": (0, 10)})
    p = PointerArray(a)
    assert list(p.indices.items()) == [("early", (0, 10)), ("late", (150, 200))]
    np.testing.assert_array_equal(np.asarray(p), data)
    b = str(tmp_path / "b")
    d = to_bigarray(x, b, compute=False)
    assert isinstance(d, Delayed)
    assert not os.path.exists(b)  # nothing committed before compute
    with dask.config.set(scheduler="processes", **{"multiprocessing.context": "spawn"}):
        d.compute()
    np.testing.assert_array_equal(np.asarray(MmapArray(b)), data)


def test_retried_tasks_are_idempotent(tmp_path: Path, client: Any) -> None:
    data = np.random.default_rng(3).random((500, 4))
    x = da.from_array(data, chunks=(64, 4))
    out = str(tmp_path / "retry")
    t = BigArrayTarget(out, x.shape, x.dtype, segments=[(f"s{i}", 50) for i in range(10)])
    # every write task runs twice before the commit, as retried tasks do: the same rows are
    # rewritten and the same journal records dropped again
    da.store(x, t, lock=False)
    da.store(x, t, lock=False)
    journal = os.path.join(t.path, "journal")  # written beside out until the commit
    records = sum(len(fs) for _, _, fs in os.walk(journal))
    assert records >= 2 * x.numblocks[0]
    t.close()
    p = PointerArray(out)
    np.testing.assert_array_equal(np.asarray(p), data)
    assert len(p.indices) == 10 and p.indices["s9"] == (450, 500)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_workers_hold_no_descriptor_of_a_written_store(tmp_path: Path, client: Any) -> None:
    """Workers keep attached writers between tasks, but not their data file open: a worker
    holding one descriptor per store it ever wrote would pin each file's page cache, even
    after the store is deleted (writes on this VM then ran 10x slower)."""
    data = np.random.default_rng(5).random((4000, 8))
    out = str(tmp_path / "held")
    to_bigarray(da.from_array(data, chunks=(500, 8)), out, segments=[("a", 4000)])
    target = os.path.realpath(os.path.join(out, "data.npy"))
    held = client.run(lambda: target in open_paths())
    assert len(held) == 2 and not any(held.values()), held
    np.testing.assert_array_equal(PointerArray(out)["a"], data)


def test_delayed_write_commits_on_a_worker(tmp_path: Path, client: Any) -> None:
    data = np.arange(800, dtype=np.float32).reshape(200, 4)
    out = str(tmp_path / "fut")
    d = to_bigarray(
        da.from_array(data, chunks=(50, 4)), out, segments=[("a", 120), ("b", 80)], compute=False
    )
    client.compute(d).result()  # the final task (the commit) runs on a worker process
    p = PointerArray(out)
    np.testing.assert_array_equal(p["b"], data[120:])


def test_da_store_into_target_and_writer(tmp_path: Path, scheduler: str) -> None:
    data = np.arange(4000, dtype=np.float64).reshape(1000, 4)
    x = da.from_array(data, chunks=(128, 4))
    t_path = str(tmp_path / "t")
    with BigArrayTarget(t_path, x.shape, x.dtype, segments=[("a", 400), ("b", 600)]) as t:
        da.store(x, t, lock=False)
    p = PointerArray(t_path)
    np.testing.assert_array_equal(p["b"], data[400:])
    w_path = str(tmp_path / "w")
    w = MmapArrayWriter(w_path, shape=x.shape, dtype=x.dtype)
    da.store(x, w, lock=False)
    w.close()
    np.testing.assert_array_equal(np.asarray(MmapArray(w_path)), data)


def test_write_errors(tmp_path: Path) -> None:
    x = da.zeros((100, 2), chunks=(30, 2))
    path = str(tmp_path / "e")
    with pytest.raises(SchemaError, match="sum to 90 rows but the array has 100"):
        to_bigarray(x, path, segments=[("a", 50), ("b", 40)])
    with pytest.raises(SchemaError, match=r"rows \[90, 110\) do not fit"):
        to_bigarray(x, path, segments={"a": (90, 110)})
    with pytest.raises(SchemaError, match="segments must be a mapping"):
        to_bigarray(x, path, segments="abc")
    with pytest.raises(SchemaError, match="numpy memmap pickled to another process"):
        to_bigarray(x, np.memmap(str(tmp_path / "m"), "f8", "w+", shape=(100, 2)))  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="unknown chunk sizes"):
        to_bigarray(x[x[:, 0] > 0], path)
    to_bigarray(x, path)
    with pytest.raises(StoreExistsError, match="already holds variable 'data'"):
        to_bigarray(x, path)
    to_bigarray(x + 1, path, remove_exist=True)
    assert float(np.asarray(MmapArray(path)).sum()) == 200.0
    with pytest.raises(OverlapError, match="overlap"):
        to_bigarray(x, str(tmp_path / "o"), segments={"a": (0, 60), "b": (50, 100)})
    t = BigArrayTarget(str(tmp_path / "k"), (10, 4), "f8")
    with pytest.raises(SchemaError, match=r"rechunk the dask array so rows are whole"):
        t[0:5, 0:2] = np.zeros((5, 2))
    with pytest.raises(SchemaError, match="whole row ranges"):
        t[0:10:2] = np.zeros((5, 4))
    t.abort()
    assert not os.path.exists(str(tmp_path / "k"))  # an aborted new store leaves nothing


def test_failed_write_commits_nothing(tmp_path: Path) -> None:
    def boom(block: np.ndarray, block_id: Any = None) -> np.ndarray:
        if block_id[0] == 2:
            raise RuntimeError("task failed")
        return block

    x = da.ones((100, 2), chunks=(20, 2)).map_blocks(boom, dtype="f8")
    path = str(tmp_path / "f")
    with pytest.raises(RuntimeError, match="task failed"):
        to_bigarray(x, path, segments=[("a", 100)])
    assert os.listdir(tmp_path) == [], "a failed write into a new path left a store"
    to_bigarray(da.ones((100, 2), chunks=(20, 2)), path, segments=[("a", 100)])  # the retry
    assert PointerArray(path)["a"].shape == (100, 2)


_KILLED_CHILD = """
import sys, dask, dask.array as da
from bigarray.dask_backend import to_bigarray
dask.config.set(scheduler="synchronous")
to_bigarray(da.ones((100, 2), chunks=(20, 2)), sys.argv[1], segments=[("a", 100)])
"""


@pytest.mark.parametrize("step", ["after-data@3", "before-manifest"])
def test_killed_write_into_a_new_path_leaves_no_store_that_blocks_the_retry(
    tmp_path: Path, step: str
) -> None:
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "k.bigarray")
    env = {**os.environ, "BIGARRAY_CRASH_AT": step}
    proc = subprocess.run([sys.executable, "-c", _KILLED_CHILD, path], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(path)
    to_bigarray(da.ones((100, 2), chunks=(20, 2)), path, segments=[("a", 100)])
    assert PointerArray(path)["a"].shape == (100, 2)


@pytest.mark.parametrize(
    "segments",
    [[("a", 10), ("a", 10)], {"a": (0, 10), "b": (5, 15)}],
    ids=["duplicate-name", "overlapping-rows"],
)
def test_remove_exist_with_bad_segments_refuses_before_touching_the_store(
    tmp_path: Path, segments: Any
) -> None:
    path = str(tmp_path / "keep.bigarray")
    to_bigarray(da.ones((20, 2), chunks=(10, 2)), path, segments={"k": (0, 20)})
    with pytest.raises((OverlapError, bigarray.errors.DuplicateSegmentError)):
        to_bigarray(da.full((20, 2), 2.0, chunks=(10, 2)), path, segments, remove_exist=True)
    x = PointerArray(path)
    assert x.shape == (20, 2) and np.all(np.asarray(x) == 1.0)
    assert list(x.indices.keys()) == ["k"]
    assert sorted(os.listdir(tmp_path)) == ["keep.bigarray"], "a replacement was left behind"


def _append_then_die_once(w: Any, i: int, marker: str) -> int:
    w.write({f"s{i}": np.full((10, 3), i, "f8")})
    if i == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)  # the worker dies after its write: dask reruns the task
    return i


def test_rerun_of_an_appending_task_on_a_killed_worker_commits_once(
    tmp_path: Path, client: Any
) -> None:
    path = str(tmp_path / "x.bigarray")
    w = PointerArrayWriter(path, dtype="f8")
    marker = str(tmp_path / "killed")
    futures = client.map(_append_then_die_once, [w] * 8, range(8), [marker] * 8, pure=False)
    assert client.gather(futures) == list(range(8))
    assert os.path.exists(marker)
    w.close()
    x = PointerArray(path)
    assert len(x.indices) == 8
    for i in range(8):
        np.testing.assert_array_equal(x[f"s{i}"], np.full((10, 3), i, "f8"))


def test_rerun_of_an_appending_task_leaves_no_rows_outside_the_segments(
    tmp_path: Path, client: Any
) -> None:
    path = str(tmp_path / "x.bigarray")
    w = PointerArrayWriter(path, dtype="f8")
    marker = str(tmp_path / "killed")
    futures = client.map(_append_then_die_once, [w] * 8, range(8), [marker] * 8, pure=False)
    assert client.gather(futures) == list(range(8))
    w.close()
    x = PointerArray(path)
    assert len(x.indices) == 8
    assert x.shape == (80, 3), "rows of the killed attempt are counted in the shape"
    assert float(np.asarray(x).sum()) == 30.0 * sum(range(8))


def test_rerun_after_a_flush_committed_the_first_attempt_is_recognised(tmp_path: Path) -> None:
    path = str(tmp_path / "x.bigarray")
    w = PointerArrayWriter(path, dtype="f8")
    w.write({"a": np.ones((4, 2))})
    w.flush()
    heir = pickle.loads(pickle.dumps(w))  # the rerun: another copy of the session
    heir.write({"a": np.ones((4, 2))})
    w.close()
    x = PointerArray(path)
    assert x.shape == (4, 2) and list(x.indices) == ["a"]


def test_same_name_with_other_bytes_is_still_a_duplicate(tmp_path: Path) -> None:
    path = str(tmp_path / "x.bigarray")
    w = PointerArrayWriter(path, dtype="f8")
    w.write({"a": np.zeros((4, 2))})
    with pytest.raises(bigarray.errors.DuplicateSegmentError):  # refused at write()
        w.write({"a": np.ones((4, 2))})
    w.close()
    # another session writing a committed name again (same bytes) is refused too
    path = str(tmp_path / "y.bigarray")
    with PointerArrayWriter(path, dtype="f8") as w1:
        w1.write({"a": np.zeros((4, 2))})
    w2 = PointerArrayWriter(path)
    with pytest.raises(bigarray.errors.DuplicateSegmentError):
        w2.write({"a": np.zeros((4, 2))})
    w2.close()
    x = PointerArray(path)
    assert len(x.indices) == 1 and np.all(x["a"] == 0)


def test_new_variable_of_a_named_store_is_refused_before_anything_is_committed(
    tmp_path: Path,
) -> None:
    import xarray as xr

    from bigarray.xarray_backend import to_bigarray as xr_to_bigarray

    path = str(tmp_path / "named.bigarray")
    to_bigarray(da.ones((10, 3), chunks=(5, 3)), path, segments=[("a", 4), ("b", 6)])
    for segments in ([("a", 4), ("b", 6)], None):
        with pytest.raises(SchemaError, match="mode='a'"):
            to_bigarray(da.ones((10, 3), chunks=(5, 3)), path, segments, variable="v2")
    with xr.open_dataset(path, engine="bigarray") as back:
        assert set(back.data_vars) == {"data"}
    # the way the message names: the xarray writer adds it along the store's rows
    xr_to_bigarray(xr.Dataset({"v2": (("row", "dim_1"), np.full((10, 3), 2.0))}), path, mode="a")
    with xr.open_dataset(path, engine="bigarray") as back:
        np.testing.assert_array_equal(back["v2"].values, np.full((10, 3), 2.0))


def test_variables_of_other_lengths_open_with_a_bigarray_error(tmp_path: Path) -> None:
    import xarray as xr

    path = str(tmp_path / "mixed.bigarray")
    to_bigarray(da.ones((10, 3), chunks=(5, 3)), path)
    to_bigarray(da.ones((5, 3), chunks=(5, 3)), path, variable="v2")
    with pytest.raises(SchemaError, match="drop_variables"):
        xr.open_dataset(path, engine="bigarray")
    with xr.open_dataset(path, engine="bigarray", drop_variables=["v2"]) as back:
        assert back["data"].shape == (10, 3)


_STALE_CHILD = """
import sys, dask, dask.array as da
from bigarray.dask_backend import to_bigarray
dask.config.set(scheduler="synchronous")
d = to_bigarray(da.full((100, 2), 2.0, chunks=(20, 2)), sys.argv[1], remove_exist=True,
                compute=sys.argv[2] == "run")
if sys.argv[2] == "run":
    d.compute()
"""


def test_next_writer_removes_staging_left_by_dead_writers(tmp_path: Path) -> None:
    """A SIGKILLed replacement and a ``compute=False`` write whose program exited without
    running it leave ``.NAME.replace-*``; the next writer of the path removes them (never
    those of a live writer)."""
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "s.bigarray")
    to_bigarray(da.ones((100, 2), chunks=(20, 2)), path)
    killed = {**os.environ, "BIGARRAY_CRASH_AT": "before-manifest"}
    proc = subprocess.run([sys.executable, "-c", _STALE_CHILD, path, "run"], env=killed)
    assert proc.returncode == -signal.SIGKILL
    proc = subprocess.run([sys.executable, "-c", _STALE_CHILD, path, "drop"])
    assert proc.returncode == 0
    assert len([n for n in os.listdir(tmp_path) if ".replace-" in n]) >= 1
    left = sorted(os.listdir(tmp_path))
    live = to_bigarray(da.ones((100, 2), chunks=(20, 2)), path, remove_exist=True, compute=False)
    assert sorted(os.listdir(tmp_path)) == left  # building the Delayed writes nothing
    live.compute()
    assert sorted(os.listdir(tmp_path)) == ["s.bigarray"]
    assert float(np.asarray(MmapArray(path)).sum()) == 200.0


def test_a_handle_opened_before_a_replacement_says_reopen_it(tmp_path: Path) -> None:
    import xarray as xr

    from bigarray.errors import StoreChangedError

    path = str(tmp_path / "r.bigarray")
    to_bigarray(da.ones((1000, 4), chunks=(500, 4)), path)
    with xr.open_dataset(path, engine="bigarray") as old:
        to_bigarray(da.zeros((10, 4), chunks=(5, 4)), path, remove_exist=True)
        with pytest.raises(StoreChangedError, match="the store was replaced .*reopen it"):
            old["data"].load()


def test_to_bigarray_follows_the_one_destination_rule(tmp_path: Path) -> None:
    """remove_exist replaces a store and nothing else: a user's file or directory is
    refused and kept, as by convert and cp (core/destination.py)."""
    from bigarray.errors import NotAStoreError

    x = da.ones((10, 2), chunks=(5, 2))
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(NotAStoreError, match="refusing to replace it"):
        to_bigarray(x, str(mine), remove_exist=True)
    assert mine.read_text() == "keep me"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"x")
    with pytest.raises(NotAStoreError):
        to_bigarray(x, str(folder), remove_exist=True)
    assert os.listdir(folder) == ["a.npy"]
    store = str(tmp_path / "s.bigarray")
    to_bigarray(x, store)
    to_bigarray(2 * x, store, remove_exist=True)  # a store is replaced
    assert float(np.asarray(MmapArray(store)).sum()) == 40.0
