"""The read-only handle (``bigarray.open`` / ``PointerArray.lazy``) and the chunk planner."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bigarray
from bigarray import PointerArray, PointerArrayWriter
from bigarray import lazy as lazy_mod
from bigarray.core.chunks import segment_chunks
from bigarray.core.commit import update_manifest
from bigarray.core.format import Shard, save_npy
from bigarray.errors import (
    SchemaError,
    StoreNotFoundError,
    VariableNotFoundError,
)
from bigarray.lazy import LazyArray, open_array


def _write(
    path: Path, lengths: list[int], features: int = 3, seed: int = 0, fsync: bool = True
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.random((int(sum(lengths)), features))
    off = np.concatenate([[0], np.cumsum(lengths)])
    with PointerArrayWriter(str(path), dtype="f8", remove_exist=True, fsync=fsync) as w:
        w.write({f"s{i}": data[off[i] : off[i + 1]] for i in range(len(lengths))})
    return data


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, np.ndarray]:
    path = tmp_path / "a.bigarray"
    data = _write(path, [5, 7, 3, 10, 1, 4])
    return str(path), data


def _split_into_two_shards(path: str, at: int) -> None:
    """Rewrite a store's variable as two shard files (what a sharded writer produces)."""
    full = np.load(os.path.join(path, "data.npy"))
    off1 = save_npy(os.path.join(path, "part0.npy"), full[:at], fsync=False)
    off2 = save_npy(os.path.join(path, "part1.npy"), full[at:], fsync=False)

    def change(m: Any) -> Any:
        import dataclasses

        v = m.variables["data"]
        shards = (Shard("part0.npy", off1, 0, at), Shard("part1.npy", off2, at, len(full)))
        return dataclasses.replace(m, variables={"data": dataclasses.replace(v, shards=shards)})

    update_manifest(path, change)


def test_handle_attributes_and_reads_match_numpy(store: tuple[str, np.ndarray]) -> None:
    path, data = store
    h = bigarray.open(path)
    assert isinstance(h, LazyArray) and not isinstance(h, np.ndarray)
    assert (h.shape, h.dtype, h.ndim, len(h), h.size) == (data.shape, data.dtype, 2, 30, 90)
    assert h.nbytes == data.nbytes
    for key in [
        3,
        -1,
        slice(2, 9),
        slice(None, None, 3),
        slice(20, 2, -4),
        (slice(1, 4), 2),
        (Ellipsis, 1),
        (4, Ellipsis),
        np.array([0, 29, 3]),
        data[:, 0] > 0.5,
        (..., slice(0, 2)),
        (slice(0, 0),),
        (np.array([[1, 2], [3, 4]]), 0),
    ]:
        np.testing.assert_array_equal(h[key], data[key], err_msg=repr(key))
        assert type(h[key]) is np.ndarray
    np.testing.assert_array_equal(np.asarray(h), data)
    np.testing.assert_array_equal(np.asarray(h, dtype="f4"), data.astype("f4"))
    np.testing.assert_array_equal(h["s1"], data[5:12])
    np.testing.assert_array_equal(h.segment("s3"), data[15:25])
    assert h.indices["s2"] == (12, 15)


def test_handle_is_read_only_view_of_the_map(store: tuple[str, np.ndarray]) -> None:
    path, _ = store
    block = bigarray.open(path)[0:4]
    assert not block.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        block[0, 0] = 1.0


def test_copy_and_pickle_are_references(store: tuple[str, np.ndarray]) -> None:
    path, data = store
    h = open_array(path)
    c = h.copy()
    assert isinstance(c, LazyArray) and c is not h
    np.testing.assert_array_equal(c[2:6], data[2:6])
    raw = pickle.dumps(h)
    assert len(raw) < 2000  # a reference: path, dtype, shards; never the 720 data bytes' copy
    assert data[:3].tobytes() not in raw
    back = pickle.loads(raw)
    np.testing.assert_array_equal(back[...], data)
    assert back.__dask_tokenize__() == h.__dask_tokenize__()


def test_pointer_array_lazy_and_tokens_follow_content(tmp_path: Path) -> None:
    path = tmp_path / "t.bigarray"
    data = _write(path, [4, 4])
    from dask.base import tokenize

    h1 = PointerArray(str(path)).lazy
    h2 = bigarray.open(str(path))
    assert tokenize(h1) == tokenize(h2)
    with PointerArrayWriter(str(path)) as w:  # append: a new generation
        w.write({"more": np.ones((2, 3))})
    h3 = bigarray.open(str(path))
    assert tokenize(h3) != tokenize(h1)
    assert h3.shape == (10, 3)
    # the old handle still reads the rows it saw: committed rows never change on append
    np.testing.assert_array_equal(h1[...], data)


def test_replaced_store_is_refused_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "r.bigarray"
    _write(path, [4, 4])
    raw = pickle.dumps(bigarray.open(str(path)))
    lazy_mod._CACHE.clear()
    _write(path, [4, 4, 4], seed=1)  # remove_exist=True: new data file, new generations
    old = pickle.loads(raw)
    with pytest.raises(SchemaError, match="changed after this array was opened"):
        old[0:2]


