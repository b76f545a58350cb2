"""The on-disk format on its own (``bigarray.core.format``): the manifest model and its JSON,
every refusal of ``parse_manifest``, dtype rules, safe paths and ``.npy`` headers.

Stores built by the writers are tested elsewhere; here manifests are built and damaged by
hand, so that each rule of the format is seen to hold (or to refuse) by itself.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigarray import StoreWriter
from bigarray.core.format import (
    FORMAT_VERSION,
    INDEX_ROLES,
    MAX_INDEX_RUNS,
    IndexFiles,
    Manifest,
    Shard,
    Variable,
    as_bytes,
    byte_view,
    check_relpath,
    dtype_from_manifest,
    dtype_to_str,
    index_of_runs,
    manifest_objects,
    normalize_dtype,
    npy_header,
    parse_manifest,
    save_npy,
)
from bigarray.errors import BigArrayError, FormatError, HostileInputError, SchemaError

# --------------------------------------------------------------------------- builders


def run(generation: int, count: int = 3, table_size: int = 8) -> IndexFiles:
    """One run of an index, with the file names a commit of ``generation`` writes."""
    files = {r: f"index/g{generation}-{r}.npy" for r in INDEX_ROLES}
    return IndexFiles(count, generation, table_size, files, dict.fromkeys(INDEX_ROLES, 128))


def variable(
    name: str = "data", dtype: str = "<f4", shape: tuple[int, ...] = (10, 4), **kw: Any
) -> Variable:
    dims = kw.pop("dims", ("row", *(f"{name}_{i}" for i in range(1, len(shape)))))
    shards = kw.pop("shards", (Shard(f"{name}.npy", 128, 0, shape[0]),))
    return Variable(name, np.dtype(dtype), shape, dims, shards, **kw)


def manifest(**kw: Any) -> Manifest:
    kw.setdefault("generation", 3)
    kw.setdefault("variables", {"data": variable()})
    kw.setdefault("segments", run(3))
    return Manifest(**kw)


def doc_of(m: Manifest | None = None) -> dict[str, Any]:
    return json.loads((m or manifest()).dumps())


def refusal(change: Callable[[dict[str, Any]], Any], base: Manifest | None = None) -> FormatError:
    """The error ``parse_manifest`` raises for a valid manifest edited by ``change``."""
    doc = doc_of(base)
    change(doc)
    with pytest.raises(FormatError) as info:
        parse_manifest(json.dumps(doc).encode(), "m.json")
    assert str(info.value).startswith("m.json"), "the message names the manifest"
    return info.value


def var_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["variables"]["data"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- round trips


def test_a_manifest_survives_dumps_and_parse() -> None:
    m = manifest(
        attrs={"title": "corpus", "nested": {"list": [1, 2.5, None, "x"]}},
        variables={
            "data": variable(attrs={"units": "m"}, encoding={"dtype": "f4"}),
            "label": variable("label", "<U8", (10,), checksums={"block": 1 << 20, "crc": []}),
            "t": variable("t", "<M8[ns]", (3,), dims=("time",)),
        },
    )
    parsed = parse_manifest(m.dumps(), "m")
    assert parsed == m
    assert parsed.dumps() == m.dumps()


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ({"scale": float("nan")}, "not JSON compliant: nan"),
        ({"scale": float("inf")}, "not JSON compliant: inf"),
        ({"scale": np.float32(0.5)}, "float32 is not JSON serializable"),
        ({"table": np.arange(3)}, "ndarray is not JSON serializable"),
        ({"when": b"bytes"}, "bytes is not JSON serializable"),
    ],
)
def test_metadata_that_is_not_json_is_a_schema_error(attrs: dict[str, Any], reason: str) -> None:
    for m in (manifest(attrs=attrs), manifest(variables={"data": variable(attrs=attrs)})):
        with pytest.raises(SchemaError, match="cannot be written as JSON") as info:
            m.dumps()
        assert reason in str(info.value) and ".item()" in str(info.value)


def test_a_writer_given_attrs_that_are_not_json_refuses_and_leaves_a_free_location(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    with pytest.raises(SchemaError, match="cannot be written as JSON"):
        StoreWriter(path, dtype="f4", shape=(0, 2), attrs={"x": float("nan")}, fsync=False)
    w = StoreWriter(path, dtype="f4", shape=(0, 2), attrs={"x": 0.5}, fsync=False)
    w.write_rows([np.ones((2, 2), "f4")], ["a"])
    w.close()
    assert parse_manifest((path / "manifest.json").read_bytes(), "m").variables["data"].attrs == {
        "x": 0.5
    }


def test_dumps_is_sorted_json_with_the_format_name_and_version() -> None:
    doc = doc_of()
    assert doc["format"] == "bigarray" and doc["version"] == FORMAT_VERSION
    raw = manifest().dumps().decode()
    assert raw == json.dumps(doc, indent=1, sort_keys=True)
    assert doc["segments"]["hash"] == "crc32"
    assert "checksums" not in var_of(doc), "no checksums key when none were recorded"


def test_a_store_without_segments_keeps_null() -> None:
    m = manifest(segments=None)
    assert doc_of(m)["segments"] is None
    assert parse_manifest(m.dumps(), "m").segments is None


def test_a_multi_run_index_lists_its_runs_and_no_files_of_its_own() -> None:
    idx = index_of_runs([run(2, 40, 128), run(5, 9, 32), run(7, 1)])
    seg = doc_of(manifest(segments=idx))["segments"]
    assert set(seg) == {"count", "generation", "runs"}
    assert seg["count"] == 50 and seg["generation"] == 7 and len(seg["runs"]) == 3
    parsed = parse_manifest(manifest(segments=idx).dumps(), "m").segments
    assert parsed == idx
    assert [r.generation for r in parsed.all_runs] == [2, 5, 7]


def test_the_shards_of_a_variable_are_read_in_row_order() -> None:
    shards = (Shard("b.npy", 0, 4, 10), Shard("a.npy", 0, 0, 4))
    doc = doc_of(manifest(variables={"data": variable(shards=shards)}))
    parsed = parse_manifest(json.dumps(doc).encode(), "m")
    assert [s.path for s in parsed.variables["data"].shards] == ["a.npy", "b.npy"]


_NAME = st.text(min_size=1, max_size=12)
_SAFE = st.from_regex(r"[A-Za-z0-9_\-]{1,12}(/[A-Za-z0-9_\-]{1,12}){0,2}\.npy", fullmatch=True)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_ATTRS = st.dictionaries(st.text(max_size=8), _JSON, max_size=4)
_DTYPES = st.sampled_from(
    [
        "<f4",
        "<f8",
        "<f2",
        "|i1",
        "<i2",
        "<i4",
        "<i8",
        "|u1",
        "<u2",
        "<u4",
        "<u8",
        "|b1",
        "<c8",
        "<c16",
        "<M8[ns]",
        "<M8[D]",
        "<m8[s]",
        "<U1",
        "<U32",
        "|S7",
    ]
)


@st.composite
def _shards(draw: st.DrawFn, rows: int) -> tuple[Shard, ...]:
    cuts = sorted(draw(st.lists(st.integers(0, rows), max_size=3)))
    edges = [0, *cuts, rows]
    return tuple(
        Shard(draw(_SAFE), draw(st.integers(0, 2**40)), a, b) for a, b in zip(edges, edges[1:])
    )


@st.composite
def _variables(draw: st.DrawFn, name: str) -> Variable:
    dtype = np.dtype(draw(_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 1000), min_size=1, max_size=4)))
    dims = tuple(draw(st.lists(_NAME, min_size=len(shape), max_size=len(shape))))
    checksums = draw(st.none() | st.dictionaries(st.text(max_size=6), _JSON, max_size=2))
    return Variable(
        name, dtype, shape, dims, draw(_shards(shape[0])), draw(_ATTRS), draw(_ATTRS), checksums
    )


@st.composite
def _runs(draw: st.DrawFn, generation: int) -> IndexFiles:
    files = {r: draw(_SAFE) for r in INDEX_ROLES}
    offsets = {r: draw(st.integers(0, 2**40)) for r in INDEX_ROLES}
    count = draw(st.integers(0, 2**40))
    return IndexFiles(count, generation, 1 << draw(st.integers(0, 40)), files, offsets)


@st.composite
def _indexes(draw: st.DrawFn) -> IndexFiles | None:
    gens = draw(st.lists(st.integers(0, 10**9), min_size=0, max_size=6, unique=True))
    if not gens:
        return None
    return index_of_runs([draw(_runs(g)) for g in sorted(gens)])


@st.composite
def _manifests(draw: st.DrawFn) -> Manifest:
    names = draw(st.lists(_NAME, max_size=4, unique=True))
    return Manifest(
        draw(st.integers(0, 2**53)),
        {n: draw(_variables(n)) for n in names},
        draw(_indexes()),
        draw(_NAME),
        draw(_ATTRS),
    )


@settings(max_examples=100, deadline=None)
@given(_manifests())
def test_any_valid_manifest_round_trips(m: Manifest) -> None:
    raw = m.dumps()
    parsed = parse_manifest(raw, "m")
    assert parsed == m
    assert parsed.dumps() == raw
    assert manifest_objects(parsed) == manifest_objects(m)


@settings(max_examples=100, deadline=None)
@given(st.lists(_runs(0), min_size=1, max_size=5), st.integers(1, 5))
def test_index_of_runs_flattens_counts_and_takes_the_newest_generation(
    runs: list[IndexFiles], split: int
) -> None:
    runs = [IndexFiles(r.count, g, r.table_size, r.files, r.offsets) for g, r in enumerate(runs)]
    idx = index_of_runs(runs)
    assert idx.all_runs == tuple(runs)
    assert idx.count == sum(r.count for r in runs)
    assert idx.generation == len(runs) - 1
    # an index of indexes is the index of all their runs
    head = index_of_runs(runs[:split]) if runs[:split] else None
    tail = runs[split:]
    if head is not None and tail:
        assert index_of_runs([head, *tail]) == idx
    assert IndexFiles.to_json(idx) == json.loads(json.dumps(idx.to_json()))


def test_index_of_no_runs_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one run"):
        index_of_runs([])


def test_a_one_run_index_is_its_run() -> None:
    r = run(4)
    assert index_of_runs([r]) is r
    assert r.all_runs == (r,)


# --------------------------------------------------------------------------- model helpers


def test_manifest_rows_come_from_the_row_variable() -> None:
    m = manifest(variables={"t": variable("t", shape=(7,), dims=("time",)), "data": variable()})
    assert m.rows == 10
    assert manifest(variables={"t": variable("t", shape=(7,), dims=("time",))}).rows == 0
    assert manifest(variables={}).rows == 0


def test_row_nbytes_is_the_size_of_one_row() -> None:
    assert variable(dtype="<f8", shape=(5, 3, 2)).row_nbytes == 48
    assert variable(dtype="<U4", shape=(5,)).row_nbytes == 16
    assert variable().rows == 10


def test_manifest_objects_names_every_shard_and_index_file() -> None:
    shards = (Shard("a.npy", 0, 0, 4), Shard("sub/b.npy", 0, 4, 10))
    m = manifest(
        variables={"data": variable(shards=shards)},
        segments=index_of_runs([run(1), run(2)]),
    )
    expected = {"a.npy", "sub/b.npy"} | {f"index/g{g}-{r}.npy" for g in (1, 2) for r in INDEX_ROLES}
    assert manifest_objects(m) == expected
    assert manifest_objects(None) == set()
    assert manifest_objects(manifest(segments=None)) == {"data.npy"}


# --------------------------------------------------------------------------- parse refusals


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "manifest is not valid JSON"),
        (b"\xff\xfe{}", "manifest is not valid JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "manifest is not valid JSON"),
        (b"[1, 2]", 'not a bigarray manifest \\(no "format": "bigarray"\\)'),
        (b"{}", "not a bigarray manifest"),
        (b'{"format": "zarr"}', "not a bigarray manifest"),
        (b'{"format": "bigarray"}', "format version None; this bigarray reads version 1"),
    ],
)
def test_bytes_that_are_not_a_manifest_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_manifest(raw, "m.json")


def test_a_newer_format_version_says_to_upgrade() -> None:
    err = refusal(lambda d: d.update(version=2))
    assert "format version 2; this bigarray reads version 1" in str(err)
    assert "Upgrade bigarray" in str(err)


def _set(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        obj = doc
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return change


def _drop(*path: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        obj = doc
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]

    return change


V = ("variables", "data")
S0 = (*V, "shards", 0)
SEG = ("segments",)

#: (edit, error class, message): every refusal of parse_manifest, one by one
REFUSALS: list[tuple[Callable[[dict[str, Any]], None], type[FormatError], str]] = [
    (_set("generation", value=-1), FormatError, "generation: -1 must be an int >= 0"),
    (_set("generation", value="3"), FormatError, "generation: '3' must be an int >= 0"),
    (_set("generation", value=True), FormatError, "generation: True must be an int >= 0"),
    (_drop("generation"), FormatError, "generation: None must be an int >= 0"),
    (_drop("row_dim"), FormatError, "missing key 'row_dim'"),
    (_set("row_dim", value=5), FormatError, "m.json.row_dim: 5 has type int"),
    (_set("attrs", value=[]), FormatError, "m.json.attrs: \\[\\] has type list"),
    (_drop("variables"), FormatError, "missing key 'variables'"),
    (_set("variables", value=[1]), FormatError, "variables: \\[1\\] has type list"),
    (_set(*V, value=[]), FormatError, "variable 'data' is not an object"),
    (_set(*V, "dtype", value="|O"), HostileInputError, "dtype '\\|O' is not a plain numeric"),
    (_set(*V, "dtype", value="<f4,<i4"), HostileInputError, "is not a plain numeric"),
    (_drop(*V, "dtype"), HostileInputError, "dtype None is not a plain numeric"),
    (_set(*V, "dtype", value="<U0"), HostileInputError, "has zero width"),
    (_set(*V, "dtype", value="<M8[xx]"), HostileInputError, "is not a numpy dtype"),
    (_set(*V, "shape", value=5), FormatError, "shape 5 must be a list of 1 to 32 sizes"),
    (_set(*V, "shape", value=[]), FormatError, "shape \\[\\] must be a list of 1 to 32 sizes"),
    (_set(*V, "shape", value=[1] * 33), FormatError, "must be a list of 1 to 32 sizes"),
    (_set(*V, "shape", value=[10, -4]), FormatError, "holds -4; sizes are ints >= 0"),
    (_set(*V, "shape", value=[10, True]), FormatError, "holds True; sizes are ints >= 0"),
    (_set(*V, "shape", value=[10, 4.0]), FormatError, "holds 4.0; sizes are ints >= 0"),
    (
        _set(*V, "shape", value=[10, 2**61]),
        HostileInputError,
        "needs more than 2\\*\\*62 bytes",
    ),
    (_drop(*V, "dims"), FormatError, "variable 'data': missing key 'dims'"),
    (_set(*V, "dims", value=["row"]), FormatError, "dims \\['row'\\] must be 2 strings"),
    (_set(*V, "dims", value=["row", 1]), FormatError, "dims \\['row', 1\\] must be 2 strings"),
    (_set(*V, "shards", value={}), FormatError, "shards: \\{\\} has type dict"),
    (_set(*S0, value="data.npy"), FormatError, "shard 0 is not an object"),
    (_set(*S0, "path", value="../x.npy"), HostileInputError, "is not a plain relative path"),
    (_drop(*S0, "path"), HostileInputError, "file name None is not a plain relative path"),
    (_set(*S0, "offset", value=-1), FormatError, "shard 0 offset: -1 must be an int >= 0"),
    (_set(*S0, "start", value=1), FormatError, "shards do not tile rows \\[0, 10\\)"),
    (_set(*S0, "stop", value=9), FormatError, "shards cover 9 rows but shape says 10"),
    (_set(*S0, "stop", value=None), FormatError, "shard 0 stop: None must be an int >= 0"),
    (_set(*V, "shards", value=[]), FormatError, "shards cover 0 rows but shape says 10"),
    (_set(*V, "checksums", value=[1]), FormatError, "checksums must be an object"),
    (_drop(*V, "attrs"), FormatError, "variable 'data': missing key 'attrs'"),
    (_drop(*V, "encoding"), FormatError, "variable 'data': missing key 'encoding'"),
    (_set(*SEG, value=[]), FormatError, "segments: missing key 'files'"),
    (_drop(*SEG, "files"), FormatError, "segments: missing key 'files'"),
    (_set(*SEG, "offsets", value=[]), FormatError, "segments.offsets: \\[\\] has type list"),
    (_drop(*SEG, "files", "table"), FormatError, "index files must be exactly"),
    (_set(*SEG, "offsets", "extra", value=0), FormatError, "index files must be exactly"),
    (_set(*SEG, "hash", value="md5"), FormatError, "unknown name hash 'md5'"),
    (_drop(*SEG, "hash"), FormatError, "unknown name hash None"),
    (_set(*SEG, "table_size", value=12), FormatError, "table_size 12 must be a power of two"),
    (_set(*SEG, "table_size", value=0), FormatError, "table_size 0 must be a power of two"),
    (_set(*SEG, "table_size", value=-8), FormatError, "table_size: -8 must be an int >= 0"),
    (_set(*SEG, "count", value=-1), FormatError, "segments count: -1 must be an int >= 0"),
    (_set(*SEG, "generation", value=None), FormatError, "generation: None must be an int"),
    (
        _set(*SEG, "files", "names", value="/etc/passwd"),
        HostileInputError,
        "segments names: file name '/etc/passwd' is not a plain relative path",
    ),
    (_set(*SEG, "offsets", "bounds", value=-5), FormatError, "bounds offset: -5 must be an int"),
]


@pytest.mark.parametrize(("change", "exc", "message"), REFUSALS)
def test_each_bad_field_is_refused_with_its_reason(
    change: Callable[[dict[str, Any]], None], exc: type[FormatError], message: str
) -> None:
    err = refusal(change)
    assert isinstance(err, exc), f"{type(err).__name__}: {err}"
    assert re.search(message, str(err)), str(err)


def _multi(change: Callable[[dict[str, Any]], None]) -> FormatError:
    return refusal(change, manifest(segments=index_of_runs([run(1, 5), run(2, 2)])))


def test_a_multi_run_index_needs_two_to_max_runs() -> None:
    err = _multi(lambda d: d["segments"].update(runs=d["segments"]["runs"][:1]))
    assert "segments: 1 runs; expected 2 to 256" in str(err)
    err = _multi(
        lambda d: d["segments"].update(runs=d["segments"]["runs"] * (MAX_INDEX_RUNS // 2 + 1))
    )
    assert f"{MAX_INDEX_RUNS + 2} runs; expected 2 to {MAX_INDEX_RUNS}" in str(err)
    err = _multi(lambda d: d["segments"].update(runs={"a": 1}))
    assert "segments.runs: {'a': 1} has type dict" in str(err)


def test_two_runs_of_one_generation_are_refused() -> None:
    def same(doc: dict[str, Any]) -> None:
        doc["segments"]["runs"][1]["generation"] = 1

    assert "two runs have the same generation" in str(_multi(same))


def test_a_multi_run_count_must_be_the_sum_of_its_runs() -> None:
    err = _multi(lambda d: d["segments"].update(count=8))
    assert "count 8 is not the sum of its runs' counts" in str(err)
    err = _multi(lambda d: d["segments"].update(count=-7))
    assert "segments count: -7 must be an int >= 0" in str(err)


def test_each_run_of_a_multi_run_index_is_checked_and_named() -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["segments"]["runs"][1]["files"]["bounds"] = "../../bounds.npy"

    err = _multi(bad)
    assert isinstance(err, HostileInputError)
    assert "segments run 1 bounds: file name '../../bounds.npy'" in str(err)
    err = _multi(lambda d: d["segments"]["runs"][0].update(table_size=3))
    assert "segments run 0: table_size 3 must be a power of two" in str(err)


def test_an_empty_variable_needs_no_shard() -> None:
    m = manifest(variables={"data": variable(shape=(0, 4), shards=())}, segments=None)
    assert parse_manifest(m.dumps(), "m").variables["data"].shards == ()


def test_a_huge_count_of_rows_is_refused_before_anything_is_mapped() -> None:
    m = manifest(variables={"data": variable(dtype="<f8", shape=(2**60, 4))}, segments=None)
    with pytest.raises(HostileInputError, match="needs more than 2\\*\\*62 bytes"):
        parse_manifest(m.dumps(), "m")


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("f4", "<f4"),
        (">f8", "<f8"),
        (">i2", "<i2"),
        (np.uint16, "<u2"),
        (bool, "|b1"),
        (">M8[ns]", "<M8[ns]"),
        ("m8[s]", "<m8[s]"),
        (">U5", "<U5"),
        ("S3", "|S3"),
        ("c16", "<c16"),
    ],
)
def test_dtypes_are_stored_little_endian(given: Any, stored: str) -> None:
    dt = normalize_dtype(given)
    assert dt.byteorder in "<|="
    assert dtype_to_str(dt) == stored
    assert dtype_from_manifest(stored, "w") == dt


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (object, "cannot be stored: bigarray keeps plain numeric"),
        ([("a", "<i4"), ("b", "<f8")], "split structured arrays into variables"),
        ("V8", "cannot be stored"),
        ("(2,)f4", "cannot be stored"),
        ("U", "has zero width; give strings a length, e.g. 'U16'"),
        ("S0", "has zero width"),
        ("float99", "'float99' is not a numpy dtype"),
    ],
)
def test_dtypes_a_store_cannot_hold_are_refused(given: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(message)):
        normalize_dtype(given)


@pytest.mark.parametrize(
    "text", ["|O", "O", "V8", "<f4,<i4", "(2,)<f4", "[('a', '<i4')]", "<f16", "<i3", 7, None]
)
def test_manifest_dtypes_are_plain_types_only(text: Any) -> None:
    with pytest.raises(HostileInputError, match="w: dtype .* is not a plain numeric"):
        dtype_from_manifest(text, "w")


@pytest.mark.parametrize("text", ["<U0", "<M8[xx]", "<U99999999999", "<M8[99999999999999999999ns]"])
def test_manifest_dtypes_numpy_refuses_are_hostile_input(text: str) -> None:
    with pytest.raises(HostileInputError, match="^w: "):
        dtype_from_manifest(text, "w")


@given(_DTYPES)
def test_every_stored_dtype_reads_back_from_its_manifest_spelling(text: str) -> None:
    dt = dtype_from_manifest(text, "w")
    assert dtype_to_str(dt) == text
    assert dtype_from_manifest(dtype_to_str(dt.newbyteorder(">")), "w") == dt


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path", ["data.npy", "index/g7-names.npy", "a/b/c_d-e.f", "x" * 255, "/".join(["y" * 200] * 5)]
)
def test_plain_relative_paths_are_accepted(path: str) -> None:
    assert check_relpath(path, "w") == path


@pytest.mark.parametrize(
    "path",
    [
        "../x.npy",
        "/etc/passwd",
        "a/../../x",
        ".",
        "..",
        "./data.npy",
        "a//b",
        "data.npy/",
        "C:\\x.npy",
        "data\x00.npy",
        "dätä.npy",
        "~/x",
        " data.npy",
        "",
        "x" * 256,
        "/".join(["y" * 200] * 6),  # over 1024 characters
        None,
        3,
        ["data.npy"],
    ],
)
def test_paths_that_could_leave_the_store_are_refused(path: Any) -> None:
    with pytest.raises(HostileInputError, match="^w: file name .* is not a plain relative path"):
        check_relpath(path, "w")


# --------------------------------------------------------------------------- .npy


def _read_header(raw: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    f = io.BytesIO(raw)
    assert np.lib.format.read_magic(f) == (1, 0)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    return shape, fortran, dtype, f.tell()


@pytest.mark.parametrize("dtype", ["<f4", "<i8", "|b1", "<M8[ns]", "<U7", "|S3", "<c16"])
@pytest.mark.parametrize("shape", [(0,), (5,), (3, 4), (2, 1, 7)])
def test_npy_header_is_a_standard_v1_header(dtype: str, shape: tuple[int, ...]) -> None:
    raw = npy_header(np.dtype(dtype), shape)
    got_shape, fortran, got_dtype, end = _read_header(raw)
    assert got_shape == shape and not fortran and got_dtype == np.dtype(dtype)
    assert end == len(raw) and len(raw) % 64 == 0, "data starts aligned, right after the header"


@given(_DTYPES, st.lists(st.integers(0, 10**6), max_size=3), st.integers(0, 10**20 - 1))
def test_the_row_count_can_be_rewritten_in_place(
    dtype: str, trailing: list[int], rows: int
) -> None:
    """The header of 0 rows and of any row count up to 20 digits have the same length, so a
    commit rewrites the row count without moving the data."""
    empty = npy_header(np.dtype(dtype), (0, *trailing))
    full = npy_header(np.dtype(dtype), (rows, *trailing))
    assert len(empty) == len(full)
    assert _read_header(full)[0] == (rows, *trailing)


def test_every_row_count_up_to_20_digits_fits_the_header_of_an_empty_array() -> None:
    """Header lengths at every distance from a 64-byte boundary: the padding always leaves
    room for 20 digits, so a commit never needs to move the data."""
    for dtype in ("<f4", "<M8[ns]", "<U123"):
        for ndim in range(0, 6):
            for digits in range(1, 9):
                trailing = (10 ** (digits - 1),) * ndim
                empty = npy_header(np.dtype(dtype), (0, *trailing))
                for rows in (10**19, 10**20 - 1):
                    full = npy_header(np.dtype(dtype), (rows, *trailing))
                    assert len(full) == len(empty), (dtype, trailing, rows)
                    assert _read_header(full)[0] == (rows, *trailing)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype="<f4").reshape(6, 4),
        np.array([True, False, True]),
        np.arange(5).astype("<M8[ns]"),
        np.arange(3).astype("<m8[s]"),
        np.array(["a", "bcd", "éé"], "<U3"),
        np.array([b"x", b"yz"], "|S2"),
        np.zeros((0, 3), "<i2"),
        np.arange(12, dtype="<i8").reshape(3, 4)[:, ::2],  # not contiguous: written C order
    ],
)
def test_save_npy_writes_a_file_numpy_loads(tmp_path: Path, array: np.ndarray) -> None:
    path = str(tmp_path / "a.npy")
    offset = save_npy(path, array, fsync=True)
    loaded = np.load(path, mmap_mode="r")
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)
    assert offset == len(npy_header(array.dtype, array.shape))
    assert Path(path).read_bytes()[offset:] == np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(10, dtype="<f8"),
        np.arange(6).astype("<M8[D]").reshape(2, 3),
        np.arange(6).astype("<m8[ns]"),
        np.array(["ab", "c"], "<U2"),
        np.array([True, False]),
        np.zeros(0, "<f4"),
    ],
)
def test_as_bytes_is_the_raw_data_without_a_copy(array: np.ndarray) -> None:
    view = as_bytes(array)
    assert view.format == "B" and view.nbytes == array.nbytes
    assert bytes(view) == array.tobytes()
    if array.size:
        array.reshape(-1).view(np.uint8)[0] ^= 0xFF  # the view sees the change: no copy
        assert bytes(view) == array.tobytes()


def test_byte_view_is_the_array_buffer() -> None:
    a = np.arange(6, dtype="<i4").reshape(2, 3)
    view = byte_view(a)
    assert view.shape == (2, 3) and view.nbytes == 24
    assert view.cast("B").cast("i").tolist() == [0, 1, 2, 3, 4, 5]
    a[1, 2] = 99
    assert view[1, 2] == 99
    assert not byte_view(a[:, ::2]).c_contiguous


def test_every_refusal_is_a_bigarray_error() -> None:
    for exc in (FormatError, HostileInputError, SchemaError):
        assert issubclass(exc, BigArrayError)
