"""Reading and converting files of the original 2020 bigarray (trungnt13/bigarray)."""

from __future__ import annotations

import marshal
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from legacy_files import (
    append_index,
    data_offset,
    malicious_pickles,
    write_legacy_mmap,
    write_legacy_pointer,
    write_malicious_legacy,
    write_raw_legacy,
)

from bigarray.convert import convert_legacy
from bigarray.core.legacy import LegacyArray, is_legacy_file, read_legacy
from bigarray.errors import (
    FormatError,
    HostileInputError,
    NotAStoreError,
    OverlapError,
    StoreCorruptedError,
    StoreExistsError,
    StoreNotFoundError,
)

DTYPES = ["float32", "float64", "int64", "int8", "uint16", "bool", "complex64", "<U5", "S3", ">i4"]


def _sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    values = np.arange(int(np.prod(shape))).reshape(shape)
    if np.dtype(dtype).kind in "US":
        return values.astype(str).astype(dtype)
    return (values % 2 if dtype == "bool" else values).astype(dtype)


def _pointer_sample(path: Path) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    array = np.arange(40, dtype="float64").reshape(20, 2)
    indices = {"a": (0, 3), "b": (3, 10), "empty": (10, 10), "c": (12, 20)}  # gap at 10..12
    write_legacy_pointer(path, array, indices)
    return array, indices


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mmap_round_trip(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    expected = _sample(dtype, shape)
    write_legacy_mmap(tmp_path / "x.mmap", expected)
    got = read_legacy(tmp_path / "x.mmap")
    assert isinstance(got, LegacyArray)
    assert isinstance(got.array, np.memmap)
    assert got.array.dtype == expected.dtype and got.array.shape == shape
    np.testing.assert_array_equal(got.array, expected)
    assert got.indices is None
    assert got.path == tmp_path / "x.mmap"
    with pytest.raises(ValueError, match="read-only"):
        got.array[0] = got.array[1]


def test_data_offsets_match_original() -> None:
    # ceil(502 / itemsize) * itemsize, whatever the header length
    assert [data_offset(d) for d in ["bool", "int16", "float32", "float64", "<U5"]] == [
        502,
        502,
        504,
        504,
        520,
    ]


@pytest.mark.parametrize(
    "meta",
    [
        # Python 3 marshal (version 4): FLAG_REF set on the list, str, tuple and int
        b"\xdb\x02\x00\x00\x00\xda\x07float32\xa9\x01\xe9\x03\x00\x00\x00",
        # Python 2 style: no refs, interned str "t", 4-byte tuple count
        b"[\x02\x00\x00\x00t\x07\x00\x00\x00float32(\x01\x00\x00\x00i\x03\x00\x00\x00",
    ],
    ids=["py3", "py2"],
)
def test_hand_written_header_bytes(tmp_path: Path, meta: bytes) -> None:
    data = np.array([1.5, 2.5, 3.5], dtype="<f4")
    write_raw_legacy(tmp_path / "x", meta, data.tobytes(), 504)
    assert (tmp_path / "x").read_bytes()[8:16] == b"%8d" % len(meta)
    np.testing.assert_array_equal(read_legacy(tmp_path / "x").array, data)


def test_shared_shape_values_use_marshal_refs(tmp_path: Path) -> None:
    # (4, 4) marshals the second 4 as a back-reference "r" to the first
    expected = np.ones((4, 4), dtype="int32")
    assert b"r" in marshal.dumps(["int32", (4, 4)])
    write_legacy_mmap(tmp_path / "x", expected)
    np.testing.assert_array_equal(read_legacy(tmp_path / "x").array, expected)


def test_huge_empty_shape_uses_marshal_long(tmp_path: Path) -> None:
    write_raw_legacy(tmp_path / "x", marshal.dumps(["float32", (2**40, 0)]), b"", 504)
    assert read_legacy(tmp_path / "x").array.shape == (2**40, 0)


def test_zero_rows(tmp_path: Path) -> None:
    write_legacy_mmap(tmp_path / "x", np.zeros((0, 3), dtype="float64"))
    assert read_legacy(tmp_path / "x").array.shape == (0, 3)


def test_dtype_name_written_after_resize(tmp_path: Path) -> None:
    # the original's _resize stored dtype.name: "str160" for "<U5", which numpy cannot parse
    expected = np.array(["ab", "cde"], dtype="<U5")
    write_legacy_mmap(tmp_path / "x", expected, dtype_text="str160")
    got = read_legacy(tmp_path / "x").array
    assert got.dtype == np.dtype("<U5")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pointer_round_trip(tmp_path: Path, protocol: int) -> None:
    array = np.arange(40, dtype="float64").reshape(20, 2)
    indices = {"a": (0, 3), "b": (3, 10), "empty": (10, 10), "c": (12, 20)}
    write_legacy_pointer(tmp_path / "p", array, indices, protocol=protocol)
    got = read_legacy(tmp_path / "p")
    assert got.indices == indices
    np.testing.assert_array_equal(got.array, array)
    for start, stop in indices.values():
        np.testing.assert_array_equal(got.array[start:stop], array[start:stop])


def test_pointer_last_flush_wins(tmp_path: Path) -> None:
    array = np.arange(10, dtype="int64")
    write_legacy_pointer(tmp_path / "p", array, {"a": (0, 5)}, flushes=2)
    append_index(tmp_path / "p", pickle.dumps({"a": (0, 5), "b": (5, 10)}))
    assert read_legacy(tmp_path / "p").indices == {"a": (0, 5), "b": (5, 10)}


def test_pointer_empty_index(tmp_path: Path) -> None:
    write_legacy_pointer(tmp_path / "p", np.zeros((0, 2), dtype="float32"), {})
    got = read_legacy(tmp_path / "p")
    assert got.indices == {} and got.array.shape == (0, 2)


# --------------------------------------------------------------------------- damage


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize(
    ("where", "size"),
    [
        ("inside magic", lambda n, end: 4),
        ("inside length field", lambda n, end: 12),
        ("inside marshal header", lambda n, end: 20),
        ("before the data", lambda n, end: 300),
        ("inside the data", lambda n, end: 504 + 17),
        ("just after the data", lambda n, end: end + 3),
        ("inside the pickle", lambda n, end: end + (n - end - 8) // 2),
        ("inside the size trailer", lambda n, end: n - 3),
        ("without the size trailer", lambda n, end: n - 8),
    ],
)
def test_truncated_pointer_file(tmp_path: Path, where: str, size) -> None:
    path = tmp_path / "p"
    _pointer_sample(path)
    data_end = 504 + 40 * 8
    _cut(path, size(path.stat().st_size, data_end))
    with pytest.raises(StoreCorruptedError, match="truncated or damaged"):
        read_legacy(path)


@pytest.mark.parametrize("extra", [-1, -100, 3])
def test_wrong_size_mmap_file(tmp_path: Path, extra: int) -> None:
    path = tmp_path / "x"
    write_legacy_mmap(path, np.arange(100, dtype="int32"))
    raw = path.read_bytes()
    path.write_bytes(raw[:extra] if extra < 0 else raw + b"\0" * extra)
    with pytest.raises(StoreCorruptedError, match="truncated or damaged"):
        read_legacy(path)


@pytest.mark.parametrize("field", [b"     abc", b"     999", b"       0", b"-     12"])
def test_bad_length_field(tmp_path: Path, field: bytes) -> None:
    path = tmp_path / "x"
    write_legacy_mmap(path, np.arange(4, dtype="int32"))
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + field + raw[16:])
    with pytest.raises(StoreCorruptedError, match="length field"):
        read_legacy(path)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (["float32", (3.0,)], "unexpected marshal type"),
        (["float32", (-3,)], "not a tuple of non-negative ints"),
        (["float32", ()], r"not \[dtype, shape\]"),
        (["float32", (3,), 1], r"not \[dtype, shape\]"),
        ({"float32": (3,)}, "unexpected marshal type"),
        ([3, (3,)], "expected a string"),
    ],
)
def test_bad_header_values(tmp_path: Path, obj: object, match: str) -> None:
    write_raw_legacy(tmp_path / "x", marshal.dumps(obj), b"\0" * 12, 504)
    with pytest.raises(StoreCorruptedError, match=match):
        read_legacy(tmp_path / "x")


