"""Tests for bigarray.convert: every source format round-trips values, dtype, segment names
and bounds; bigarray goes out to zarr and netCDF and back; bad input fails clearly."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from legacy_files import write_legacy_mmap, write_legacy_pointer

import bigarray.convert as conv
from bigarray import PointerArray, PointerArrayWriter, Store
from bigarray.errors import (
    FormatError,
    SchemaError,
    StoreExistsError,
    StoreNotFoundError,
    VariableNotFoundError,
)

h5py = pytest.importorskip("h5py")
zarr = pytest.importorskip("zarr")


def _xarray_ready() -> bool:
    try:
        import bigarray.xarray_backend as xb
    except ImportError:
        return False
    return hasattr(xb, "to_bigarray")


needs_xarray_backend = pytest.mark.skipif(
    not _xarray_ready(), reason="bigarray.xarray_backend.to_bigarray is not available yet"
)

SEGMENTS = {
    "utt-b": np.arange(12, dtype="float32").reshape(4, 3),
    "utt-a": np.arange(6, dtype="float32").reshape(2, 3) + 100,
    "empty": np.zeros((0, 3), "float32"),
    "utt-c": np.full((5, 3), -1.5, "float32"),
}


def _stored(path: os.PathLike[str] | str) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    x = PointerArray(str(path))
    return np.array(x), {k: tuple(map(int, v)) for k, v in x.indices.items()}


def _assert_segments(path: os.PathLike[str] | str, segments: dict[str, np.ndarray]) -> None:
    """Segments in the given order, back to back from row 0, with their values and dtype."""
    data, index = _stored(path)
    pos = 0
    expected = {}
    for name, a in segments.items():
        expected[name] = (pos, pos + len(a))
        pos += len(a)
    assert index == expected
    assert data.shape[0] == pos
    for name, a in segments.items():
        start, stop = index[name]
        assert data.dtype == a.dtype
        np.testing.assert_array_equal(data[start:stop], a)


def _assert_unnamed(path: os.PathLike[str] | str, expected: np.ndarray) -> None:
    data, index = _stored(path)
    assert index == {}
    assert data.dtype == expected.dtype.newbyteorder("<") or data.dtype == expected.dtype
    np.testing.assert_array_equal(data, expected)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Blocks of 256 bytes: every source is streamed in many blocks, segments included."""
    monkeypatch.setattr(conv, "BLOCK_BYTES", 256)
    return 256


# --------------------------------------------------------------------------- detection
def test_detect_formats(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    np.savez(tmp_path / "a.npz", x=np.arange(3))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = np.arange(3)
    zarr.create_array(str(tmp_path / "a3.zarr"), shape=(3,), dtype="i4", zarr_format=3)
    zarr.create_array(str(tmp_path / "a2.zarr"), shape=(3,), dtype="i4", zarr_format=2)
    with PointerArrayWriter(tmp_path / "s", dtype="f4") as w:
        w.write({"a": np.zeros((1, 2))})
    (tmp_path / "legacy.dat").write_bytes(b"mmapdata" + b"       2" + b"xx")
    expected = {
        "a.npy": "npy",
        "a.npz": "npz",
        "a.h5": "hdf5",
        "a3.zarr": "zarr",
        "a2.zarr": "zarr",
        "s": "bigarray",
        "legacy.dat": "legacy",
    }
    assert {n: conv.detect_format(tmp_path / n) for n in expected} == expected
    assert conv.detect_format(f"{tmp_path / 'a.h5'}:/x") == "hdf5"


def test_detect_netcdf(tmp_path):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"v": (("t",), np.arange(4.0))})
    ds.to_netcdf(tmp_path / "a.nc", engine="h5netcdf")
    os.replace(tmp_path / "a.nc", tmp_path / "renamed.h5")  # no extension hint left
    assert conv.detect_format(tmp_path / "renamed.h5") == "netcdf"