def test_sharded_variable_reads_and_chunks_never_span_shards(tmp_path: Path) -> None:
    path = str(tmp_path / "sh.bigarray")
    data = _write(tmp_path / "sh.bigarray", [5, 7, 3, 10, 1, 4])
    _split_into_two_shards(path, 12)  # shard boundary at a segment boundary
    lazy_mod._CACHE.clear()
    h = bigarray.open(path)
    for key in [slice(None), slice(10, 14), slice(3, 29, 5), np.array([29, 0, 11, 12]), 12, -18]:
        np.testing.assert_array_equal(h[key], data[key], err_msg=repr(key))
    cuts = set(np.cumsum(h.row_chunks(1000)).tolist())
    assert 12 in cuts
    assert h.row_chunks(1000) == (12, 18)


def test_open_errors(tmp_path: Path, store: tuple[str, np.ndarray]) -> None:
    path, _ = store
    with pytest.raises(StoreNotFoundError, match="no bigarray store at"):
        open_array(str(tmp_path / "missing"))
    with pytest.raises(VariableNotFoundError, match="has no variable 'nope'"):
        open_array(path, variable="nope")
    with pytest.raises(StoreNotFoundError, match="takes a store path or URL"):
        open_array(np.zeros(3))  # type: ignore[arg-type]
    h = open_array(path)
    with pytest.raises(SchemaError, match="a row count must be >= 1"):
        h.row_chunks(0)
    with pytest.raises(SchemaError, match="is not understood"):
        h.row_chunks("lots")
    with pytest.raises(SchemaError, match="cuts segment #1 rows \\[5, 12\\)"):
        h.row_chunks((6, 24))
    with pytest.raises(SchemaError, match="sum to 30 rows"):
        h.row_chunks((5, 5))
    with pytest.raises(IndexError, match="out of bounds"):
        h[30]


def test_remote_url_goes_through_the_store_seam(store: tuple[str, np.ndarray]) -> None:
    fsspec = pytest.importorskip("fsspec")
    path, data = store
    fs = fsspec.filesystem("memory")
    url = f"memory://lazy-{os.getpid()}-{abs(hash(path))}.bigarray"
    fs.put(path, url, recursive=True)
    h = open_array(url)
    assert h.shape == data.shape
    np.testing.assert_array_equal(h[3:17], data[3:17])
    np.testing.assert_array_equal(h[np.array([1, 20])], data[[1, 20]])
    np.testing.assert_array_equal(h["s3"], data[15:25])
    back = pickle.loads(pickle.dumps(h))
    np.testing.assert_array_equal(back[...], data)
    assert h.row_chunks("segments") == (5, 7, 3, 10, 1, 4)


def test_cache_bounds_open_stores(tmp_path: Path) -> None:
    lazy_mod._CACHE.clear()
    handles = []
    for i in range(lazy_mod.MAX_OPEN_STORES + 6):
        p = tmp_path / f"s{i}"
        _write(p, [1, 2], features=1, seed=i, fsync=False)
        handles.append(bigarray.open(str(p)))
    for h in handles:
        assert h[0:3].shape == (3, 1)
    assert lazy_mod.open_store_count() == lazy_mod.MAX_OPEN_STORES
    # an evicted store is simply reopened
    np.testing.assert_array_equal(handles[0][...], np.asarray(PointerArray(str(tmp_path / "s0"))))


# ----------------------------------------------------------------------------- planner
def _bounds(lengths: list[int], gaps: list[int] | None = None) -> tuple[np.ndarray, int]:
    gaps = gaps or [0] * len(lengths)
    starts, pos = [], 0
    for n, g in zip(lengths, gaps):
        pos += g
        starts.append(pos)
        pos += n
    s = np.array(starts, np.int64)
    return np.stack([s, s + np.array(lengths, np.int64)], 1).reshape(-1, 2), pos


def test_chunks_on_segment_boundaries_and_oversize_split() -> None:
    b, rows = _bounds([10, 990, 5, 10])
    sizes = segment_chunks(b, rows, 1, 100)
    cuts = np.cumsum(sizes)
    assert sum(sizes) == rows == 1015
    inside_big = (cuts > 10) & (cuts < 1000)
    assert set(cuts[~inside_big].tolist()) <= set(b.reshape(-1).tolist())
    # the 990-row segment is the only one split, into 10 near-equal pieces of <= 100 rows
    assert [s for s in sizes if 90 <= s <= 100] == [99] * 10
    assert segment_chunks(b, rows, 1, 100, split=False) == (10, 990, 15)
    assert segment_chunks(b, rows, 1, None) == (10, 990, 5, 10)
    assert segment_chunks(None, 1000, 1, 300) == (250, 250, 250, 250)
    assert segment_chunks(None, 0, 1, 300) == (0,)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=60),
    st.lists(st.integers(0, 5), min_size=60, max_size=60),
    st.integers(1, 80),
)
def test_chunk_plan_properties(lengths: list[int], gaps: list[int], target: int) -> None:
    b, rows = _bounds(lengths, gaps[: len(lengths)])
    rows += gaps[-1]
    sizes = np.array(segment_chunks(b, rows, 1, target))
    assert (sizes.sum() == rows and (sizes > 0).all()) or rows == 0
    cuts = np.cumsum(sizes)[:-1]
    for c in cuts.tolist():
        # a cut inside a segment only when that segment is longer than the target
        inside = (b[:, 0] < c) & (c < b[:, 1])
        assert not inside.any() or (b[inside, 1] - b[inside, 0] > target).all()
    assert sizes.max() <= target  # the one planner never exceeds the target (xarray's rule)
    # no segment longer than the target is ever split when split=False
    whole = np.cumsum(segment_chunks(b, rows, 1, target, split=False))[:-1]
    for c in whole.tolist():
        assert not ((b[:, 0] < c) & (c < b[:, 1])).any()
