"""The xarray face: engine="bigarray", segment labels, lazy reads, to_bigarray, accessors."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import dask.array as da
import numpy as np
import psutil
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigarray import PointerArray, PointerArrayWriter, StoreWriter
from bigarray.errors import (
    BigArrayError,
    OverlapError,
    SchemaError,
    SegmentNotFoundError,
    StoreExistsError,
    StoreNotFoundError,
)
from bigarray.xarray_backend import (
    BigArrayBackendEntrypoint,
    open_mfdataset,
    segment_chunks,
    to_bigarray,
)

ENGINE = "bigarray"


# ------------------------------------------------------------------------------ helpers
def ragged(
    rng: np.random.Generator, n: int, lo: int = 1, hi: int = 30, f: int = 4
) -> dict[str, np.ndarray]:
    lengths = rng.integers(lo, hi, n)
    return {f"utt{i:04d}": rng.random((int(k), f)).astype("f4") for i, k in enumerate(lengths)}


def seed_store(path: Any, segs: dict[str, np.ndarray]) -> str:
    f = next(iter(segs.values())).shape[1]
    with PointerArrayWriter(str(path), shape=(0, f), dtype="f4") as w:
        w.write(segs)
    return str(path)


@pytest.fixture()
def segs() -> dict[str, np.ndarray]:
    return ragged(np.random.default_rng(0), 40)


@pytest.fixture()
def store(tmp_path: Any, segs: dict[str, np.ndarray]) -> str:
    return seed_store(tmp_path / "a.bigarray", segs)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def mapped_files() -> str:
    with open("/proc/self/maps") as f:
        return f.read()


# ------------------------------------------------------------------------------ entry point
def test_engine_resolves_in_a_fresh_process_without_importing_bigarray(store: str) -> None:
    code = (
        "import sys, xarray as xr\n"
        "assert 'bigarray' not in sys.modules\n"
        "print('bigarray' in xr.backends.list_engines())\n"
        f"ds = xr.open_dataset({store!r}, engine='bigarray')\n"
        "print(ds['data'].dims, ds.sizes['segment'])\n"
        f"print(type(xr.open_dataset({store!r}).get('data')).__name__)\n"  # guessed engine
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["True", "('row', 'dim_1') 40", "DataArray"]


def test_guess_can_open_never_raises(tmp_path: Any, store: str) -> None:
    ep = BigArrayBackendEntrypoint()
    (tmp_path / "plain").mkdir()
    (tmp_path / "file.nc").write_bytes(b"CDF\x01")
    assert ep.guess_can_open(store)
    assert ep.guess_can_open(os.path.join(store, "manifest.json"))
    assert ep.guess_can_open(tmp_path / "a.bigarray")  # PathLike
    assert ep.guess_can_open("s3://bucket/audio.bigarray")  # judged by name, no network
    for other in [
        tmp_path / "plain",
        tmp_path / "file.nc",
        tmp_path / "missing",
        "s3://bucket/a.zarr",
        "http://127.0.0.1:9/x",
        b"bytes",
        3,
        None,
        object(),
    ]:
        assert not ep.guess_can_open(other)
    assert ep.description and ep.url and "segments" in ep.open_dataset_parameters


def test_seed_store_opens_with_default_names(store: str, segs: dict[str, np.ndarray]) -> None:
    ds = xr.open_dataset(store, engine=ENGINE)
    x = PointerArray(store)
    assert ds["data"].dims == ("row", "dim_1")
    assert ds["data"].dtype == np.float32
    assert list(ds["segment"].values) == list(segs)
    assert set(ds.coords) == {"segment", "segment_start", "segment_stop"}
    assert ds.indexes["segment"].is_unique
    np.testing.assert_array_equal(ds["data"].values, np.asarray(x))
    for name in ["utt0000", "utt0017", "utt0039"]:
        row = ds.sel(segment=name)
        a, b = int(row.segment_start), int(row.segment_stop)
        assert (a, b) == x.indices[name]
        np.testing.assert_array_equal(ds["data"][a:b].values, segs[name])
    ds.close()


def test_open_errors(tmp_path: Any, store: str) -> None:
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        xr.open_dataset(tmp_path / "missing", engine=ENGINE)
    with pytest.raises(BigArrayError, match=r"segments='yes'; expected True"):
        xr.open_dataset(store, engine=ENGINE, segments="yes")
    clash = tmp_path / "clash.bigarray"
    w = StoreWriter(clash, variable="segment", dtype="i8", shape=(0,))
    w.write_rows([np.arange(3)], names=["a"])
    w.close()
    with pytest.raises(SchemaError, match="variable named 'segment'.*segments=False"):
        xr.open_dataset(clash, engine=ENGINE)
    ds = xr.open_dataset(clash, engine=ENGINE, segments=False)
    assert list(ds["segment"].values) == [0, 1, 2]


# ------------------------------------------------------------------------------ lazy and honest
def test_lazy_open_of_a_huge_sparse_store(tmp_path: Any) -> None:
    path = tmp_path / "huge.bigarray"
    rows, f = 2_000_000, 1024  # 8 GB of float32, almost all of it a hole in the file
    w = StoreWriter(path, shape=(rows, f), dtype="f4", checksums=False)
    w.write_rows([np.full((3, f), 1.5, "f4")], names=["first"], start_position=0)
    w.write_rows([np.full((2, f), 2.5, "f4")], names=["last"], start_position=rows - 2)
    w.close()
    data_file = path / "data.npy"
    assert data_file.stat().st_size > 8e9 and data_file.stat().st_blocks * 512 < 1e8  # sparse
    proc = psutil.Process()
    rss = proc.memory_info().rss
    ds = xr.open_dataset(path, engine=ENGINE)
    assert ds["data"].shape == (rows, f)
    assert not ds["data"].variable._in_memory
    assert proc.memory_info().rss - rss < 100e6
    np.testing.assert_array_equal(ds.bigarray.segment("last")["data"].values, np.full((2, f), 2.5))
    assert float(ds["data"][:3].mean()) == 1.5
    assert proc.memory_info().rss - rss < 200e6
    ds.close()


def test_loaded_arrays_are_private_writable_copies_on_write(store: str) -> None:
    ds = xr.open_dataset(store, engine=ENGINE).load()
    before = ds["data"].values.copy()
    ds["data"].values[0, 0] = -99.0  # writable ...
    ds["data"] += 1  # ... in place too
    again = xr.open_dataset(store, engine=ENGINE)
    np.testing.assert_array_equal(again["data"].values, before)  # ... and the file is unchanged
    np.testing.assert_array_equal(PointerArray(store)[0], before[0])


@pytest.mark.parametrize(
    "key",
    [
        {"row": slice(3, 50)},
        {"row": slice(None, None, -3)},
        {"row": slice(80, 2, -7), "dim_1": [3, 0]},
        {"row": [5, 1, 99, 5]},
        {"row": 17},
        {"row": -1, "dim_1": 2},
        {"row": slice(10, 10)},
        {"row": np.array([], int)},
        {"dim_1": slice(1, 3)},
    ],
)
def test_outer_indexing_matches_numpy(store: str, key: dict[str, Any]) -> None:
    ds = xr.open_dataset(store, engine=ENGINE)
    ref = xr.DataArray(np.asarray(PointerArray(store)), dims=("row", "dim_1"))
    np.testing.assert_array_equal(ds["data"].isel(key).values, ref.isel(key).values)


def test_vectorized_indexing(store: str) -> None:
    ds = xr.open_dataset(store, engine=ENGINE)
    ref = np.asarray(PointerArray(store))
    i = xr.DataArray([[1, 7], [30, 2]], dims=("a", "b"))
    j = xr.DataArray([[0, 3], [2, 1]], dims=("a", "b"))
    np.testing.assert_array_equal(ds["data"].isel(row=i, dim_1=j).values, ref[i.values, j.values])


def test_close_releases_every_descriptor_and_map(tmp_path: Any, store: str) -> None:
    gc.collect()
    before = open_fds()
    for kw in [{}, {"chunks": {}}, {"segments": "lazy"}]:
        ds = xr.open_dataset(store, engine=ENGINE, **kw)
        with dask.config.set(scheduler="threads"):
            total = float(ds["data"].sum().compute())
        assert np.isclose(total, float(np.asarray(PointerArray(store), "f8").sum()), rtol=1e-5)
        ds.bigarray.segment("utt0003")["data"].load()
        ds["data"].bigarray.segment("utt0004").load()
        assert ds["segment"].values[0] == "utt0000"
        ds.close()
        del ds
    gc.collect()
    # Compare what the new descriptors point at: other parts of a long test session (a
    # cluster's sockets, thread pools) may open descriptors of their own meanwhile.
    leaked = [fd_target(fd) for fd in open_fds() - before]
    assert not [t for t in leaked if t.startswith(str(store))], leaked
    assert store not in mapped_files()


# ------------------------------------------------------------------------------ chunks vs segments
def _edges(ds: xr.Dataset) -> set[int]:
    return {0, *ds["segment_start"].values.tolist(), *ds["segment_stop"].values.tolist()}


@pytest.mark.parametrize("chunks", [{}, "auto"])
def test_dask_chunk_boundaries_fall_on_segment_boundaries(tmp_path: Any, chunks: Any) -> None:
    rng = np.random.default_rng(1)
    segs = ragged(rng, 300, 1, 60, f=16)
    segs["long"] = rng.random((900, 16)).astype("f4")  # longer than the target: may be split
    segs.update(ragged(np.random.default_rng(2), 100, 1, 60, f=16) | {})
    segs = {f"s{i}": v for i, v in enumerate(segs.values())}
    path = seed_store(tmp_path / "c.bigarray", segs)
    target = 16 * 4 * 200  # 200 rows per chunk
    with dask.config.set({"array.chunk-size": target}):
        ds = xr.open_dataset(path, engine=ENGINE, chunks=chunks)
    sizes = ds["data"].chunks[0]
    assert len(sizes) > 10 and max(sizes) <= 200
    cuts = np.cumsum(sizes)[:-1].tolist()
    edges = _edges(ds)
    long = ds.sel(segment="s300")
    long_a, long_b = int(long.segment_start), int(long.segment_stop)
    inside_long = [c for c in cuts if long_a < c < long_b]
    assert len(inside_long) >= 4  # the long segment was split ...
    assert all(c in edges for c in cuts if c not in inside_long)  # ... every other cut on an edge
    assert ds["data"].encoding["preferred_chunks"]["row"] == sizes or chunks == "auto"
    np.testing.assert_array_equal(ds["data"].values, np.concatenate(list(segs.values())))


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 50), min_size=0, max_size=40),
    target_rows=st.integers(1, 80),
)
def test_segment_chunks_property(lengths: list[int], target_rows: int) -> None:
    stops = np.cumsum(lengths, dtype=np.int64)
    starts = stops - np.asarray(lengths, np.int64)
    rows = int(stops[-1]) if lengths else 0
    chunks = segment_chunks(np.stack([starts, stops], 1), rows, 8, 8 * target_rows)
    assert sum(chunks) == rows
    assert all(c > 0 for c in chunks) or rows == 0
    edges = {0, *starts.tolist(), *stops.tolist()}
    pos = 0
    for c in chunks:
        assert c <= target_rows
        end = pos + c
        if end not in edges:  # only a segment longer than the target is cut inside
            seg = np.flatnonzero((starts < end) & (stops > end))
            assert seg.size == 1 and lengths[int(seg[0])] > target_rows
        pos = end


# ------------------------------------------------------------------------------ pickling and dask
@pytest.mark.distributed
@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_pickled_dataset_computes_on_worker_processes(client: Any, store: str, dumps: Any) -> None:
    ref = np.asarray(PointerArray(store), "f8")
    for kw in [{"chunks": {}}, {}]:
        ds = xr.open_dataset(store, engine=ENGINE, **kw)
        blob = dumps(ds)
        assert len(blob) < 50_000  # by reference: paths and offsets, never the data
        back = pickle.loads(blob)
        lazy = back["data"] if kw else back["data"].chunk({"row": 100})
        assert np.isclose(float(lazy.sum().compute()), ref.sum(), rtol=1e-5)
        # the Dataset itself travels to a worker and reads there
        got = client.submit(lambda d: float(d["data"][5:9].sum()), back).result()
        assert np.isclose(got, ref[5:9].sum(), rtol=1e-5)
        back.close()
        ds.close()


@pytest.mark.distributed
def test_to_bigarray_from_dask_on_worker_processes(client: Any, tmp_path: Any) -> None:
    rng = np.random.default_rng(5)
    n = 5000
    bounds = np.linspace(0, n, 11).astype(int)
    src = xr.Dataset(
        {
            "x": (("row", "f"), rng.random((n, 3))),
            "t": ("row", np.arange(n).astype("M8[s]").astype("M8[ns]")),
        },
        coords={
            "segment": [f"s{i}" for i in range(10)],
            "segment_start": ("segment", bounds[:-1]),
            "segment_stop": ("segment", bounds[1:]),
        },
        attrs={"title": "dask"},
    )
    chunked = src.chunk({"row": 777, "f": 2})
    to_bigarray(chunked, tmp_path / "d.bigarray", fsync=False)
    back = xr.open_dataset(tmp_path / "d.bigarray", engine=ENGINE, chunks={})
    xr.testing.assert_identical(back.compute(), src)
    np.testing.assert_array_equal(
        PointerArray(str(tmp_path / "d.bigarray"), variable="x")[:], src.x.values
    )


@pytest.mark.distributed
def test_append_from_dask_on_worker_processes_is_one_commit(client: Any, tmp_path: Any) -> None:
    """Worker processes write the appended rows and a new variable's blocks straight into
    the data files; the calling process commits all of it once."""
    from bigarray.core.store import read_manifest
    from bigarray.core.verify import verify_store

    path = tmp_path / "a.bigarray"
    base = xr.Dataset({"x": (("row", "f"), np.ones((100, 3)))})
    to_bigarray(base, path)
    more = xr.Dataset({"x": (("row", "f"), np.arange(300.0).reshape(100, 3))}).chunk({"row": 17})
    to_bigarray(more, path, mode="a", append_dim="row", segments={"m": (0, 100)})
    to_bigarray(xr.Dataset({"y": ("row", np.arange(200.0))}).chunk({"row": 33}), path, mode="a")
    assert read_manifest(str(path)).generation == 3
    with xr.open_dataset(path, engine=ENGINE) as back:
        np.testing.assert_array_equal(back["x"].values, np.concatenate([base.x, more.x]))
        np.testing.assert_array_equal(back["y"].values, np.arange(200.0))
        assert back["segment"].values.tolist() == ["m"]
        assert back["segment_start"].values.tolist() == [100]
    report = verify_store(str(path))
    assert report.ok and not report.notes, str(report)


# ------------------------------------------------------------------------------ round trips
_DTYPES = ["f4", "f8", "i1", "i8", "u2", "b1", "c8", "M8[ns]", "m8[ns]", "M8[s]", "U3", "S4"]


@st.composite
def datasets(draw: Any) -> xr.Dataset:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.integers(1, 30))

    def values(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        dt = np.dtype(dtype)
        if dt.kind in "Mm":
            out = rng.integers(-(10**9), 10**9, shape).astype(dt)
            if out.size:
                out.reshape(-1)[0] = (
                    np.datetime64("NaT") if dt.kind == "M" else np.timedelta64("NaT")
                )
            return out
        if dt.kind == "U":
            return rng.choice(np.array(["", "a", "bé", "xyz"]), shape).astype(dt)
        if dt.kind == "S":
            return rng.choice(np.array([b"", b"ab", b"wxyz"]), shape).astype(dt)
        if dt.kind == "b":
            return rng.random(shape) > 0.5
        if dt.kind == "c":
            return (rng.random(shape) + 1j * rng.random(shape)).astype(dt)
        if dt.kind in "iu":
            return rng.integers(0, 100, shape).astype(dt)
        out = rng.standard_normal(shape).astype(dt)
        if out.size:
            out.reshape(-1)[-1] = np.nan
        return out

    attrs_st = st.dictionaries(
        st.sampled_from(["units", "long_name", "n", "scale", "flags", "nested", "nan"]),
        st.one_of(
            st.text(max_size=5),
            st.integers(-(2**40), 2**40),
            st.floats(allow_nan=False, width=64),
            st.lists(st.integers(0, 9), max_size=3),
            st.builds(lambda k: np.arange(k, dtype="f4") / 3, st.integers(0, 4)),
            st.just(float("nan")),
            st.just(np.int16(7)),
        ),
        max_size=3,
    )
    data_vars: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        dtype = draw(st.sampled_from(_DTYPES))
        trailing = draw(st.sampled_from([(), (2,), (3, 2)]))
        dims = ("row", *[f"d{i}_{k}" for k in range(len(trailing))])
        data_vars[f"v{i}"] = (dims, values(dtype, (rows, *trailing)), draw(attrs_st))
    coords: dict[str, Any] = {}
    if draw(st.booleans()):
        coords["time"] = ("row", values("M8[ns]", (rows,)), draw(attrs_st))
    if draw(st.booleans()):
        coords["label"] = ((), values("U3", ()))
    if draw(st.booleans()):
        coords["x"] = ("x", np.arange(draw(st.integers(1, 4))) * 1.5)
        data_vars["per_x"] = ("x", np.ones(coords["x"][1].shape, "i4"))
    if draw(st.booleans()):
        cuts = sorted(set(draw(st.lists(st.integers(0, rows), max_size=6))) | {0, rows})
        n = len(cuts) - 1
        names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=n, max_size=n, unique=True))
        coords["segment"] = np.array(names, dtype=object).astype(str) if n else np.zeros(0, "<U1")
        coords["segment_start"] = ("segment", np.array(cuts[:-1], np.int64))
        coords["segment_stop"] = ("segment", np.array(cuts[1:], np.int64))
        if n and draw(st.booleans()):
            data_vars["speaker"] = ("segment", rng.integers(0, 5, n))
    return xr.Dataset(data_vars, coords=coords, attrs=draw(attrs_st))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ds=datasets(), use_dask=st.booleans())
def test_write_reopen_identical(tmp_path: Any, ds: xr.Dataset, use_dask: bool) -> None:
    path = tmp_path / "rt.bigarray"
    src = ds.chunk({"row": 7}) if use_dask else ds
    with dask.config.set(scheduler="threads"):
        to_bigarray(src, path, mode="w", fsync=False)
    with xr.open_dataset(path, engine=ENGINE) as back:
        loaded = back.load()
    xr.testing.assert_identical(loaded, ds)
    for name, var in ds.variables.items():
        if name == "segment":  # names come from the index: '<U' as wide as the longest name
            assert loaded[name].dtype.kind == "U"
            continue
        assert loaded[name].dtype == var.dtype or var.dtype.kind == "O", name
    with xr.open_dataset(path, engine=ENGINE, chunks={}) as back:
        xr.testing.assert_identical(back.compute(), ds)


def test_datetimes_are_stored_natively_unless_their_encoding_asks_for_cf(tmp_path: Any) -> None:
    t = np.array(["2020-01-01T00:00:00.123456789", "NaT", "1970-01-01"], "M8[ns]")
    ds = xr.Dataset(
        {
            "t": ("row", t),
            "d": ("row", np.array([1, -2, 3], "m8[ms]").astype("m8[ns]")),
            "cf": ("row", t),
        }
    )
    ds["cf"].encoding = {"units": "days since 2000-01-01", "dtype": np.dtype("f8")}
    to_bigarray(ds, tmp_path / "t.bigarray")
    back = xr.open_dataset(tmp_path / "t.bigarray", engine=ENGINE)
    xr.testing.assert_identical(back[["t", "d"]].load(), ds[["t", "d"]])
    assert back["t"].dtype == np.dtype("M8[ns]") and "units" not in back["t"].attrs
    raw = PointerArray(str(tmp_path / "t.bigarray"), variable="t")
    assert raw.dtype == np.dtype("M8[ns]")  # stored natively, not CF-encoded numbers
    # an explicit CF encoding is applied by xarray's coders, as for any engine
    assert back["cf"].encoding["units"] == "days since 2000-01-01"
    assert back["cf"].encoding["dtype"] == np.dtype("f8")
    assert PointerArray(str(tmp_path / "t.bigarray"), variable="cf").dtype == np.dtype("f8")
    np.testing.assert_array_equal(back["cf"].values[1:], t[1:])


def test_to_bigarray_errors(tmp_path: Any, store: str) -> None:
    ds = xr.Dataset({"x": ("row", np.arange(10))})
    with pytest.raises(StoreExistsError, match="mode='w'"):
        to_bigarray(ds, store)
    with pytest.raises(BigArrayError, match="mode='x'; expected"):
        to_bigarray(ds, tmp_path / "m", mode="x")  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match=r"cannot serialize arbitrary Python objects"):
        to_bigarray(xr.Dataset({"o": ("row", np.array([{}, {}], object))}), tmp_path / "o")
    with pytest.raises(SchemaError, match="but not \\['segment_stop'\\]"):
        to_bigarray(ds.assign_coords(segment=["a"], segment_start=("segment", [0])), tmp_path / "s")
    with pytest.raises(OverlapError, match="overlap"):
        to_bigarray(ds, tmp_path / "ov", segments={"a": (0, 5), "b": (4, 8)})
    with pytest.raises(SchemaError, match=r"rows \[5, 11\).*10 rows"):
        to_bigarray(ds, tmp_path / "out", segments={"a": (5, 11)})
    with pytest.raises(SchemaError, match="names must be str"):
        to_bigarray(xr.Dataset({"x": ("row", [1])}, attrs={1: 2}), tmp_path / "k")  # type: ignore[dict-item]
    with pytest.raises(SchemaError, match="cannot be stored in a manifest"):
        to_bigarray(xr.Dataset({"x": ("row", [1])}, attrs={"f": print}), tmp_path / "f")


def test_explicit_segments_and_custom_row_dim(tmp_path: Any) -> None:
    ds = xr.Dataset({"x": (("frame", "f"), np.arange(20.0).reshape(10, 2))})
    to_bigarray(ds, tmp_path / "e.bigarray", segments={"b": (4, 10), "a": (0, 4)})
    back = xr.open_dataset(tmp_path / "e.bigarray", engine=ENGINE)
    assert list(back["segment"].values) == ["a", "b"]  # row order
    np.testing.assert_array_equal(back.bigarray.segment("b")["x"].values, ds.x.values[4:])
    assert PointerArray(str(tmp_path / "e.bigarray"), variable="x").indices["b"] == (4, 10)


# ------------------------------------------------------------------------------ standard keywords
def test_drop_variables(store: str) -> None:
    ds = xr.open_dataset(store, engine=ENGINE, drop_variables="segment_start")
    assert "segment_start" not in ds.variables and "segment_stop" in ds.coords
    ds = xr.open_dataset(store, engine=ENGINE, drop_variables=["data", "segment", "segment_stop"])
    assert set(ds.variables) == {"segment_start"}


def test_decode_cf_with_fill_value_and_scale(tmp_path: Any) -> None:
    raw = np.array([1, -1, 4, -1], "i2")
    ds = xr.Dataset({"v": ("row", raw, {"_FillValue": np.int16(-1), "scale_factor": 0.5})})
    to_bigarray(ds, tmp_path / "cf.bigarray")
    decoded = xr.open_dataset(tmp_path / "cf.bigarray", engine=ENGINE)
    np.testing.assert_array_equal(decoded["v"].values, [0.5, np.nan, 2.0, np.nan])
    assert "_FillValue" not in decoded["v"].attrs and decoded["v"].encoding["_FillValue"] == -1
    for kw in [{"mask_and_scale": False}, {"decode_cf": False}]:
        plain = xr.open_dataset(tmp_path / "cf.bigarray", engine=ENGINE, **kw)
        np.testing.assert_array_equal(plain["v"].values, raw)
        assert plain["v"].attrs["_FillValue"] == -1 and plain["v"].dtype == np.int16


def test_open_mfdataset_concatenates_stores_along_rows(tmp_path: Any) -> None:
    rng = np.random.default_rng(3)
    parts = [ragged(rng, k, f=3) for k in (5, 8, 3)]
    paths = [seed_store(tmp_path / f"p{i}.bigarray", p) for i, p in enumerate(parts)]
    ds = xr.open_mfdataset(paths, engine=ENGINE, combine="nested", concat_dim="row", segments=False)
    want = np.concatenate([np.concatenate(list(p.values())) for p in parts])
    assert len(ds["data"].chunks[0]) == 3  # one chunk per store: its preferred chunks
    np.testing.assert_array_equal(ds["data"].values, want)
    ds.close()


def test_open_mfdataset_helper_joins_segment_tables(tmp_path: Any) -> None:
    rng = np.random.default_rng(4)
    parts = [ragged(rng, k, f=3) for k in (5, 8, 3)]
    parts = [{f"p{i}_{n}": v for n, v in p.items()} for i, p in enumerate(parts)]
    paths = [seed_store(tmp_path / f"p{i}.bigarray", p) for i, p in enumerate(parts)]
    ds = open_mfdataset(paths, chunks={})
    every = {k: v for p in parts for k, v in p.items()}
    assert list(ds["segment"].values) == list(every)
    for name in ["p0_utt0000", "p1_utt0007", "p2_utt0002"]:
        np.testing.assert_array_equal(ds.bigarray.segment(name)["data"].values, every[name])
    assert ds["segment_start"].dtype == np.int64
    ds.close()
    with pytest.raises(BigArrayError, match="at least one store"):
        open_mfdataset([])


def test_lazy_segment_table(store: str) -> None:
    eager = xr.open_dataset(store, engine=ENGINE)
    lazy = xr.open_dataset(store, engine=ENGINE, segments="lazy", create_default_indexes=False)
    assert not lazy["segment"].variable._in_memory
    assert "segment" not in lazy.indexes
    for key in [slice(None), slice(3, 9), slice(None, None, -4), 7]:
        for name in ["segment", "segment_start", "segment_stop"]:
            np.testing.assert_array_equal(lazy[name][key].values, eager[name][key].values)
    xr.testing.assert_identical(lazy.set_xindex("segment").load(), eager.load())
    lazy.close()


def test_remote_memory_store(tmp_path: Any, store: str) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(store, "/xr-test/a.bigarray", recursive=True)
    try:
        ds = xr.open_dataset("memory://xr-test/a.bigarray", engine=ENGINE, chunks={})
        np.testing.assert_array_equal(ds["data"].values, np.asarray(PointerArray(store)))
        np.testing.assert_array_equal(
            ds.bigarray.segment("utt0002")["data"].values, PointerArray(store)["utt0002"]
        )
        ds.close()
    finally:
        fs.rm("/xr-test", recursive=True)


# ------------------------------------------------------------------------------ accessors
def test_dataset_accessor(store: str, segs: dict[str, np.ndarray], tmp_path: Any) -> None:
    ds = xr.open_dataset(store, engine=ENGINE)
    one = ds.bigarray.segment("utt0011")
    np.testing.assert_array_equal(one["data"].values, segs["utt0011"])
    assert one["segment"].item() == "utt0011"
    assert ds.bigarray.segment_names == list(segs)
    with pytest.raises(SegmentNotFoundError, match="no segment named 'nope' among 40"):
        ds.bigarray.segment("nope")
    with pytest.raises(KeyError):
        ds.bigarray.segment(3)  # type: ignore[arg-type]
    # an in-memory Dataset with a segment table works the same
    mem = ds.load()
    np.testing.assert_array_equal(mem.bigarray.segment("utt0039")["data"].values, segs["utt0039"])
    ds.bigarray.to_bigarray(tmp_path / "copy.bigarray")
    xr.testing.assert_identical(
        xr.open_dataset(tmp_path / "copy.bigarray", engine=ENGINE).load(), mem
    )
    with pytest.raises(SegmentNotFoundError, match="was not opened from a store"):
        xr.Dataset({"data": ("row", [1, 2])}).bigarray.segment("a")


def test_dataarray_accessor(store: str, segs: dict[str, np.ndarray], tmp_path: Any) -> None:
    da_ = xr.open_dataset(store, engine=ENGINE)["data"]
    np.testing.assert_array_equal(da_.bigarray.segment("utt0005").values, segs["utt0005"])
    with pytest.raises(SegmentNotFoundError, match="Select segments before cutting rows"):
        da_[3:].bigarray.segment("utt0005")
    with pytest.raises(SegmentNotFoundError, match="no segment named 'zz'"):
        da_.bigarray.segment("zz")
    da_.bigarray.to_bigarray(tmp_path / "da.bigarray")
    back = xr.open_dataset(tmp_path / "da.bigarray", engine=ENGINE)
    np.testing.assert_array_equal(back["data"].values, da_.values)


def test_dask_write_chunks_in_a_thread_pool_from_numpy_to_dask(tmp_path: Any) -> None:
    x = da.random.default_rng(0).random((1000, 5), chunks=(123, 2))
    ds = xr.Dataset({"x": (("row", "f"), x)})
    with dask.config.set(scheduler="threads"):
        to_bigarray(ds, tmp_path / "th.bigarray")
    back = xr.open_dataset(tmp_path / "th.bigarray", engine=ENGINE)
    np.testing.assert_array_equal(back["x"].values, x.compute())


@pytest.mark.distributed
def test_benchmark_smoke(tmp_path: Any) -> None:
    from benchmarks import bench_xarray

    results = bench_xarray.run("smoke", repeat=1, workdir=tmp_path)
    by = {(r["case"], r["system"]): r for r in results}
    assert {s for c, s in by if c == "xr-sum"} == {"zarr", "bigarray", "bigarray-32MiB"}
    assert all(r["median_s"] > 0 for r in results)
    assert by[("xr-sum", "zarr")]["ratio_vs_zarr"] == 1.0
    assert "xr-open-1M" in bench_xarray.format_table(results)
    for case in ("xr-packed-write", "xr-packed-read"):
        assert {s for c, s in by if c == case} >= {"zarr", "bigarray"}
        assert by[(case, "zarr")]["ratio_vs_zarr"] == 1.0


@pytest.mark.parametrize("chunks", [{}, None])
def test_a_dataset_open_across_a_replacement_says_reopen_it(tmp_path: Path, chunks: Any) -> None:
    """A Dataset opened (lazily, or through dask) before its store was replaced never
    reads the new store's values as its own: it raises StoreChangedError; an append to
    the store it opened is no replacement and reads on."""
    import dask.array as dsa

    from bigarray import PointerArrayWriter
    from bigarray.dask_backend import to_bigarray as dask_to_bigarray
    from bigarray.errors import StoreChangedError

    path = str(tmp_path / "x.bigarray")
    with PointerArrayWriter(path, shape=(None, 4), dtype="f8") as w:
        w.write({"a": np.ones((100, 4)), "b": np.ones((100, 4))})
    ds = xr.open_dataset(path, engine="bigarray", chunks=chunks, cache=False)
    with PointerArrayWriter(path) as w:  # an append: the opened rows are unchanged
        w.write({"c": np.full((10, 4), 5.0)})
    assert float(ds["data"].sum()) == 800.0
    dask_to_bigarray(
        dsa.full((200, 4), 7.0, chunks=(100, 4)),
        path,
        segments=[("a", 100), ("b", 100)],
        remove_exist=True,
    )
    with pytest.raises(StoreChangedError, match="reopen it"):
        float(ds["data"].sum())
    ds = xr.open_dataset(path, engine="bigarray", chunks=chunks, cache=False)
    to_bigarray(xr.Dataset({"data": (("row", "f"), np.zeros((300, 4)))}), path, mode="w")
    with pytest.raises(StoreChangedError, match="reopen it"):
        float(ds["data"].sum())
