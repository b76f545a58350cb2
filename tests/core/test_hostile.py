"""Hostile input: stores and legacy files crafted by a stranger.

Opening such a store must never read or write outside its directory, never map an
absurd size, never build object arrays, and never run code. Every refusal is a
:class:`~bigarray.errors.BigArrayError` that names the bad value.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import PointerArray, StoreWriter
from bigarray.core.verify import verify_store
from bigarray.errors import (
    BigArrayError,
    FormatError,
    HostileInputError,
    SchemaError,
    StoreCorruptedError,
)

REFUSED: list[str] = []  # what this module saw refused (for the closing figures)


def edit_manifest(path: Path, change: Any) -> None:
    doc = json.loads((path / "manifest.json").read_bytes())
    change(doc)
    (path / "manifest.json").write_text(json.dumps(doc))


def refused(path: Path, exc: type[BaseException], match: str, what: str) -> None:
    with pytest.raises(exc, match=match):
        PointerArray(path)
    REFUSED.append(what)


@pytest.fixture()
def store(tmp_path: Path, make_store: Any) -> Path:
    segs = {"a": np.arange(12, dtype="f4").reshape(3, 4), "b": np.ones((2, 4), "f4")}
    path, _ = make_store(tmp_path / "s", segs)
    return path


# --------------------------------------------------------------------------- paths

BAD_PATHS = [
    "../outside.npy",
    "/etc/passwd",
    "index/../../outside.npy",
    "..",
    ".",
    "./data.npy",
    "a//b",
    "data.npy/",
    "\\\\server\\share",
    "C:/x.npy",
    "data\x00.npy",
    "dätä.npy",
    "~/x.npy",
    "x" * 300,
    "a/" * 600 + "b",
    "",
    " data.npy",
]


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_shard_path_leaving_the_store_is_refused(store: Path, bad: str) -> None:
    edit_manifest(store, lambda d: d["variables"]["data"]["shards"][0].update(path=bad))
    refused(
        store, HostileInputError, "not a plain relative path inside the store", f"shard {bad!r}"
    )


@pytest.mark.parametrize("bad", BAD_PATHS[:6])
def test_index_path_leaving_the_store_is_refused(store: Path, bad: str) -> None:
    edit_manifest(store, lambda d: d["segments"]["files"].update(bounds=bad))
    refused(store, HostileInputError, "not a plain relative path", f"index {bad!r}")


def test_symlinked_data_file_leaving_the_store_is_refused(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.npy"
    outside.write_bytes((store / "data.npy").read_bytes())  # identical bytes: only the link is bad
    (store / "data.npy").unlink()
    (store / "data.npy").symlink_to(outside)
    refused(store, HostileInputError, "outside the store", "data symlink out")
    assert not verify_store(store).ok


def test_symlinked_index_dir_leaving_the_store_is_refused(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside-index"
    (store / "index").rename(outside)
    (store / "index").symlink_to(outside)
    refused(store, HostileInputError, "outside the store", "index dir symlink out")


def test_symlink_inside_the_store_is_fine(store: Path) -> None:
    (store / "data.npy").rename(store / "real.npy")
    (store / "data.npy").symlink_to("real.npy")
    x = PointerArray(store)
    assert np.array_equal(x["a"], np.arange(12, dtype="f4").reshape(3, 4))


def test_writer_never_writes_through_a_symlink_out(store: Path, tmp_path: Path) -> None:
    """Appending to a stranger's store whose data file links outside: refused, the
    outside file untouched."""
    outside = tmp_path / "victim.npy"
    outside.write_bytes((store / "data.npy").read_bytes())
    before = outside.read_bytes()
    (store / "data.npy").unlink()
    (store / "data.npy").symlink_to(outside)
    with pytest.raises(HostileInputError, match="outside the store"):
        w = StoreWriter(store)
        w.write_rows([np.zeros((1, 4), "f4")], ["c"])
        w.close()
    assert outside.read_bytes() == before
    REFUSED.append("writer through data symlink")


def test_commit_replaces_planted_index_symlinks_instead_of_writing_through(
    store: Path, tmp_path: Path
) -> None:
    """Index files of the next generation planted as symlinks to a victim: the commit
    unlinks them and writes its own files; the victim keeps its bytes."""
    gen = json.loads((store / "manifest.json").read_bytes())["generation"] + 1
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for role in ("names", "name_offsets", "bounds", "hashes", "table"):
        (store / "index" / f"g{gen}-{role}.npy").symlink_to(victim)
    w = StoreWriter(store)
    w.write_rows([np.zeros((1, 4), "f4")], ["c"])
    w.close()
    assert victim.read_text() == "precious"
    assert set(PointerArray(store).indices) == {"a", "b", "c"}
    assert verify_store(store).ok
    REFUSED.append("planted index symlinks")


# --------------------------------------------------------------------------- sizes, dtypes


@pytest.mark.parametrize(
    ("shape", "exc", "match"),
    [
        ([2**62, 4], HostileInputError, "more than 2..62 bytes"),
        ([2**40, 2**30], HostileInputError, "more than 2..62 bytes"),
        ([-1, 4], FormatError, "sizes are ints >= 0"),
        ([5, -4], FormatError, "sizes are ints >= 0"),
        ([5.0, 4], FormatError, "sizes are ints >= 0"),
        (["5", 4], FormatError, "sizes are ints >= 0"),
        ([True, 4], FormatError, "sizes are ints >= 0"),
        ([5] + [1] * 40, FormatError, "1 to 32 sizes"),
        ([], FormatError, "1 to 32 sizes"),
        ("5,4", FormatError, "1 to 32 sizes"),
    ],
)
def test_absurd_shapes_are_refused(store: Path, shape: Any, exc: type, match: str) -> None:
    edit_manifest(store, lambda d: d["variables"]["data"].update(shape=shape))
    refused(store, exc, match, f"shape {str(shape)[:30]}")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("offset", -1, "must be an int >= 0"),
        ("offset", 2**70, "holds .* bytes but the manifest needs"),
        ("stop", 10**15, "shards do not tile|cover"),
        ("start", 1, "shards do not tile"),
    ],
)
def test_shard_numbers_out_of_range_are_refused(
    store: Path, key: str, value: int, match: str
) -> None:
    edit_manifest(store, lambda d: d["variables"]["data"]["shards"][0].update({key: value}))
    refused(store, BigArrayError, match, f"shard {key}={value}")


def test_huge_segment_count_is_refused_before_mapping(store: Path) -> None:
    edit_manifest(store, lambda d: d["segments"].update(count=2**40))
    refused(store, StoreCorruptedError, "holds .* bytes but the manifest needs", "count 2**40")


@pytest.mark.parametrize(
    "dtype",
    [
        "|O",
        "O",
        "object",
        "|V8",
        "V16",
        "[('a', '<i4')]",
        "<f4,<i4",
        "(2,)<f4",
        "<U0",
        "|S0",
        "<M8[xx]",
        "int",
        "float32",
        "<f16",
        ">f4;import os",
        42,
        None,
        ["<f4"],
        {"names": ["a"]},
    ],
)
def test_dtype_strings_that_are_not_plain_types_are_refused(store: Path, dtype: Any) -> None:
    edit_manifest(store, lambda d: d["variables"]["data"].update(dtype=dtype))
    refused(store, FormatError, "dtype|not a numpy dtype", f"dtype {dtype!r}")


@pytest.mark.parametrize(
    "data",
    [
        np.array([{"a": 1}, None], dtype=object),
        np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.zeros(3, dtype="V8"),
    ],
)
def test_writer_refuses_object_and_structured_data(tmp_path: Path, data: np.ndarray) -> None:
    w = StoreWriter(tmp_path / "s")
    with pytest.raises(SchemaError, match="cannot be stored|dtype"):
        w.write_rows([data], ["x"])
    w.close()
    REFUSED.append(f"write {data.dtype}")


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 200_000,
        b'{"format": "bigarray", "version": 1' + b', "a": [' * 50_000,
        b"\xff\xfe\x00",
        b'{"format": "bigarray", "version": 1, "generation": NaN}',
        b"null",
        b"1e999",
    ],
)
def test_manifest_bombs_are_refused(store: Path, raw: bytes) -> None:
    (store / "manifest.json").write_bytes(raw)
    refused(store, FormatError, ".", f"manifest {raw[:12]!r}")


def test_manifest_over_the_size_limit_is_refused(store: Path) -> None:
    doc = json.loads((store / "manifest.json").read_bytes())
    doc["attrs"]["pad"] = "x" * (65 << 20)
    (store / "manifest.json").write_text(json.dumps(doc))
    refused(store, FormatError, "not valid JSON", "manifest > 64 MiB")


# --------------------------------------------------------------------------- file kinds
# A directory or a FIFO
# where the manifest names a file is refused, never read (or waited on).


def test_data_file_that_is_a_directory_is_refused(store: Path) -> None:
    (store / "data.npy").unlink()
    (store / "data.npy").mkdir()
    refused(store, StoreCorruptedError, "not a regular file|holds", "data.npy directory")


def test_index_file_that_is_a_directory_is_refused(store: Path) -> None:
    rel = json.loads((store / "manifest.json").read_bytes())["segments"]["files"]["bounds"]
    (store / rel).unlink()
    (store / rel).mkdir()
    refused(store, StoreCorruptedError, "not a regular file|holds", "index directory")


def test_manifest_that_is_a_fifo_does_not_hang(store: Path) -> None:
    (store / "manifest.json").unlink()
    os.mkfifo(store / "manifest.json")
    code = (
        "import sys\nfrom bigarray import PointerArray\nfrom bigarray.errors import BigArrayError\n"
        f"try:\n    PointerArray({str(store)!r})\nexcept BigArrayError:\n    sys.exit(3)\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], timeout=15, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("opening a store whose manifest is a FIFO hangs")
    assert proc.returncode == 3


def test_fifo_data_file_is_refused(store: Path) -> None:
    (store / "data.npy").unlink()
    os.mkfifo(store / "data.npy")
    refused(store, StoreCorruptedError, "not a regular file", "data.npy FIFO")


# --------------------------------------------------------------------------- legacy pickle


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_legacy_file_with_a_malicious_pickle_runs_nothing(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from legacy_files import append_index, write_legacy_mmap

    from bigarray.core.legacy import read_legacy

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bigarray"
    write_legacy_mmap(path, np.arange(20, dtype="f4").reshape(5, 4))
    append_index(path, pickle.dumps({"a": _Exploit(str(marker))}))
    with pytest.raises(HostileInputError, match=r"asks to import posix\.system|os\.system"):
        read_legacy(path)
    assert not marker.exists()
    # and a store API pointed at the file does not unpickle it either
    with pytest.raises(BigArrayError):
        PointerArray(path)
    assert not marker.exists()
    REFUSED.append("legacy pickle")


def _read_in_place(entry: str, path: Path) -> Any:
    """Read a 2020 file in place through one entry point, touching every segment."""
    import bigarray
    from bigarray.dask_backend import from_bigarray, map_segments

    if entry == "PointerArray":
        x = PointerArray(path)
        return [np.array(x[n]) for n in x.indices], np.sum(x)
    if entry == "MmapArray":
        from bigarray import MmapArray

        return np.sum(MmapArray(path))
    if entry == "open":
        return np.asarray(bigarray.open(path)[:])
    if entry == "from_bigarray":
        return from_bigarray(str(path), chunks="segments").compute(scheduler="sync")
    if entry == "map_segments":
        return map_segments(len, str(path)).compute(scheduler="sync")
    if entry == "xarray":
        import xarray as xr

        with xr.open_dataset(path, engine="bigarray") as ds:
            return ds.load()
    from bigarray.cli import main

    if main([entry, str(path)]) != 0:  # info, verify
        raise StoreCorruptedError(f"bigarray {entry} failed")
    return None


IN_PLACE_ENTRIES = [
    "PointerArray",
    "MmapArray",
    "open",
    "from_bigarray",
    "map_segments",
    "xarray",
    "info",
    "verify",
]


def _damaged_2020_files(tmp_path: Path) -> dict[str, tuple[Path, type[BaseException]]]:
    """Hostile and damaged 2020 files, each with the error every reader must raise."""
    import marshal

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from legacy_files import (
        append_index,
        write_legacy_mmap,
        write_legacy_pointer,
        write_malicious_legacy,
        write_raw_legacy,
    )

    data = np.arange(60, dtype="f4").reshape(15, 4)
    index = {"a": (0, 5), "b": (5, 15)}
    out: dict[str, tuple[Path, type[BaseException]]] = {}
    for variant in ("protocol0", "protocol4"):
        p = tmp_path / f"evil-{variant}.arr"
        write_malicious_legacy(p, tmp_path / "pwned", variant)
        out[f"malicious pickle {variant}"] = (p, HostileInputError)
    p = tmp_path / "exploit.arr"
    write_legacy_mmap(p, data)
    append_index(p, pickle.dumps({"a": (0, 1), "b": _Exploit(str(tmp_path / "pwned"))}))
    out["malicious pickle in an entry"] = (p, HostileInputError)
    p = tmp_path / "truncated.arr"
    write_legacy_mmap(p, data)
    p.write_bytes(p.read_bytes()[:600])
    out["truncated data"] = (p, StoreCorruptedError)
    p = tmp_path / "lying-shape.arr"
    write_raw_legacy(p, marshal.dumps(["float32", (10**6, 4)]), data.tobytes(), 504)
    out["header shape larger than the file"] = (p, StoreCorruptedError)
    p = tmp_path / "lying-trailer.arr"
    write_legacy_mmap(p, data)
    with open(p, "ab") as f:
        f.write(b"\x80\x04N." + (10**9).to_bytes(8, "big"))
    out["trailer longer than the file"] = (p, StoreCorruptedError)
    p = tmp_path / "code.arr"
    write_raw_legacy(p, marshal.dumps([compile("1", "x", "eval"), (3,)]), bytes(12), 504)
    out["code object in the header"] = (p, HostileInputError)
    p = tmp_path / "object.arr"
    write_raw_legacy(p, marshal.dumps(["object", (3,)]), bytes(24), 504)
    out["object dtype"] = (p, HostileInputError)
    p = tmp_path / "entry.arr"
    write_legacy_pointer(p, data, {"a": (0, 5), "b": (5, 10**6)})
    out["index entry past the data"] = (p, StoreCorruptedError)
    p = tmp_path / "not-a-dict.arr"
    write_legacy_pointer(p, data, index)
    append_index(p, pickle.dumps([("a", (0, 5))]))
    out["index that is not a dict"] = (p, StoreCorruptedError)
    return out


@pytest.mark.parametrize("entry", IN_PLACE_ENTRIES)
def test_hostile_2020_files_opened_in_place_raise_and_run_nothing(
    tmp_path: Path, entry: str
) -> None:
    for what, (path, exc) in _damaged_2020_files(tmp_path).items():
        in_index = "pickle" in what or "index" in what
        # MmapArray never reads the index; bigarray.open unpickles it (restricted) but
        # reads rows only, and an index entry is checked where it is used
        if (entry == "MmapArray" and in_index) or (
            entry == "open" and what == "index entry past the data"
        ):
            _read_in_place(entry, path)
        else:
            with pytest.raises(exc if entry not in ("info", "verify") else BigArrayError):
                _read_in_place(entry, path)
        assert not (tmp_path / "pwned").exists(), (entry, what)
        REFUSED.append(f"2020 file in place: {what} via {entry}")


def test_hostile_totals() -> None:
    if not REFUSED:
        pytest.skip("run with the hostile tests")
    print(f"\nhostile: {len(REFUSED)} hostile inputs refused")
    assert len(REFUSED) >= 40