def test_detect_unknown(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"hello world")
    with pytest.raises(FormatError, match=r"cannot tell the format of .*junk\.bin.*b'hello wo'"):
        conv.detect_format(tmp_path / "junk.bin")
    (tmp_path / "dir").mkdir()
    with pytest.raises(FormatError, match=r"neither a bigarray manifest\.json nor zarr metadata"):
        conv.convert(tmp_path / "dir", tmp_path / "out")
    with pytest.raises(StoreNotFoundError, match="no such file or directory"):
        conv.convert(tmp_path / "missing.npy", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_split_source(tmp_path):
    f = tmp_path / "a.h5"
    f.write_bytes(b"")
    assert conv.split_source(f"{f}:/g/d") == (str(f), "/g/d")
    assert conv.split_source(str(f)) == (str(f), None)
    assert conv.split_source(f"{tmp_path}/nope:/g") == (f"{tmp_path}/nope:/g", None)


# --------------------------------------------------------------------------- npy / npz
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_round_trip(tmp_path, small_blocks, order):
    a = np.asarray(np.arange(300, dtype="int16").reshape(100, 3), order=order)
    np.save(tmp_path / "a.npy", a)
    assert conv.convert(tmp_path / "a.npy", tmp_path / "s") == "npy"
    _assert_unnamed(tmp_path / "s", a)


def test_npy_big_endian_and_strings(tmp_path):
    a = np.arange(10, dtype=">f8")
    np.save(tmp_path / "be.npy", a)
    conv.convert(tmp_path / "be.npy", tmp_path / "s1")
    data, _ = _stored(tmp_path / "s1")
    assert data.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(data, a)
    s = np.array(["a", "bcd", "ef"], dtype="U3")
    np.save(tmp_path / "s.npy", s)
    conv.convert(tmp_path / "s.npy", tmp_path / "s2")
    _assert_unnamed(tmp_path / "s2", s)


def test_npz_round_trip(tmp_path, small_blocks):
    np.savez_compressed(tmp_path / "a.npz", **SEGMENTS)
    assert conv.convert(tmp_path / "a.npz", tmp_path / "s", progress=True) == "npz"
    _assert_segments(tmp_path / "s", SEGMENTS)  # archive (keyword) order


def test_npz_uncompressed_many_small(tmp_path):
    segs = {f"k{i:03d}": np.full((i % 4, 2), i, "int64") for i in range(200)}
    np.savez(tmp_path / "a.npz", **segs)
    conv.convert(tmp_path / "a.npz", tmp_path / "s")
    _assert_segments(tmp_path / "s", segs)


def test_npz_variable(tmp_path):
    np.savez(tmp_path / "a.npz", **SEGMENTS)
    conv.convert(tmp_path / "a.npz", tmp_path / "s", variable="utt-c")
    _assert_unnamed(tmp_path / "s", SEGMENTS["utt-c"])
    conv.convert(f"{tmp_path / 'a.npz'}:utt-a", tmp_path / "s2")
    _assert_unnamed(tmp_path / "s2", SEGMENTS["utt-a"])
    with pytest.raises(VariableNotFoundError, match=r"no array 'nope'.*'utt-a'"):
        conv.convert(tmp_path / "a.npz", tmp_path / "s3", variable="nope")


def test_npz_object_refused(tmp_path):
    np.savez(tmp_path / "o.npz", ok=np.arange(3), bad=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(SchemaError, match=r"array 'bad' .* holds Python objects .*pickle"):
        conv.convert(tmp_path / "o.npz", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    np.save(tmp_path / "o.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(SchemaError, match="holds Python objects"):
        conv.convert(tmp_path / "o.npy", tmp_path / "s")


def test_npz_mismatched(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 3), "f4"), b=np.zeros((2, 3), "f8"))
    with pytest.raises(SchemaError, match=r"'b' has dtype float64 but 'a' has float32"):
        conv.convert(tmp_path / "d.npz", tmp_path / "s")
    np.savez(tmp_path / "s.npz", a=np.zeros((2, 3)), b=np.zeros((2, 4)))
    with pytest.raises(SchemaError, match=r"'b' has shape \(2, 4\).*rows of shape \(3,\)"):
        conv.convert(tmp_path / "s.npz", tmp_path / "s")
    np.savez(tmp_path / "z.npz", a=np.float64(1.0))
    with pytest.raises(SchemaError, match="is a scalar"):
        conv.convert(tmp_path / "z.npz", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_npz_truncated(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(1000, dtype="int64"))
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        raw = zf.read("x.npy")
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as zf:
        zf.writestr("x.npy", raw[:-800])  # header says 1000 rows, 900 are there
    with pytest.raises(FormatError, match=r"member 'x.npy' is truncated at row"):
        conv.convert(tmp_path / "t.npz", tmp_path / "s")
    assert not (tmp_path / "s").exists()  # the half-written store is removed


# --------------------------------------------------------------------------- HDF5
def test_hdf5_dataset_round_trip(tmp_path, small_blocks):
    a = np.random.default_rng(0).standard_normal((500, 4)).astype("float32")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("g/x", data=a, chunks=(7, 4), compression="gzip")
    assert conv.convert(f"{tmp_path / 'a.h5'}:/g/x", tmp_path / "s", progress=True) == "hdf5"
    _assert_unnamed(tmp_path / "s", a)
    conv.convert(tmp_path / "a.h5", tmp_path / "s2", variable="g/x")
    _assert_unnamed(tmp_path / "s2", a)


@pytest.mark.parametrize("track_order", [False, True])
def test_hdf5_group_round_trip(tmp_path, small_blocks, track_order):
    with h5py.File(tmp_path / "a.h5", "w", track_order=track_order) as f:
        g = f.create_group("train", track_order=track_order)
        for name, a in SEGMENTS.items():
            g.create_dataset(name, data=a, maxshape=(None, 3))
    conv.convert(f"{tmp_path / 'a.h5'}:/train", tmp_path / "s")
    order = list(SEGMENTS) if track_order else sorted(SEGMENTS)
    _assert_segments(tmp_path / "s", {k: SEGMENTS[k] for k in order})


def test_hdf5_large_segment_in_blocks(tmp_path, small_blocks):
    """A segment much larger than a block is streamed in pieces and named once."""
    big = np.arange(3000, dtype="int32").reshape(1000, 3)
    small = np.ones((2, 3), "int32")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["a_small"] = small
        f["b_big"] = big
        f["c_small"] = small * 2
    conv.convert(tmp_path / "a.h5", tmp_path / "s")
    _assert_segments(tmp_path / "s", {"a_small": small, "b_big": big, "c_small": small * 2})


def test_hdf5_errors(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["mixed/a"] = np.zeros((2, 3), "f4")
        f["mixed/b"] = np.zeros((2, 3), "i8")
        f["shape/a"] = np.zeros((2, 3))
        f["shape/b"] = np.zeros((2, 5))
        f["nested/a"] = np.zeros(2)
        f["nested/sub/b"] = np.zeros(2)
        f["vlen"] = np.array(["a", "bb"], dtype=h5py.string_dtype())
        f["scalar"] = 1.0
    src = tmp_path / "a.h5"
    with pytest.raises(SchemaError, match=r"'b' has dtype int64 but 'a' has float32"):
        conv.convert(f"{src}:/mixed", tmp_path / "s")
    with pytest.raises(SchemaError, match=r"'b' has shape \(2, 5\)"):
        conv.convert(f"{src}:/shape", tmp_path / "s")
    with pytest.raises(SchemaError, match=r"holds groups \['sub'\] besides datasets"):
        conv.convert(f"{src}:/nested", tmp_path / "s")
    with pytest.raises(SchemaError, match="holds Python objects"):
        conv.convert(f"{src}:/vlen", tmp_path / "s")
    with pytest.raises(SchemaError, match="is a scalar"):
        conv.convert(f"{src}:/scalar", tmp_path / "s")
    with pytest.raises(VariableNotFoundError, match=r"no dataset or group 'nope'"):
        conv.convert(src, tmp_path / "s", variable="nope")
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- zarr
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_round_trip(tmp_path, small_blocks, zarr_format):
    a = np.arange(600, dtype="uint16").reshape(200, 3)
    z = zarr.create_array(
        str(tmp_path / "a.zarr"),
        shape=a.shape,
        chunks=(9, 3),
        dtype=a.dtype,
        zarr_format=zarr_format,
    )
    z[:] = a
    assert conv.convert(tmp_path / "a.zarr", tmp_path / "s", progress=True) == "zarr"
    _assert_unnamed(tmp_path / "s", a)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_round_trip(tmp_path, small_blocks, zarr_format):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    for name, a in SEGMENTS.items():
        z = g.create_array(name, shape=a.shape, chunks=(2, 3), dtype=a.dtype)
        if a.size:
            z[:] = a
    conv.convert(tmp_path / "g.zarr", tmp_path / "s")
    _assert_segments(tmp_path / "s", {k: SEGMENTS[k] for k in sorted(SEGMENTS)})
    conv.convert(f"{tmp_path / 'g.zarr'}:utt-b", tmp_path / "s2")
    _assert_unnamed(tmp_path / "s2", SEGMENTS["utt-b"])
    with pytest.raises(VariableNotFoundError, match=r"no array or group 'nope'"):
        conv.convert(tmp_path / "g.zarr", tmp_path / "s3", variable="nope")


def test_zarr_group_mismatched(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("a", shape=(2, 3), dtype="f4")
    g.create_array("b", shape=(2, 4), dtype="f4")
    with pytest.raises(SchemaError, match=r"'b' has shape \(2, 4\) but 'a' has \(2, 3\)"):
        conv.convert(tmp_path / "g.zarr", tmp_path / "s")
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- legacy
def test_legacy_round_trip(tmp_path):
    segs = {"x": np.arange(6, dtype="float32").reshape(3, 2), "y": np.ones((2, 2), "float32")}
    data = np.concatenate(list(segs.values()))
    write_legacy_pointer(tmp_path / "pointer.dat", data, {"x": (0, 3), "y": (3, 5)})
    assert conv.convert(tmp_path / "pointer.dat", tmp_path / "s", progress=True) == "legacy"
    _assert_segments(tmp_path / "s", segs)
    write_legacy_mmap(tmp_path / "mmap.dat", data)
    conv.convert(tmp_path / "mmap.dat", tmp_path / "s2")
    _assert_unnamed(tmp_path / "s2", data)
    with pytest.raises(FormatError, match="holds one array; drop variable='x'"):
        conv.convert(tmp_path / "mmap.dat", tmp_path / "s3", variable="x")


# --------------------------------------------------------------------------- streaming
def test_blocks_are_bounded(tmp_path, small_blocks):
    """No read or write holds more than one block: big segments come in pieces, small
    ones are batched, and the rows land in order under their names."""
    seen: list[int] = []

    def part(name: str, a: np.ndarray) -> conv._Part:
        def blocks(step: int):
            for i in range(0, len(a), step):
                seen.append(min(step, len(a) - i))
                yield a[i : i + step]

        return conv._Part(name, len(a), blocks)

    segs = {f"s{i}": np.full((n, 4), i, "float64") for i, n in enumerate([1, 200, 3, 0, 57])}
    conv._write_parts(
        [part(k, v) for k, v in segs.items()],
        str(tmp_path / "s"),
        dtype="float64",
        trailing=(4,),
        named=True,
        remove_exist=False,
        progress=False,
        desc="t",
    )
    assert max(seen) * 4 * 8 <= small_blocks
    assert len(seen) >= 200 * 32 // small_blocks
    _assert_segments(tmp_path / "s", segs)


def test_progress_bar_is_drawn(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.arange(50))
    conv.convert(tmp_path / "a.npy", tmp_path / "s", progress=True)
    err = capsys.readouterr().err
    assert "a.npy" in err
    assert "50/50" in err
    conv.convert(tmp_path / "a.npy", tmp_path / "s2")
    assert capsys.readouterr().err == ""


def test_single_array_sources_refuse_inner(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(5))
    with pytest.raises(FormatError, match=r"a \.npy file holds one array; drop variable='x'"):
        conv.convert(f"{tmp_path / 'a.npy'}:x", tmp_path / "s")
    with pytest.raises(FormatError, match=r"holds one array; drop variable='y'"):
        conv.convert(tmp_path / "a.npy", tmp_path / "s", variable="y")


def test_netcdf_classic_needs_scipy(tmp_path):
    try:
        import scipy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("scipy is installed: classic netCDF is readable")
    (tmp_path / "c.nc").write_bytes(b"CDF\x01" + bytes(60))
    assert conv.detect_format(tmp_path / "c.nc") == "netcdf"
    with pytest.raises(FormatError, match=r"classic \(netCDF-3\) file; reading it needs scipy"):
        conv.convert(tmp_path / "c.nc", tmp_path / "s")


# --------------------------------------------------------------------------- dst handling
def test_existing_destination(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(5))
    np.save(tmp_path / "b.npy", np.arange(7))
    conv.convert(tmp_path / "a.npy", tmp_path / "s")
    with pytest.raises(StoreExistsError, match="already exists; pass remove_exist=True"):
        conv.convert(tmp_path / "b.npy", tmp_path / "s")
    _assert_unnamed(tmp_path / "s", np.arange(5))  # untouched
    conv.convert(tmp_path / "b.npy", tmp_path / "s", remove_exist=True)
    _assert_unnamed(tmp_path / "s", np.arange(7))


def test_bad_output_choice(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(5))
    with pytest.raises(FormatError, match=r"unknown output format to='parquet'"):
        conv.convert(tmp_path / "a.npy", tmp_path / "s", to="parquet")
    with pytest.raises(FormatError, match="cannot convert a npy source straight to zarr"):
        conv.convert(tmp_path / "a.npy", tmp_path / "s.zarr", to="zarr")
    conv.convert(tmp_path / "a.npy", tmp_path / "s")
    with pytest.raises(FormatError, match=r"cannot tell which format to write.*\*\.zarr"):
        conv.convert(tmp_path / "s", tmp_path / "out")
    with pytest.raises(FormatError, match="already a bigarray store"):
        conv.convert(tmp_path / "s", tmp_path / "out", to="bigarray")


def test_empty_source(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 4), "f4"))
    conv.convert(tmp_path / "e.npy", tmp_path / "s")
    with Store(str(tmp_path / "s")) as store:
        var = store.variable("data")
        assert var.shape == (0, 4)
        assert var.dtype == np.dtype("f4")


# --------------------------------------------------------------------------- xarray paths
def _make_store(path: os.PathLike[str]) -> None:
    with PointerArrayWriter(path, dtype="float32") as w:
        w.write({k: v for k, v in SEGMENTS.items()})


@needs_xarray_backend
# zarr 3 notes that fixed-width unicode (the segment names) has no v3 spec yet
@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")
@pytest.mark.parametrize("out", ["zarr", "nc"])
def test_store_out_and_back(tmp_path, out):
    xr = pytest.importorskip("xarray")
    src = tmp_path / "s"
    _make_store(src)
    dst = tmp_path / f"out.{out}"
    assert conv.convert(src, dst, progress=True) == "bigarray"
    with xr.open_dataset(src, engine="bigarray") as want:
        opened = xr.open_zarr(dst) if out == "zarr" else xr.open_dataset(dst, engine="h5netcdf")
        with opened as got:
            xr.testing.assert_identical(got.load(), want.load())
    assert conv.detect_format(dst) == ("zarr" if out == "zarr" else "netcdf")
    back = tmp_path / "back"
    assert conv.convert(dst, back) == ("zarr" if out == "zarr" else "netcdf")
    _assert_segments(back, SEGMENTS)
    with pytest.raises(StoreExistsError, match="already exists"):
        conv.convert(src, dst)
    conv.convert(src, dst, remove_exist=True, to="zarr" if out == "zarr" else "netcdf")


@needs_xarray_backend
def test_netcdf_variable(tmp_path):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset(
        {"a": (("row", "col"), np.arange(12.0).reshape(4, 3)), "b": (("row",), np.arange(4))}
    )
    ds.to_netcdf(tmp_path / "in.nc", engine="h5netcdf")
    conv.convert(tmp_path / "in.nc", tmp_path / "s", variable="a", progress=True)
    with xr.open_dataset(tmp_path / "s", engine="bigarray") as got:
        assert "b" not in got.data_vars
        np.testing.assert_array_equal(got["a"].values, ds["a"].values)
    with pytest.raises(VariableNotFoundError, match=r"no variable 'nope'"):
        conv.convert(tmp_path / "in.nc", tmp_path / "s2", variable="nope")


# --------------------------------------------------------------------------- replacing
def test_netcdf_export_replaces_a_netcdf_file_only_never_any_hdf5_file(tmp_path):
    """--remove-exist replaces a netCDF file (netCDF-4 with _NCProperties, or a classic
    header), never another HDF5 file (model weights) nor a file that only starts with a
    netCDF magic."""
    from bigarray.errors import NotAStoreError

    src = tmp_path / "s"
    _make_store(src)
    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as f:
        f["weights"] = np.arange(10)
        f.attrs["keras_version"] = "3.0"
    cdf_text = tmp_path / "notes.nc"
    cdf_text.write_bytes(b"CDF\x01 is the magic of netCDF classic files\n")
    for mine in (model, cdf_text):
        assert not conv._is_netcdf(str(mine))
        with pytest.raises(NotAStoreError, match="refusing to replace it"):
            conv.convert(src, mine, to="netcdf", remove_exist=True)
    with h5py.File(model) as f:
        assert list(f) == ["weights"]
    assert cdf_text.read_bytes().startswith(b"CDF\x01 is")
    classic = tmp_path / "empty.nc"  # a whole classic file: no records, dims, attrs, vars
    classic.write_bytes(b"CDF\x01" + bytes(4) + bytes(24))
    assert conv._is_netcdf(str(classic))
    netcdf4 = tmp_path / "old.nc"
    with h5py.File(netcdf4, "w") as f:  # what netCDF-C writes at the root
        f.attrs["_NCProperties"] = np.bytes_(b"version=2,netcdf=4.9.2,hdf5=1.14.3")
    assert conv._is_netcdf(str(netcdf4))


@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")
@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_export_replaces_a_directory_of_zarr_files_only(tmp_path, zarr_format):
    """A zarr group written by xarray (v2 or v3) is replaceable; the same group with a file
    of the user's anywhere in it, or a bare zarr.json beside the user's files, is not."""
    import json
    import shutil

    from bigarray.errors import NotAStoreError

    xr = pytest.importorskip("xarray")
    ds = xr.Dataset(
        {"x": (("row", "c"), np.ones((5, 2))), "n": ("row", np.arange(5))},
        coords={"row": np.arange(5)},
    )
    good = tmp_path / "good.zarr"
    ds.to_zarr(good, mode="w-", zarr_format=zarr_format)
    assert conv._is_zarr(str(good))
    for extra in ("README.txt", "x/notes.txt", "x/c.backup"):
        bad = tmp_path / f"bad-{extra.replace('/', '_')}.zarr"
        shutil.copytree(good, bad)
        (bad / extra).write_text("mine")
        assert not conv._is_zarr(str(bad)), extra
    proj = tmp_path / "proj.zarr"
    (proj / "raw").mkdir(parents=True)
    (proj / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    (proj / "raw" / "take1.wav").write_text("audio")
    (proj / "README.txt").write_text("mine")
    if _xarray_ready():
        src = tmp_path / "s"
        _make_store(src)
        with pytest.raises(NotAStoreError, match="refusing to replace it"):
            conv.convert(src, proj, remove_exist=True)
    assert sorted(os.listdir(proj)) == ["README.txt", "raw", "zarr.json"]