def test_unknown_dtype(tmp_path: Path) -> None:
    write_raw_legacy(tmp_path / "x", marshal.dumps(["float33", (1,)]), b"\0" * 8, 504)
    with pytest.raises(FormatError, match="float33"):
        read_legacy(tmp_path / "x")


@pytest.mark.parametrize(
    ("index", "match"),
    [
        ([("a", (0, 1))], "expected a dict"),
        ({"a": (0, 21)}, r"not \(start, stop\)"),
        ({"a": (5, 2)}, r"not \(start, stop\)"),
        ({"a": (True, 2)}, r"not \(start, stop\)"),
        ({1: (0, 2)}, r"not \(start, stop\)"),
        ({"a": (0, 1, 2)}, r"not \(start, stop\)"),
        ({"a": [0, 1]}, r"not \(start, stop\)"),
    ],
)
def test_bad_index_values(tmp_path: Path, index: object, match: str) -> None:
    write_legacy_mmap(tmp_path / "p", np.zeros(20, dtype="int8"))
    append_index(tmp_path / "p", pickle.dumps(index))
    with pytest.raises(StoreCorruptedError, match=match):
        read_legacy(tmp_path / "p")


def test_garbage_index(tmp_path: Path) -> None:
    write_legacy_mmap(tmp_path / "p", np.zeros(20, dtype="int8"))
    append_index(tmp_path / "p", b"\x80\x04not a pickle at all")
    with pytest.raises(StoreCorruptedError, match="does not load"):
        read_legacy(tmp_path / "p")


