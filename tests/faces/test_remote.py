"""Stores anywhere: one suite over a local directory, ``memory://`` and S3 (moto server).

Writes go through :func:`bigarray.dask_backend.to_bigarray_sharded` (and the dask face's
``to_bigarray`` when it is installed) on a real ``dask.distributed`` LocalCluster with 2
worker processes, except on ``memory://``: that filesystem lives inside one process, so
workers in other processes could never see its objects; there the threaded scheduler
writes. Reads go through ``PointerArray``, ``from_bigarray`` and ``xr.open_dataset`` where
those faces exist, and through :func:`bigarray.core.store.open_store` always.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bigarray import PointerArray, PointerArrayWriter
from bigarray.copy import copy_store
from bigarray.core.filesystem import FileAccess, is_local
from bigarray.core.sharded import SHARD_DIR, segment_arrays, shard_bounds
from bigarray.core.store import RemoteStore, Store, is_store, open_store
from bigarray.dask_backend import to_bigarray_sharded
from bigarray.errors import (
    BigArrayError,
    NotAStoreError,
    RemoteStoreError,
    SchemaError,
    StorageOptionsError,
    StoreAccessError,
    StoreCorruptedError,
    StoreExistsError,
    StoreNotFoundError,
)

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture()
def bucket(s3_bucket: str) -> str:
    """A fresh bucket (conftest's ``s3_bucket``)."""
    return s3_bucket


@dataclass
class Target:
    """Where a test store goes: its URL, options, and how dask should write there."""

    kind: str
    url: str
    options: dict[str, Any] | None
    client: Any  # a distributed Client, or None for the threaded scheduler

    def fs_access(self) -> FileAccess:
        return FileAccess(self.url, self.options)

    def compute_ctx(self) -> Any:
        if self.client is None:
            return dask.config.set(scheduler="threads")
        return dask.config.set(scheduler=self.client)


@pytest.fixture(params=["local", "memory", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Target]:
    kind = request.param
    name = f"store-{uuid.uuid4().hex[:8]}.bigarray"
    if kind == "local":
        yield Target(kind, str(tmp_path / name), None, request.getfixturevalue("client"))
    elif kind == "memory":
        # memory:// is per process: distributed workers cannot see it, so use threads
        url = f"memory://bigarray-tests/{name}"
        yield Target(kind, url, None, None)
        FileAccess(url).remove_tree()
    else:
        opts = request.getfixturevalue("s3_options")
        b = request.getfixturevalue("bucket")
        yield Target(kind, f"s3://{b}/{name}", opts, request.getfixturevalue("client"))


def ragged(
    seed: int, n: int = 60, width: int = 5, dtype: str = "float32"
) -> tuple[np.ndarray, dict[str, int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, n)
    data = rng.standard_normal((int(lengths.sum()), width)).astype(dtype)
    return data, {f"utt{i:04d}": int(k) for i, k in enumerate(lengths)}


def bounds_of(segments: dict[str, int]) -> dict[str, tuple[int, int]]:
    out, pos = {}, 0
    for k, n in segments.items():
        out[k] = (pos, pos + n)
        pos += n
    return out


def write(t: Target, data: np.ndarray, segments: dict[str, int], chunk: int = 300) -> None:
    x = da.from_array(data, chunks=(chunk, data.shape[1]))
    with t.compute_ctx():
        to_bigarray_sharded(x, t.url, segments=segments, storage_options=t.options)


# --------------------------------------------------------------------------- the shared suite
class TestStoresAnywhere:
    def test_sharded_write_then_read_everywhere(self, target: Target) -> None:
        data, segments = ragged(1)
        write(target, data, segments)
        want = bounds_of(segments)

        store = open_store(target.url, target.options)
        assert isinstance(store, Store if target.kind == "local" else RemoteStore)
        var = store.variable()
        assert len(var.shards) > 1, "the 300-row chunks should give several shards"
        starts = {s.start for s in var.shards}
        for a, b in want.values():  # no segment crosses a shard boundary
            assert not any(a < s < b for s in starts)
        np.testing.assert_array_equal(store.read_rows(None, 0, len(data)), data)
        assert len(store.index) == len(segments)
        for name in ("utt0000", "utt0031", "utt0059"):
            assert store.index[name] == want[name]
            np.testing.assert_array_equal(
                store.read_rows(None, *store.index[name]), data[slice(*want[name])]
            )
        # a row range across a shard boundary is still one array
        s = var.shards[1].start
        np.testing.assert_array_equal(store.read_rows(None, s - 3, s + 3), data[s - 3 : s + 3])
        got = store.read_ranges(None, [want[k] for k in segments])
        for k, arr in zip(segments, got, strict=True):
            np.testing.assert_array_equal(arr, data[slice(*want[k])])
        store.close()

    def test_pointer_array(self, target: Target) -> None:
        data, segments = ragged(2)
        write(target, data, segments)
        want = bounds_of(segments)
        if target.kind == "local":
            # several shards cannot be one memory map: the message says what to use
            with pytest.raises(SchemaError, match="shards, which one memory map cannot span"):
                PointerArray(target.url)
            return
        x = PointerArray(target.url, storage_options=target.options)
        np.testing.assert_array_equal(np.asarray(x), data)
        assert float(np.sum(x)) == pytest.approx(float(data.sum(dtype=np.float64)), rel=1e-5)
        assert dict(x.indices.items()) == want
        np.testing.assert_array_equal(x["utt0007"], data[slice(*want["utt0007"])])
        assert x.path == target.url

    def test_pointer_array_too_big_for_memory(self, target: Target) -> None:
        if target.kind == "local":
            pytest.skip("local stores are memory-mapped, never copied")
        data, segments = ragged(3, n=5)
        write(target, data, segments)
        with pytest.raises(RemoteStoreError, match="max_bytes=100 .*from_bigarray"):
            PointerArray(target.url, storage_options=target.options, max_bytes=100)

    def test_from_bigarray_chunks_follow_shards(self, target: Target) -> None:
        from bigarray.dask_backend import from_bigarray

        data, segments = ragged(4)
        write(target, data, segments)
        x = from_bigarray(target.url, storage_options=target.options, chunks=100)
        cuts = set(np.cumsum((0, *x.chunks[0])).tolist())
        store = open_store(target.url, target.options)
        assert {s.start for s in store.variable().shards} <= cuts, "a chunk spans two shards"
        with target.compute_ctx():
            np.testing.assert_allclose(x.sum().compute(), data.sum(dtype=np.float64), rtol=1e-5)
            np.testing.assert_array_equal(x.compute(), data)

    def test_dask_backend_to_bigarray_dispatches(self, target: Target) -> None:
        from bigarray.dask_backend import to_bigarray

        data, segments = ragged(5)
        x = da.from_array(data, chunks=(250, data.shape[1]))
        with target.compute_ctx():
            to_bigarray(x, target.url, segments=bounds_of(segments), storage_options=target.options)
        store = open_store(target.url, target.options)
        np.testing.assert_array_equal(store.read_rows(None, 0, len(data)), data)
        assert store.index["utt0010"] == bounds_of(segments)["utt0010"]

    def test_xarray_engine(self, target: Target) -> None:
        xr = pytest.importorskip("xarray")
        data, segments = ragged(6)
        write(target, data, segments)
        try:
            ds = xr.open_dataset(target.url, engine="bigarray", storage_options=target.options)
        except (ValueError, TypeError) as exc:
            if "bigarray" in str(exc) and ("engine" in str(exc) or "unrecognized" in str(exc)):
                pytest.skip(f"the xarray engine is not installed yet: {exc}")
            raise
        with ds:
            np.testing.assert_array_equal(ds["data"].values, data)

    def test_missing_store(self, target: Target) -> None:
        url = target.url + "-missing"
        with pytest.raises(StoreNotFoundError, match=r"-missing"):
            open_store(url, target.options)
        assert not is_store(url, target.options)

    def test_truncated_shard(self, target: Target) -> None:
        data, segments = ragged(7)
        write(target, data, segments)
        store = open_store(target.url, target.options)
        shard = store.variable().shards[1]
        store.close()
        acc = target.fs_access()
        raw = acc.cat(shard.path)
        acc.pipe(shard.path, raw[: len(raw) // 2])
        acc.invalidate()
        store = open_store(target.url, target.options)
        with pytest.raises(
            StoreCorruptedError,
            match=rf"{shard.path}.* holds {len(raw) // 2:,} bytes but the manifest needs {len(raw):,}",
        ):
            store.read_rows(None, shard.start, shard.stop)
        if target.kind != "local":
            with pytest.raises(StoreCorruptedError, match=shard.path):
                PointerArray(target.url, storage_options=target.options)

    def test_failed_task_commits_nothing(self, target: Target) -> None:
        data, segments = ragged(8)

        def explode(block: np.ndarray, block_info: Any = None) -> np.ndarray:
            if block_info[0]["chunk-location"][0] == 2:
                raise RuntimeError("disk on fire in block 2")
            return block

        x = da.from_array(data, chunks=(300, data.shape[1])).map_blocks(explode, dtype=data.dtype)
        with target.compute_ctx(), pytest.raises(RuntimeError, match="disk on fire"):
            to_bigarray_sharded(x, target.url, segments=segments, storage_options=target.options)
        acc = target.fs_access()
        acc.invalidate()
        assert not acc.exists("manifest.json")
        with pytest.raises((StoreNotFoundError, NotAStoreError), match="store"):
            open_store(target.url, target.options)
        leftovers = acc.fs.glob(acc.full(f"{SHARD_DIR}/*.npy"))
        assert leftovers == [], "the shards of a failed write are deleted"

    def test_existing_store_refused_then_replaced(self, target: Target) -> None:
        data, segments = ragged(9, n=10)
        write(target, data, segments)
        with pytest.raises(StoreExistsError, match="remove_exist=True"):
            write(target, data, segments)
        data2, segments2 = ragged(10, n=12)
        x = da.from_array(data2, chunks=(100, data2.shape[1]))
        with target.compute_ctx():
            to_bigarray_sharded(
                x, target.url, segments=segments2, storage_options=target.options, remove_exist=True
            )
        store = open_store(target.url, target.options)
        np.testing.assert_array_equal(store.read_rows(None, 0, len(data2)), data2)
        assert len(store.index) == 12

    def test_copy_roundtrip(self, target: Target, tmp_path: Any) -> None:
        data, segments = ragged(11)
        src = str(tmp_path / "src.bigarray")
        with PointerArrayWriter(src, dtype="float32") as w:
            w.write({k: data[slice(*b)] for k, b in bounds_of(segments).items()})
        report = copy_store(src, target.url, dst_options=target.options, progress=False)
        assert report.files == 7  # data.npy, 5 index files, manifest.json
        x = PointerArray(target.url, storage_options=target.options)
        np.testing.assert_array_equal(np.asarray(x), data)
        assert x["utt0042"].shape == data[slice(*bounds_of(segments)["utt0042"])].shape
        with pytest.raises(StoreExistsError, match="overwrite=True"):
            copy_store(src, target.url, dst_options=target.options, progress=False)
        back = str(tmp_path / "back.bigarray")
        copy_store(target.url, back, src_options=target.options, progress=False)
        np.testing.assert_array_equal(np.asarray(PointerArray(back)), data)


# --------------------------------------------------------------------------- S3 specifics
@pytest.mark.s3
def test_bucket_that_does_not_exist(s3_options: dict[str, Any]) -> None:
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/a.bigarray"
    with pytest.raises(StoreNotFoundError, match=url):
        open_store(url, s3_options)
    with pytest.raises(StoreNotFoundError, match=url):
        PointerArray(url, storage_options=s3_options)


@pytest.mark.s3
def test_bucket_without_permission(s3_options: dict[str, Any], bucket: str, tmp_path: Any) -> None:
    s3fs = pytest.importorskip("s3fs")
    data, segments = ragged(12, n=8)
    url = f"s3://{bucket}/locked.bigarray"
    to_bigarray_sharded(
        da.from_array(data, chunks=(50, 5)), url, segments=segments, storage_options=s3_options
    )
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    fs = s3fs.S3FileSystem(**s3_options)
    fs.call_s3("put_bucket_policy", Bucket=bucket, Policy=json.dumps(policy))
    try:
        with pytest.raises(
            StoreAccessError,
            match=rf"access to 's3://{bucket}/locked.bigarray/manifest.json' was refused",
        ):
            open_store(url, s3_options)
        # a writer is refused too, and commits nothing
        with pytest.raises(StoreAccessError, match=bucket):
            to_bigarray_sharded(
                da.from_array(data, chunks=(50, 5)),
                f"s3://{bucket}/other.bigarray",
                storage_options=s3_options,
            )
        src = str(tmp_path / "src.bigarray")
        with PointerArrayWriter(src, dtype="float32") as w:
            w.write({"a": data[:3]})
        with pytest.raises(StoreAccessError, match=bucket):
            copy_store(src, f"s3://{bucket}/copy.bigarray", dst_options=s3_options, progress=False)
    finally:
        fs.call_s3("delete_bucket_policy", Bucket=bucket)
    assert isinstance(open_store(url, s3_options), RemoteStore)
    assert issubclass(StoreAccessError, PermissionError)


@pytest.mark.s3
def test_cli_cp_between_local_memory_and_s3(
    s3_options: dict[str, Any], bucket: str, tmp_path: Any, capsys: Any
) -> None:
    from bigarray.cli import main

    data, segments = ragged(13)
    src = str(tmp_path / "a.bigarray")
    with PointerArrayWriter(src, dtype="float32") as w:
        w.write({k: data[slice(*b)] for k, b in bounds_of(segments).items()})
    s3_url = f"s3://{bucket}/cp/a.bigarray"
    mem_url = f"memory://cli-{uuid.uuid4().hex[:8]}/a.bigarray"
    opts = json.dumps(s3_options)
    assert main(["cp", src, s3_url, "--dst-options", opts, "--quiet"]) == 0
    assert main(["cp", s3_url, mem_url, "--src-options", opts, "--quiet"]) == 0
    back = str(tmp_path / "back.bigarray")
    assert main(["cp", mem_url, back]) == 0  # with a progress bar
    np.testing.assert_array_equal(np.asarray(PointerArray(back)), data)

    # sizes equal at every hop
    # (a copy to a URL names its objects after the copy session: compare role by role)
    def sizes(url: str, options: Any = None) -> list[int | None]:
        m = open_store(url, options).manifest
        rels = [m.variables["data"].shards[0].path, *m.segments.files.values()]  # type: ignore[union-attr]
        got = FileAccess(url, options).sizes(rels)
        return [got[r] for r in rels]

    assert sizes(src) == sizes(s3_url, s3_options) == sizes(mem_url)
    assert main(["cp", src, s3_url, "--dst-options", opts, "--quiet"]) == 1
    assert "StoreExistsError" in capsys.readouterr().err
    FileAccess(mem_url).remove_tree()


@pytest.mark.s3
def test_copy_refuses_a_truncated_source(
    s3_options: dict[str, Any], bucket: str, tmp_path: Any
) -> None:
    data, segments = ragged(14, n=20)
    url = f"s3://{bucket}/src.bigarray"
    to_bigarray_sharded(
        da.from_array(data, chunks=(100, 5)), url, segments=segments, storage_options=s3_options
    )
    acc = FileAccess(url, s3_options)
    shard = open_store(url, s3_options).variable().shards[0]
    acc.pipe(shard.path, acc.cat(shard.path)[:200])
    dst = tmp_path / "dst.bigarray"
    with pytest.raises(StoreCorruptedError, match="source store is damaged"):
        copy_store(url, str(dst), src_options=s3_options, progress=False)
    assert not (dst / "manifest.json").exists()


# --------------------------------------------------------------------------- plain checks
def test_storage_options_with_a_local_path(tmp_path: Any) -> None:
    with pytest.raises(StorageOptionsError, match="given for the local path"):
        open_store(str(tmp_path), {"anon": True})
    with pytest.raises(StorageOptionsError, match="storage_options"):
        PointerArray(str(tmp_path), storage_options={"anon": True})


def test_unknown_protocol() -> None:
    with pytest.raises(RemoteStoreError, match="nosuchproto://x"):
        open_store("nosuchproto://x/a.bigarray")


def test_is_local() -> None:
    assert is_local("/a/b") and is_local("rel/b") and is_local("file:///a")
    assert not is_local("s3://b/a") and not is_local("memory://a")
    assert not is_local("simplecache::s3://b/a")


def test_file_url_is_memory_mapped(tmp_path: Any) -> None:
    path = str(tmp_path / "f.bigarray")
    with PointerArrayWriter(path, dtype="int32") as w:
        w.write({"a": np.arange(6, dtype="int32").reshape(3, 2)})
    store = open_store("file://" + path)
    assert isinstance(store, Store) and not store.is_remote
    np.testing.assert_array_equal(PointerArray("file://" + path)["a"], np.arange(6).reshape(3, 2))


def test_a_url_that_is_not_a_store() -> None:
    acc = FileAccess(f"memory://notastore-{uuid.uuid4().hex[:6]}")
    acc.pipe("readme.txt", b"hello")
    with pytest.raises(NotAStoreError, match="holds no manifest.json"):
        open_store(acc.url)
    acc.remove_tree()


def test_shard_bounds_never_cut_a_segment() -> None:
    seg = segment_arrays({"a": 5, "b": 10, "c": 1, "d": 20}, 36)
    assert seg is not None
    # chunk cuts at 6 (inside b) and 30 (inside d) move to the segment starts 5 and 16
    assert shard_bounds([6, 24, 6], seg) == [0, 5, 16, 36]
    assert shard_bounds([36], seg) == [0, 36]
    assert shard_bounds([10, 10, 16], None) == [0, 10, 20, 36]


def test_bad_segments_refused_before_any_write() -> None:
    url = f"memory://badseg-{uuid.uuid4().hex[:6]}/a.bigarray"
    x = da.zeros((10, 2), chunks=5)
    with pytest.raises(SchemaError, match="ends at row 12 but the array has 10 rows"):
        to_bigarray_sharded(x, url, segments={"a": 4, "b": 8})
    with pytest.raises(BigArrayError, match="'a'.*used twice"):
        to_bigarray_sharded(x, url, segments=[("a", 0, 4), ("a", 4, 8)])
    with pytest.raises(SchemaError, match="neither a length nor"):
        to_bigarray_sharded(x, url, segments={"a": "four"})
    with pytest.raises(SchemaError, match="compute_chunk_sizes"):
        to_bigarray_sharded(x[x[:, 0] > 0], url)
    assert not FileAccess(url).exists()


def test_unnamed_and_empty_arrays() -> None:
    url = f"memory://unnamed-{uuid.uuid4().hex[:6]}/a.bigarray"
    data = np.arange(40, dtype="<i8").reshape(20, 2)
    with dask.config.set(scheduler="threads"):
        to_bigarray_sharded(da.from_array(data, chunks=(7, 1)), url)
        to_bigarray_sharded(da.zeros((0, 3), dtype="f4"), url + "-empty")
    store = open_store(url)
    assert store.index is None and len(store.variable().shards) == 3
    np.testing.assert_array_equal(store.read_rows(None, 0, 20), data)
    empty = open_store(url + "-empty")
    assert empty.variable().shape == (0, 3)
    assert empty.read_rows(None, 0, 5).shape == (0, 3)


def test_compute_false_returns_a_delayed_commit() -> None:
    url = f"memory://delayed-{uuid.uuid4().hex[:6]}/a.bigarray"
    data, segments = ragged(15, n=10)
    d = to_bigarray_sharded(
        da.from_array(data, chunks=(50, 5)), url, segments=segments, compute=False
    )
    assert not FileAccess(url).exists("manifest.json")
    manifest = d.compute(scheduler="threads")
    assert manifest.segments.count == 10
    np.testing.assert_array_equal(open_store(url).read_rows(None, 0, len(data)), data)


def test_remote_store_pickles_by_url() -> None:
    import pickle

    url = f"memory://pickle-{uuid.uuid4().hex[:6]}/a.bigarray"
    data, segments = ragged(16, n=10)
    with dask.config.set(scheduler="threads"):
        to_bigarray_sharded(da.from_array(data, chunks=(60, 5)), url, segments=segments)
    store = open_store(url)
    blob = pickle.dumps(store)
    assert len(blob) < 500
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.read_rows(None, 3, 9), data[3:9])
    x = PointerArray(url)
    part = pickle.loads(pickle.dumps(x[5:15]))
    np.testing.assert_array_equal(part, data[5:15])


hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=25),
    chunk=st.integers(1, 80),
    width=st.integers(1, 3),
    dtype=st.sampled_from(["<f4", "<i2", "|b1", "<c8", "<M8[s]", "<U3"]),
)
def test_roundtrip_property(lengths: list[int], chunk: int, width: int, dtype: str) -> None:
    """Any dtype, segment layout and chunking: numpy, PointerArray and segment reads all
    equal the source, and no shard boundary falls inside a segment."""
    rows = sum(lengths)
    rng = np.random.default_rng(rows)
    data = rng.integers(0, 100, (rows, width)).astype(dtype)
    segments = {f"s{i}": n for i, n in enumerate(lengths)}
    url = f"memory://prop-{uuid.uuid4().hex[:8]}/a.bigarray"
    with dask.config.set(scheduler="threads"):
        to_bigarray_sharded(
            da.from_array(data, chunks=(max(1, chunk), width)), url, segments=segments
        )
    store = open_store(url)
    np.testing.assert_array_equal(store.read_rows(None, 0, rows), data)
    starts = {s.start for s in store.variable().shards}
    want = bounds_of(segments)
    for a, b in want.values():
        assert not any(a < s < b for s in starts)
    x = PointerArray(url)
    for k in list(segments)[:5]:
        np.testing.assert_array_equal(x[k], data[slice(*want[k])])
    got = store.read_ranges(None, list(want.values()))
    for (a, b), arr in zip(want.values(), got, strict=True):
        np.testing.assert_array_equal(arr, data[a:b])
    FileAccess(url).remove_tree()
