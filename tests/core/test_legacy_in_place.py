"""Files of the 2020 library opened read-only in place, through every reader.

The files are built byte for byte in the 2020 layout (tests/legacy_files.py), for both writer
kinds (PointerArrayWriter: data plus a pickled index; MmapArrayWriter: data only), several
dtypes and row shapes. Hostile and damaged files are in test_hostile.py and test_fuzz.py.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from legacy_files import append_index, data_offset, write_legacy_mmap, write_legacy_pointer

import bigarray
from bigarray import MmapArray, MmapArrayWriter, PointerArray, PointerArrayWriter
from bigarray.cli import main as cli_main
from bigarray.errors import ReadOnlyError, SchemaError, SegmentNotFoundError

KINDS = ["pointer", "mmap"]
DTYPES = ["float32", "float64", "int16", "uint8", "bool", "complex64", "<U5"]
ROW_SHAPES = [(), (3,), (2, 3)]
# row order differs from insertion order, one segment is empty, one name is not ASCII
SEGMENTS = {"b": (4, 11), "a": (0, 4), "empty": (11, 11), "名前": (11, 20)}
ROW_ORDER = ["a", "b", "empty", "名前"]


def sample(dtype: str, row_shape: tuple[int, ...], rows: int = 20) -> np.ndarray:
    shape = (rows, *row_shape)
    values = np.arange(int(np.prod(shape))).reshape(shape)
    if np.dtype(dtype).kind in "US":
        return values.astype(str).astype(dtype)
    return (values % 2 if dtype == "bool" else values).astype(dtype)


def write_2020(path: Path, kind: str, data: np.ndarray) -> Path:
    if kind == "pointer":
        write_legacy_pointer(path, data, SEGMENTS)
    else:
        write_legacy_mmap(path, data)
    return path


# --------------------------------------------------------------------------- seed arrays


@pytest.mark.parametrize("row_shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_seed_arrays_map_the_2020_file_in_place(
    tmp_path: Path, kind: str, dtype: str, row_shape: tuple[int, ...]
) -> None:
    data = sample(dtype, row_shape)
    path = write_2020(tmp_path / "features.arr", kind, data)
    for cls in (PointerArray, MmapArray):
        x = cls(path)
        assert type(x) is cls and x.dtype == data.dtype and x.shape == data.shape
        np.testing.assert_array_equal(x, data)
        # the data is mapped where it lies in the file: no copy
        assert os.path.samefile(x.filename, path) and x.offset == data_offset(dtype)
        assert not x.flags.writeable
        np.testing.assert_array_equal(x[2:7], data[2:7])
        if data.dtype.kind != "U":
            assert np.sum(x) == data.sum()
        # pickles by reference (the path), never by value
        blob = pickle.dumps(x[2:7])
        assert os.fsencode(str(path.name)) in blob
        np.testing.assert_array_equal(pickle.loads(blob), data[2:7])
    x = PointerArray(path)
    if kind == "mmap":
        assert len(x.indices) == 0
        with pytest.raises(SegmentNotFoundError):
            x["a"]
        return
    assert len(x.indices) == 4 and list(x.indices) == ROW_ORDER
    assert list(x.indices.items()) == [(n, SEGMENTS[n]) for n in ROW_ORDER]
    for name, (start, stop) in SEGMENTS.items():
        assert x.indices[name] == (start, stop)
        np.testing.assert_array_equal(x[name], data[start:stop])
        np.testing.assert_array_equal(x[np.str_(name)], data[start:stop])
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(x[name])), data[start:stop])
    with pytest.raises(SegmentNotFoundError, match="no segment named 'nope' among 4"):
        x["nope"]


def _read_in_worker(x: np.ndarray) -> tuple[str, np.ndarray]:
    return type(x).__name__, np.array(x)


def _segment_in_worker(job: tuple[PointerArray, str]) -> np.ndarray:
    x, name = job
    return np.array(x[name])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_read_a_2020_file_by_reference(tmp_path: Path, method: str) -> None:
    data = sample("float32", (3,))
    path = write_2020(tmp_path / "features.arr", "pointer", data)
    x, m = PointerArray(path), MmapArray(path)
    with multiprocessing.get_context(method).Pool(2) as pool:
        got = pool.map(_read_in_worker, [x, x[4:11], m, m[::3]])
        segs = pool.map(_segment_in_worker, [(x, n) for n in SEGMENTS])
    assert [t for t, _ in got] == ["PointerArray", "PointerArray", "MmapArray", "ndarray"]
    for (_, a), want in zip(got, [data, data[4:11], data, data[::3]], strict=True):
        np.testing.assert_array_equal(a, want)
    for a, (start, stop) in zip(segs, SEGMENTS.values(), strict=True):
        np.testing.assert_array_equal(a, data[start:stop])


@pytest.mark.parametrize("kind", KINDS)
def test_writing_into_a_2020_file_is_refused_with_how_to_convert(tmp_path: Path, kind: str) -> None:
    path = write_2020(tmp_path / "features.arr", kind, sample("float32", (3,)))
    before = path.read_bytes()
    x = PointerArray(path)
    with pytest.raises(ReadOnlyError, match="2020 bigarray.*`bigarray convert .*features.arr"):
        x[0] = 1
    with pytest.raises(ReadOnlyError, match="2020"):
        MmapArray(path, mode="r+")
    with pytest.raises(
        ReadOnlyError, match="2020 bigarray.*`bigarray convert .*features.bigarray`"
    ):
        PointerArrayWriter(path, dtype="float32")
    with pytest.raises(ReadOnlyError, match="bigarray convert"):
        MmapArrayWriter(str(path), shape=(None, 3), dtype="float32")
    assert path.read_bytes() == before
    np.testing.assert_array_equal(PointerArray(path), sample("float32", (3,)))


# --------------------------------------------------------------------------- lazy and dask


@pytest.mark.parametrize("row_shape", [(), (2, 3)], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "int16", "bool"])
@pytest.mark.parametrize("kind", KINDS)
def test_open_dask_and_map_segments_read_a_2020_file(
    tmp_path: Path, kind: str, dtype: str, row_shape: tuple[int, ...]
) -> None:
    from bigarray.dask_backend import from_bigarray, map_segments

    data = sample(dtype, row_shape)
    path = write_2020(tmp_path / "features.arr", kind, data)
    h = bigarray.open(path)
    assert h.shape == data.shape and h.dtype == data.dtype
    np.testing.assert_array_equal(np.asarray(h[3:15]), data[3:15])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(h))[:], data)
    d = from_bigarray(str(path))
    np.testing.assert_array_equal(d.compute(scheduler="sync"), data)
    np.testing.assert_array_equal(PointerArray(path).to_dask().compute(scheduler="sync"), data)
    if kind == "mmap":
        with pytest.raises(SchemaError, match="no named segments"):
            map_segments(len, str(path))
        return
    assert from_bigarray(str(path), chunks="segments").chunks[0] == (4, 7, 9)
    got = dict(map_segments(lambda s: np.array(s), str(path)).compute(scheduler="sync"))
    assert sorted(got) == sorted(SEGMENTS)
    for name, (start, stop) in SEGMENTS.items():
        np.testing.assert_array_equal(got[name], data[start:stop])
    lengths = map_segments(len, str(path), dtype="i8").compute(scheduler="sync")
    assert lengths.tolist() == [SEGMENTS[n][1] - SEGMENTS[n][0] for n in ROW_ORDER]


def test_dask_processes_read_a_2020_file(tmp_path: Path) -> None:
    from bigarray.dask_backend import from_bigarray

    data = sample("float64", (3,))
    path = write_2020(tmp_path / "features.arr", "pointer", data)
    total = from_bigarray(str(path), chunks="segments").sum()
    assert total.compute(scheduler="processes", num_workers=2) == data.sum()


# --------------------------------------------------------------------------- xarray


@pytest.mark.parametrize("engine", ["bigarray", None])
@pytest.mark.parametrize("kind", KINDS)
def test_xarray_opens_a_2020_file(tmp_path: Path, kind: str, engine: str | None) -> None:
    xr = pytest.importorskip("xarray")
    data = sample("float32", (3,))
    path = write_2020(tmp_path / "features.arr", kind, data)
    with xr.open_dataset(path, engine=engine) as ds:
        np.testing.assert_array_equal(ds["data"].values, data)
        if kind == "pointer":
            assert ds["segment"].values.tolist() == ROW_ORDER
            assert ds["segment_start"].values.tolist() == [SEGMENTS[n][0] for n in ROW_ORDER]


def test_guess_can_open_reads_the_header_not_the_index(tmp_path: Path) -> None:
    from bigarray.xarray_backend import BigArrayBackendEntrypoint

    guess = BigArrayBackendEntrypoint().guess_can_open
    path = tmp_path / "features.arr"
    write_legacy_mmap(path, sample("float32", (3,)))
    append_index(path, b"\x80\x04not a pickle at all")  # the index would not even load
    assert guess(str(path)) and guess(path)
    (tmp_path / "other.arr").write_bytes(b"mmapdat")
    (tmp_path / "text.nc").write_bytes(b"CDF\x01" + bytes(100))
    assert not guess(str(tmp_path / "other.arr")) and not guess(str(tmp_path / "text.nc"))
    os.mkfifo(tmp_path / "fifo")
    assert not guess(str(tmp_path / "fifo"))  # and does not hang


# --------------------------------------------------------------------------- command line


def _issue_example(tmp_path: Path) -> np.ndarray:
    """The file of the issue: 2,000 segments, float32 (53,315, 13)."""
    lengths = np.random.default_rng(0).integers(1, 50, 2000)
    lengths[-1] += 53_315 - lengths.sum()
    stops = np.cumsum(lengths).tolist()
    starts = [0, *stops[:-1]]
    data = np.random.default_rng(1).standard_normal((53_315, 13)).astype("float32")
    index = {f"utt{i:04d}": (a, b) for i, (a, b) in enumerate(zip(starts, stops, strict=True))}
    write_legacy_pointer(tmp_path / "features.arr", data, index)
    write_legacy_mmap(tmp_path / "matrix.arr", data)
    return data


EXAMPLE = (
    "bigarray 2020 file: 2,000 segments, float32 (53,315, 13); convert it with "
    "`bigarray convert features.arr features.bigarray` to write to it or to get checksums"
)


@pytest.mark.parametrize("command", ["info", "verify"])
def test_cli_recognises_a_2020_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    _issue_example(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli_main([command, "features.arr"]) == 0
    out = capsys.readouterr().out
    assert EXAMPLE in out, out
    assert cli_main([command, "matrix.arr"]) == 0
    out = capsys.readouterr().out
    assert "bigarray 2020 file: 53,315 rows, no segment names, float32 (53,315, 13)" in out
    assert "`bigarray convert matrix.arr matrix.bigarray`" in out


def test_converted_2020_file_reads_the_same_as_in_place(tmp_path: Path) -> None:
    data = _issue_example(tmp_path)
    assert (
        cli_main(["convert", "--quiet", str(tmp_path / "features.arr"), str(tmp_path / "f.ba")])
        == 0
    )
    old, new = PointerArray(tmp_path / "features.arr"), PointerArray(tmp_path / "f.ba")
    assert list(old.indices.items()) == list(new.indices.items())
    np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(old, data)


def test_cp_refuses_a_2020_file_and_says_convert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_2020(tmp_path / "features.arr", "pointer", sample("float32", (3,)))
    assert cli_main(["cp", "--quiet", str(tmp_path / "features.arr"), str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "2020 bigarray" in err and "bigarray convert" in err
    assert not (tmp_path / "c").exists()


def test_verify_true_checks_what_a_2020_file_allows(tmp_path: Path) -> None:
    from bigarray.errors import IntegrityError

    data = sample("float32", (3,))
    path = write_2020(tmp_path / "features.arr", "pointer", data)
    np.testing.assert_array_equal(PointerArray(path, verify=True), data)
    write_legacy_pointer(path, data, {"a": (0, 5), "b": (5, 10**6)})  # an entry past the data
    with pytest.raises(IntegrityError, match="'b'"):
        MmapArray(path, verify=True)