# --------------------------------------------------------------------------- foreign files


@pytest.mark.parametrize(
    "content", [b"", b"hello world, this is not it", b"\x93NUMPY\x01\x00" + b"x" * 600]
)
def test_foreign_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "f").write_bytes(content)
    assert not is_legacy_file(tmp_path / "f")
    with pytest.raises(NotAStoreError, match="not a legacy bigarray file"):
        read_legacy(tmp_path / "f")


def test_missing_and_directory(tmp_path: Path) -> None:
    assert not is_legacy_file(tmp_path / "missing")
    assert not is_legacy_file(tmp_path)
    with pytest.raises(StoreNotFoundError, match="no legacy bigarray file"):
        read_legacy(tmp_path / "missing")
    with pytest.raises(NotAStoreError, match="is a directory"):
        read_legacy(tmp_path)


def test_is_legacy_file(tmp_path: Path) -> None:
    write_legacy_mmap(tmp_path / "x", np.arange(3))
    assert is_legacy_file(tmp_path / "x")
    assert is_legacy_file(str(tmp_path / "x"))


# --------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize("variant", ["protocol0", "protocol4"])
def test_payload_is_live(tmp_path: Path, variant: str) -> None:
    # control for the test below: a careless pickle.loads really would run the command
    marker = tmp_path / "pwned"
    pickle.loads(malicious_pickles(marker)[variant])
    assert marker.exists()


@pytest.mark.parametrize("variant", ["protocol0", "protocol4"])
def test_malicious_pickle_runs_nothing(tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "pwned"
    write_malicious_legacy(tmp_path / "evil", marker, variant)
    with pytest.raises(HostileInputError, match=r"import (os|posix)\.system"):
        read_legacy(tmp_path / "evil")
    assert not marker.exists()


_CODE = compile("__import__('os').system('true')", "<evil>", "eval")


@pytest.mark.parametrize(
    "obj", [_CODE, [_CODE, (3,)], ["float32", (3, _CODE)]], ids=["top", "dtype", "shape"]
)
def test_marshal_code_object_refused(tmp_path: Path, obj: object) -> None:
    meta = marshal.dumps(obj)
    assert len(meta) <= 486
    write_raw_legacy(tmp_path / "x", meta, b"\0" * 12, 504)
    with pytest.raises(HostileInputError, match="code object"):
        read_legacy(tmp_path / "x")


def test_object_dtype_refused(tmp_path: Path) -> None:
    write_raw_legacy(tmp_path / "x", marshal.dumps(["O", (2,)]), b"\0" * 16, 504)
    with pytest.raises(HostileInputError, match="object dtype"):
        read_legacy(tmp_path / "x")


def test_marshal_ref_to_container_refused(tmp_path: Path) -> None:
    # a list whose second item is a back-reference to the list itself
    meta = b"\xdb\x02\x00\x00\x00\xda\x07float32r\x00\x00\x00\x00"
    write_raw_legacy(tmp_path / "x", meta, b"", 504)
    with pytest.raises(StoreCorruptedError, match="back-reference"):
        read_legacy(tmp_path / "x")


@pytest.mark.parametrize(
    "meta",
    [
        b"\xdb\x02\x00\x00\x00\xf5\x02\x00\x00\x00\xff\xfe\xa9\x01\xe9\x03\x00\x00\x00",  # bad utf-8
        b"[\x02\x00\x00\x00z\x09i4",  # str runs past the end
        b"[\x02\x00\x00\x00z\x02i4)\x01l\x01\x00\x00\x00\xff\xff",  # long digit out of range
        b"[\x02\x00\x00\x00z\x02i4)\x01i\x03\x00\x00\x00\x00",  # trailing byte
    ],
)
def test_malformed_marshal(tmp_path: Path, meta: bytes) -> None:
    write_raw_legacy(tmp_path / "x", meta, b"\0" * 12, 504)
    with pytest.raises(StoreCorruptedError, match="marshal header"):
        read_legacy(tmp_path / "x")


@pytest.mark.parametrize("dtype", ["V0", "(2,)f4", "f4,i4"])
def test_unsupported_dtype(tmp_path: Path, dtype: str) -> None:
    write_raw_legacy(tmp_path / "x", marshal.dumps([dtype, (1,)]), b"\0" * 8, 504)
    with pytest.raises(FormatError, match="unsupported dtype"):
        read_legacy(tmp_path / "x")


# --------------------------------------------------------------------------- conversion


def test_convert_pointer_round_trip(tmp_path: Path) -> None:
    from bigarray import PointerArray

    array, indices = _pointer_sample(tmp_path / "p")
    convert_legacy(tmp_path / "p", tmp_path / "new.bigarray")
    got = PointerArray(str(tmp_path / "new.bigarray"))
    assert {name: tuple(span) for name, span in got.indices.items()} == indices
    assert got.shape == array.shape and got.dtype == array.dtype
    for name, (start, stop) in indices.items():
        np.testing.assert_array_equal(np.asarray(got[name]), array[start:stop])


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool", ">i4", "<U5"])
def test_convert_mmap_round_trip(tmp_path: Path, dtype: str) -> None:
    from bigarray import MmapArray

    expected = _sample(dtype, (50, 3))
    write_legacy_mmap(tmp_path / "x", expected)
    convert_legacy(tmp_path / "x", tmp_path / "new.bigarray", progress=True)
    got = MmapArray(str(tmp_path / "new.bigarray"))
    np.testing.assert_array_equal(np.asarray(got[:]), expected)


def test_convert_refuses_existing_unless_asked(tmp_path: Path) -> None:
    from bigarray import PointerArray

    _pointer_sample(tmp_path / "p")
    convert_legacy(tmp_path / "p", tmp_path / "new.bigarray")
    write_legacy_pointer(tmp_path / "q", np.ones((4, 2)), {"only": (0, 4)})
    with pytest.raises(StoreExistsError):
        convert_legacy(tmp_path / "q", tmp_path / "new.bigarray")
    convert_legacy(tmp_path / "q", tmp_path / "new.bigarray", remove_exist=True)
    assert list(PointerArray(str(tmp_path / "new.bigarray")).indices) == ["only"]


def test_convert_overlapping_segments_refused(tmp_path: Path) -> None:
    write_legacy_pointer(tmp_path / "p", np.arange(10.0), {"a": (0, 6), "b": (4, 10)})
    with pytest.raises(OverlapError, match=r"'b'.*overlaps 'a'"):
        convert_legacy(tmp_path / "p", tmp_path / "new.bigarray")


def test_convert_many_segments_is_fast(tmp_path: Path) -> None:
    from bigarray import PointerArray

    n = 200_000
    array = np.arange(n, dtype="int32")
    order = np.random.default_rng(0).permutation(n)  # index order unrelated to row order
    indices = {f"s{i}": (int(i), int(i) + 1) for i in order}
    write_legacy_pointer(tmp_path / "p", array, indices)
    t0 = time.perf_counter()
    convert_legacy(tmp_path / "p", tmp_path / "new.bigarray")
    assert time.perf_counter() - t0 < 30
    got = PointerArray(str(tmp_path / "new.bigarray"))
    assert len(got.indices) == n
    for name in ["s0", f"s{n - 1}", f"s{n // 2}"]:
        np.testing.assert_array_equal(
            np.asarray(got[name]), array[indices[name][0] : indices[name][1]]
        )


def test_convert_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bigarray

    _pointer_sample(tmp_path / "p")  # two runs: rows 0..10 and 12..20, so two write calls
    real_write = bigarray.PointerArrayWriter.write
    calls: list[int] = []

    def failing_write(self: object, arrays: dict, start_position: int | None = None) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_write(self, arrays, start_position)  # type: ignore[arg-type]

    monkeypatch.setattr(bigarray.PointerArrayWriter, "write", failing_write)
    with pytest.raises(OSError, match="simulated"):
        convert_legacy(tmp_path / "p", tmp_path / "new.bigarray")
    assert len(calls) == 2
    assert not (tmp_path / "new.bigarray").exists()


def test_segments_grouped_into_few_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bigarray.core import legacy as legacy_module

    _pointer_sample(tmp_path / "p")  # rows 0..3, 3..10, 10..10, gap, 12..20; 16-byte rows
    got = read_legacy(tmp_path / "p")
    runs = legacy_module.legacy_runs(got, got.indices or {})
    assert [(start, list(run)) for start, run in runs] == [(0, ["a", "b", "empty"]), (12, ["c"])]
    monkeypatch.setattr(legacy_module, "CONVERT_CHUNK_BYTES", 3 * 16)  # cut every 3 rows
    runs = legacy_module.legacy_runs(got, got.indices or {})
    assert [(start, list(run)) for start, run in runs] == [
        (0, ["a"]),
        (3, ["b"]),  # rows 3..10 start in the second 3-row chunk
        (10, ["empty"]),  # row 10 starts in the fourth
        (12, ["c"]),
    ]
