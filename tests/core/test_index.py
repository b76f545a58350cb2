"""The segment index on its own (``bigarray.core.index``): the arrays, merges and their
refusals, the on-disk hash table, runs and indexes of several runs, the commit plan and its
merge policy, and the files a run is written to.

``test_index_runs.py`` checks runs through the writers and readers of whole stores; here the
module's functions are driven directly, and indexes are loaded back from the files written.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigarray.core.format import INDEX_ROLES, IndexFiles, index_of_runs
from bigarray.core.index import (
    MERGE_FACTOR,
    IndexRun,
    SegmentArrays,
    SegmentIndex,
    build_table,
    concat,
    drop_unused_runs,
    follow_in_rows,
    index_arrays,
    index_nbytes,
    merge,
    plan_commit,
    row_order,
    table_size,
    write_concat,
    write_index,
)
from bigarray.errors import (
    BigArrayError,
    DuplicateSegmentError,
    OverlapError,
    SchemaError,
    SegmentNotFoundError,
    StoreCorruptedError,
)

#: two names with one crc32: a lookup must compare the bytes, not trust the hash
COLLIDE = ("plumless", "buckeroo")
assert zlib.crc32(COLLIDE[0].encode()) == zlib.crc32(COLLIDE[1].encode())


def segs(pairs: dict[str, tuple[int, int]]) -> SegmentArrays:
    """SegmentArrays of ``{name: (start, stop)}`` in the dict's order."""
    bounds = np.array(list(pairs.values()), np.int64).reshape(-1, 2)
    return SegmentArrays.from_names(list(pairs), bounds[:, 0], bounds[:, 1])


def back_to_back(names: Sequence[str], start: int = 0, size: int = 3) -> SegmentArrays:
    """Segments of ``size`` rows each, one after the other from ``start``."""
    return segs({n: (start + size * i, start + size * (i + 1)) for i, n in enumerate(names)})


def as_dict(seg: SegmentArrays) -> dict[str, tuple[int, int]]:
    return {seg.name(i): (int(a), int(b)) for i, (a, b) in enumerate(seg.bounds)}


def load(store_dir: str | Path, spec: IndexFiles, *, mapped: bool = False) -> SegmentIndex:
    """Open the index files named by ``spec`` as a reader does (bytes, or memory maps)."""
    runs = []
    for r in spec.all_runs:
        buffers: dict[str, bytes | mmap.mmap] = {}
        for role in INDEX_ROLES:
            full = os.path.join(store_dir, r.files[role])
            if mapped:
                with open(full, "rb") as f:
                    buffers[role] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            else:
                buffers[role] = Path(full).read_bytes()
        runs.append(IndexRun(buffers, r, str(store_dir)))
    return SegmentIndex(runs, spec)


def in_memory(*parts: SegmentArrays) -> SegmentIndex:
    """An index of one in-memory run per part (each part in row order)."""
    return SegmentIndex([IndexRun.from_arrays(row_order(p)) for p in parts])


# --------------------------------------------------------------------------- SegmentArrays


def test_from_names_encodes_names_offsets_bounds_and_hashes() -> None:
    names = ["a", "", "ünï-名前", "\udcff"]  # a lone surrogate survives (surrogatepass)
    seg = SegmentArrays.from_names(names, np.array([0, 5, 5, 9]), np.array([5, 5, 9, 12]))
    raw = [n.encode("utf-8", "surrogatepass") for n in names]
    assert seg.count == 4
    assert seg.names.dtype == np.uint8 and seg.names.tobytes() == b"".join(raw)
    assert seg.name_offsets.tolist() == [0, 1, 1, 1 + len(raw[2]), 1 + len(raw[2]) + 3]
    assert seg.bounds.tolist() == [[0, 5], [5, 5], [5, 9], [9, 12]]
    assert seg.hashes.dtype == np.uint32
    assert seg.hashes.tolist() == [zlib.crc32(r) for r in raw]
    assert [seg.name(i) for i in range(4)] == names


@pytest.mark.parametrize("bad", [1, b"a", None, ("a",)])
def test_names_must_be_str(bad: object) -> None:
    with pytest.raises(SchemaError, match="names must be str"):
        SegmentArrays.from_names(["ok", bad], np.array([0, 1]), np.array([1, 2]))  # type: ignore[list-item]


def test_empty_arrays_have_one_offset_and_no_rows() -> None:
    e = SegmentArrays.empty()
    assert e.count == 0 and e.name_offsets.tolist() == [0]
    assert e.bounds.shape == (0, 2) and e.names.size == 0 and e.hashes.size == 0


def test_take_reorders_and_subsets_names_with_their_bounds() -> None:
    seg = back_to_back(["alpha", "b", "", "delta-δ", "e"])
    picked = seg.take(np.array([3, 0, 2]))
    assert as_dict(picked) == {"delta-δ": (9, 12), "alpha": (0, 3), "": (6, 9)}
    assert list(as_dict(picked)) == ["delta-δ", "alpha", ""]
    assert picked.hashes.tolist() == [seg.hashes[3], seg.hashes[0], seg.hashes[2]]
    assert seg.take(np.array([], np.int64)).count == 0


def test_concat_shifts_name_offsets_and_skips_empty_parts() -> None:
    a, b = back_to_back(["x", "yy"]), back_to_back(["zzz"], start=6)
    both = concat([SegmentArrays.empty(), a, SegmentArrays.empty(), b])
    assert as_dict(both) == {"x": (0, 3), "yy": (3, 6), "zzz": (6, 9)}
    assert both.name_offsets.tolist() == [0, 1, 3, 6]
    assert concat([a]) is a
    assert concat([]).count == 0 and concat([SegmentArrays.empty()] * 3).count == 0


def test_a_damaged_name_is_store_corruption_not_a_unicode_error() -> None:
    ok = back_to_back(["ok", "ab"])
    seg = SegmentArrays(ok.names.copy(), ok.name_offsets, ok.bounds, ok.hashes)
    seg.names[2:4] = [0xFF, 0xFE]
    assert seg.name(0) == "ok"
    with pytest.raises(StoreCorruptedError, match="segment #1 has a name that is not UTF-8"):
        seg.name(1)


# --------------------------------------------------------------------------- merge


def test_merge_returns_row_order() -> None:
    new = segs({"c": (6, 9), "a": (0, 2), "b": (2, 6)})
    merged = merge(SegmentArrays.empty(), new)
    assert list(as_dict(merged)) == ["a", "b", "c"]
    assert as_dict(merged) == as_dict(new)


def test_merge_of_appends_keeps_the_arrays_as_they_are() -> None:
    committed = back_to_back(["a", "b"])
    new = back_to_back(["c"], start=6)
    merged = merge(committed, new)
    assert as_dict(merged) == {"a": (0, 3), "b": (3, 6), "c": (6, 9)}


def test_a_segment_committed_again_is_dropped() -> None:
    """Same name, same rows: a retried task or a replayed journal adds nothing."""
    committed = back_to_back(["a", "b", "c"])
    new = segs({"b": (3, 6), "d": (9, 10)})
    merged = merge(committed, new)
    assert as_dict(merged) == {"a": (0, 3), "b": (3, 6), "c": (6, 9), "d": (9, 10)}
    assert merged.count == 4


def test_the_same_name_with_other_rows_is_a_duplicate() -> None:
    with pytest.raises(DuplicateSegmentError) as info:
        merge(back_to_back(["a", "b"]), segs({"b": (10, 12)}), " in store s")
    msg = str(info.value)
    assert "segment name 'b' is used twice: rows [3, 6) and [10, 12) in store s" in msg
    assert "Give every segment a unique name" in msg
    assert isinstance(info.value, BigArrayError) and isinstance(info.value, KeyError)


def test_names_sharing_a_crc32_are_different_segments() -> None:
    a, b = COLLIDE
    merged = merge(SegmentArrays.empty(), segs({a: (0, 2), b: (2, 4)}))
    assert as_dict(merged) == {a: (0, 2), b: (2, 4)}
    with pytest.raises(DuplicateSegmentError, match=f"'{b}' is used twice"):
        merge(merged, segs({b: (4, 5)}))


def test_segments_sharing_rows_overlap() -> None:
    with pytest.raises(OverlapError) as info:
        merge(back_to_back(["a", "b"]), segs({"c": (5, 8)}), " (hint)")
    msg = str(info.value)
    assert "segments 'b' rows [3, 6) and 'c' rows [5, 8) overlap (hint)" in msg
    assert "start_position" in msg


def test_empty_segments_overlap_nothing() -> None:
    merged = merge(back_to_back(["a", "b"]), segs({"e1": (4, 4), "e2": (0, 0), "e3": (6, 6)}))
    assert list(as_dict(merged)) == ["e2", "a", "b", "e1", "e3"]
    assert as_dict(merged)["e1"] == (4, 4) and merged.count == 5


def test_a_segment_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(SchemaError, match="segment 'r' has stop 2 < start 5"):
        merge(SegmentArrays.empty(), segs({"ok": (0, 1), "r": (5, 2)}))


# --------------------------------------------------------------------------- the hash table


@pytest.mark.parametrize(("n", "size"), [(0, 8), (1, 8), (4, 8), (5, 16), (8, 16), (9, 32)])
def test_table_size_is_a_power_of_two_of_at_least_twice_the_segments(n: int, size: int) -> None:
    assert table_size(n) == size


def _probe(table: np.ndarray, h: int, want: int) -> int:
    """Slots probed from ``h``'s home slot until ``want``; fails on an empty slot first."""
    mask = len(table) - 1
    slot, steps = h & mask, 0
    while table[slot] != want:
        assert table[slot] != -1, f"segment {want} is not reachable from its home slot"
        slot, steps = (slot + 1) & mask, steps + 1
    return steps


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1) | st.sampled_from([0, 7, 2**32 - 1]), max_size=300))
def test_every_segment_is_reachable_by_linear_probing(hashes: list[int]) -> None:
    h = np.array(hashes, np.uint32)
    table = build_table(h)
    assert len(table) == table_size(len(h))
    assert sorted(table[table >= 0].tolist()) == list(range(len(h)))  # each exactly once
    assert int((table == -1).sum()) == len(table) - len(h)
    for i, v in enumerate(hashes):
        _probe(table, v, i)


def test_build_table_fills_a_given_output_array() -> None:
    h = np.array([1, 9, 17, 3], np.uint32)  # three share home slot 1 of 8
    out = np.zeros(8, np.int64)
    table = build_table(h, out=out)
    assert table is out
    assert sorted(table[1:5].tolist()) == [0, 1, 2, 3]  # slots 1..4: a probe chain
    assert table[[0, 5, 6, 7]].tolist() == [-1] * 4
    for i, v in enumerate(h.tolist()):
        _probe(table, v, i)


def test_index_arrays_have_the_on_disk_dtypes() -> None:
    arrays = index_arrays(back_to_back(["a", "b", "c"]))
    assert list(arrays) == list(INDEX_ROLES)
    assert {r: str(a.dtype) for r, a in arrays.items()} == {
        "names": "uint8",
        "name_offsets": "int64",
        "bounds": "int64",
        "hashes": "uint32",
        "table": "int64",
    }
    assert all(a.flags.c_contiguous for a in arrays.values())
    assert len(arrays["table"]) == 8


# --------------------------------------------------------------------------- runs


def test_a_run_finds_each_name_and_nothing_else() -> None:
    names = ["a", "", "ünï", *COLLIDE, "\udcff"]
    run = IndexRun.from_arrays(back_to_back(names))
    assert len(run) == len(names)
    assert [run.find(n) for n in names] == list(range(len(names)))
    for missing in ["b", "plumles", "A", " a"]:
        assert run.find(missing) == -1
    assert run.find(7) == -1  # type: ignore[arg-type]
    assert run.find_key("ünï".encode(), zlib.crc32("ünï".encode())) == 2


def test_match_probes_all_new_names_at_once() -> None:
    run = IndexRun.from_arrays(back_to_back(["a", "b", COLLIDE[0]]))
    new = segs({"x": (0, 1), "b": (9, 9), COLLIDE[1]: (1, 2), COLLIDE[0]: (3, 3), "a": (0, 0)})
    assert run.match(new).tolist() == [-1, 1, -1, 2, 0]
    assert run.match(SegmentArrays.empty()).tolist() == []
    assert IndexRun.from_arrays(SegmentArrays.empty()).match(new).tolist() == [-1] * 5


def test_first_overlap_finds_the_first_range_sharing_rows() -> None:
    # rows: a [0, 3), empty e [3, 3), b [3, 6), c [10, 12)
    run = IndexRun.from_arrays(segs({"a": (0, 3), "e": (3, 3), "b": (3, 6), "c": (10, 12)}))
    assert run.first_overlap(np.array([[6, 10], [12, 20], [3, 3]])) is None
    assert run.first_overlap(np.array([[6, 10], [5, 7]])) == (1, 2)
    assert run.first_overlap(np.array([[11, 11], [7, 11], [0, 1]])) == (1, 3)
    assert run.first_overlap(np.array([[2, 4]])) in {(0, 0), (0, 2)}
    assert run.first_overlap(np.zeros((0, 2), np.int64)) is None
    # an empty segment inside the rows of another is stepped over
    inside = IndexRun.from_arrays(segs({"big": (0, 10), "e": (5, 5)}))
    assert inside.first_overlap(np.array([[6, 7]])) == (0, 0)


def test_a_run_whose_files_are_short_is_corrupted() -> None:
    arrays = index_arrays(back_to_back(["a", "b", "c"]))
    spec = IndexFiles(3, 1, 8, {}, dict.fromkeys(INDEX_ROLES, 0))
    buffers = {r: a.tobytes() for r, a in arrays.items()}
    IndexRun(buffers, spec, "s")  # as written: fine
    for role in INDEX_ROLES:
        short = {**buffers, role: buffers[role][:-1]}
        if role == "names":  # a name shorter than its offset says
            short = {**buffers, role: b""}
        with pytest.raises(StoreCorruptedError, match="^s: the segment index files are shorter"):
            IndexRun(short, spec, "s")


def test_name_offsets_that_go_backwards_are_corrupted() -> None:
    arrays = index_arrays(back_to_back(["aa", "bb", "cc"]))
    spec = IndexFiles(3, 1, 8, {}, dict.fromkeys(INDEX_ROLES, 0))
    for bad in ([0, 2, 1, 6], [1, 2, 4, 6]):
        buffers = {r: a.tobytes() for r, a in arrays.items()}
        buffers["name_offsets"] = np.array(bad, "<i8").tobytes()
        with pytest.raises(StoreCorruptedError, match="segment name offsets are not increasing"):
            IndexRun(buffers, spec, "s")


# --------------------------------------------------------------------------- SegmentIndex


def test_an_index_of_several_runs_answers_as_one_mapping() -> None:
    old = back_to_back([f"o{i}" for i in range(20)])
    mid = back_to_back(["m0", COLLIDE[0]], start=60)
    new = back_to_back([COLLIDE[1], "n"], start=66)
    idx = in_memory(old, mid, new)
    expected = {**as_dict(old), **as_dict(mid), **as_dict(new)}
    assert len(idx) == 24 and dict(idx) == expected
    for name, b in expected.items():
        assert idx[name] == b and name in idx
    assert list(idx) == list(expected)  # row order
    assert [idx.find(n) for n in expected] == list(range(24))
    assert [tuple(b) for b in idx.bounds.tolist()] == list(expected.values())
    assert idx.starts.tolist() == [a for a, _ in expected.values()]
    assert idx.stops.tolist() == [b for _, b in expected.values()]
    assert idx.names_list() == list(expected)
    assert list(idx.items()) == list(expected.items())
    assert list(idx.items()) == list(idx.items()), "items() is a reusable view"
    assert repr(idx) == "<SegmentIndex 24 segments in 3 runs>"
    assert as_dict(idx.arrays) == expected


def test_runs_out_of_row_order_are_read_in_row_order() -> None:
    late = back_to_back(["x", "y"], start=100)
    early = back_to_back(["a", "b", "c"])
    middle = back_to_back(["m"], start=50)
    idx = in_memory(late, early, middle)
    assert list(idx) == ["a", "b", "c", "m", "x", "y"]
    assert [idx.find(n) for n in ["a", "b", "c", "m", "x", "y"]] == list(range(6))
    assert idx.bounds[:, 0].tolist() == [0, 3, 6, 50, 100, 103]
    assert idx["y"] == (103, 106)


def test_runs_interleaved_in_rows_are_merged_into_row_order() -> None:
    odd = segs({"r1": (1, 2), "r3": (3, 4), "r5": (5, 6)})
    even = segs({"r0": (0, 1), "r2": (2, 3), "r4": (4, 5)})
    idx = in_memory(odd, even)
    assert list(idx) == [f"r{i}" for i in range(6)]
    assert [idx.find(f"r{i}") for i in range(6)] == list(range(6))
    assert idx.bounds.tolist() == [[i, i + 1] for i in range(6)]


@pytest.mark.parametrize("interleaved", [False, True])
def test_bounds_of_several_runs_come_in_row_order_before_any_name_is_gathered(
    interleaved: bool,
) -> None:
    if interleaved:
        parts = [segs({"r1": (1, 2), "r3": (3, 4)}), segs({"r0": (0, 1), "r2": (2, 3)})]
    else:
        parts = [back_to_back(["r2", "r3"], start=2, size=1), back_to_back(["r0", "r1"], size=1)]
    idx = in_memory(*parts)
    assert idx.bounds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]  # first use: bounds only
    assert idx.starts.tolist() == [0, 1, 2, 3] and idx.stops.tolist() == [1, 2, 3, 4]
    assert list(idx) == ["r0", "r1", "r2", "r3"]
    assert SegmentIndex([IndexRun.from_arrays(SegmentArrays.empty())] * 2).bounds.shape == (0, 2)


def test_a_missing_name_says_how_many_segments_there_are() -> None:
    idx = in_memory(back_to_back(["first", "second"]), back_to_back(["third"], start=6))
    with pytest.raises(SegmentNotFoundError, match="no segment named 'nope' among 3 segments"):
        idx["nope"]
    with pytest.raises(KeyError, match="one is 'first'"):
        idx["nope"]
    with pytest.raises(SegmentNotFoundError, match="segment names are str; got 3 of type int"):
        idx[3]  # type: ignore[index]
    assert 3 not in idx and b"first" not in idx and "nope" not in idx
    assert idx.find("nope") == -1 and idx.find(3) == -1  # type: ignore[arg-type]
    assert idx.get("nope") is None and idx.get("third") == (6, 9)


def test_an_index_of_no_runs_is_empty() -> None:
    idx = SegmentIndex([])
    assert len(idx) == 0 and list(idx) == [] and "a" not in idx
    assert idx.bounds.shape == (0, 2)
    with pytest.raises(SegmentNotFoundError, match="among 0 segments$"):
        idx["a"]


def test_match_and_first_overlap_look_in_every_run() -> None:
    idx = in_memory(back_to_back(["a", "b"]), back_to_back(["c"], start=20))
    new = segs({"c": (20, 23), "z": (30, 31), "a": (0, 3)})
    assert idx.match(new).tolist() == [[20, 23], [-1, -1], [0, 3]]
    assert idx.first_overlap(np.array([[6, 20], [22, 25]])) == (1, "c", 20, 23)
    assert idx.first_overlap(np.array([[6, 20], [23, 25]])) is None


def test_first_overlap_of_several_runs_is_the_first_range_of_all() -> None:
    """The first range sharing rows with any run, not the first range of the first run
    with a clash (the commit's error names that range)."""
    idx = in_memory(back_to_back(["old"], size=10), back_to_back(["new"], start=20, size=10))
    assert idx.first_overlap(np.array([[25, 26], [5, 6]])) == (0, "new", 20, 30)
    assert idx.first_overlap(np.array([[10, 20], [5, 6], [25, 26]])) == (1, "old", 0, 10)


def _brute_overlaps(committed: dict[str, tuple[int, int]], a: int, b: int) -> set[str]:
    return {n for n, (s, e) in committed.items() if e > s and b > a and s < b and a < e}


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 6)), min_size=1, max_size=12),
    st.lists(st.tuples(st.integers(0, 70), st.integers(0, 8)), max_size=8),
    st.integers(1, 3),
)
def test_first_overlap_agrees_with_a_brute_force_search(
    starts: list[tuple[int, int]], queries: list[tuple[int, int]], nruns: int
) -> None:
    committed: dict[str, tuple[int, int]] = {}
    taken: set[int] = set()
    for k, (s, n) in enumerate(starts):  # keep the committed segments disjoint
        rows = set(range(s, s + n))
        if not rows & taken:
            taken |= rows
            committed[f"c{k}"] = (s, s + n)
    items = list(committed.items())
    parts = [segs(dict(items[r::nruns])) for r in range(nruns)]
    idx = in_memory(*parts)
    bounds = np.array([(a, a + n) for a, n in queries], np.int64).reshape(-1, 2)
    clashes = [i for i, (a, b) in enumerate(bounds.tolist()) if _brute_overlaps(committed, a, b)]
    hit = idx.first_overlap(bounds)
    if not clashes:
        assert hit is None
        return
    assert hit is not None
    i, name, s, e = hit
    assert i == clashes[0] and committed[name] == (s, e)
    assert name in _brute_overlaps(committed, *bounds[i].tolist())


# --------------------------------------------------------------------------- files


def test_write_index_writes_five_npy_files_of_its_generation(tmp_path: Path) -> None:
    seg = back_to_back(["a", "bb", "ccc"])
    written: list[str] = []
    spec = write_index(str(tmp_path), 7, seg, fsync=True, written=written.append)
    assert written == list(INDEX_ROLES)
    assert spec.count == 3 and spec.generation == 7 and spec.table_size == 8
    assert spec.files == {r: f"index/g7-{r}.npy" for r in INDEX_ROLES}
    arrays = index_arrays(seg)
    for role in INDEX_ROLES:
        on_disk = np.load(tmp_path / spec.files[role])
        np.testing.assert_array_equal(on_disk, arrays[role])
        assert on_disk.dtype == arrays[role].dtype
        size = os.path.getsize(tmp_path / spec.files[role])
        assert size - spec.offsets[role] == index_nbytes(spec, role, len(seg.names))


@pytest.mark.parametrize("mapped", [False, True])
def test_an_index_loads_back_from_its_files(tmp_path: Path, mapped: bool) -> None:
    seg = segs({"b": (4, 9), "a": (0, 4), "": (9, 9), COLLIDE[0]: (9, 12), COLLIDE[1]: (12, 13)})
    spec = write_index(str(tmp_path), 1, merge(SegmentArrays.empty(), seg), fsync=False)
    idx = load(tmp_path, spec, mapped=mapped)
    assert dict(idx) == as_dict(seg)
    assert list(idx) == ["a", "b", "", COLLIDE[0], COLLIDE[1]]
    idx.release()


def test_write_concat_writes_the_same_arrays_as_write_index(tmp_path: Path) -> None:
    parts = [
        back_to_back([f"p{i}" for i in range(7)]),
        SegmentArrays.empty(),
        back_to_back(["ünï", "q"], start=21),
        back_to_back([f"r{i}" for i in range(5)], start=27),
    ]
    assert follow_in_rows(parts)
    written: list[str] = []
    streamed = write_concat(str(tmp_path), 4, parts, fsync=True, written=written.append, block=3)
    direct = write_index(str(tmp_path / "d"), 4, concat(parts), fsync=False)
    assert sorted(written) == sorted(INDEX_ROLES)
    assert (streamed.count, streamed.table_size, streamed.files) == (
        direct.count,
        direct.table_size,
        direct.files,
    )
    for role in INDEX_ROLES:
        np.testing.assert_array_equal(
            np.load(tmp_path / streamed.files[role]), np.load(tmp_path / "d" / direct.files[role])
        )
    assert dict(load(tmp_path, streamed)) == as_dict(concat(parts))


def test_follow_in_rows() -> None:
    a, b = back_to_back(["a"]), back_to_back(["b"], start=3)
    assert follow_in_rows([a, SegmentArrays.empty(), b])
    assert not follow_in_rows([b, a])
    assert follow_in_rows([]) and follow_in_rows([SegmentArrays.empty()])
    # an empty segment at the start of the next part's rows still follows
    assert follow_in_rows([a, segs({"e": (3, 3)}), b])


def test_row_order_sorts_by_start_then_stop() -> None:
    seg = segs({"c": (5, 9), "e2": (5, 5), "a": (0, 5), "e1": (0, 0)})
    assert list(as_dict(row_order(seg))) == ["e1", "a", "e2", "c"]
    ordered = back_to_back(["x", "y"])
    assert row_order(ordered) is ordered


def test_drop_unused_runs_deletes_only_other_generations(tmp_path: Path) -> None:
    specs = [write_index(str(tmp_path), g, back_to_back([f"s{g}"]), fsync=False) for g in (1, 2, 3)]
    (tmp_path / "index" / "notes.txt").write_text("mine")
    drop_unused_runs(str(tmp_path), index_of_runs(specs[1:2]), None, specs[2])
    left = sorted(os.listdir(tmp_path / "index"))
    assert left == sorted(["notes.txt", *(f"g{g}-{r}.npy" for g in (2, 3) for r in INDEX_ROLES)])
    drop_unused_runs(str(tmp_path / "nowhere"), specs[0])  # no index directory: nothing to do


# --------------------------------------------------------------------------- commits


def committed(tmp_path: Path, sizes: Sequence[int]) -> tuple[SegmentIndex, IndexFiles]:
    """An index of one run per size (oldest first), written and loaded back."""
    runs, pos = [], 0
    for g, n in enumerate(sizes, 1):
        runs.append(
            write_index(
                str(tmp_path), g, back_to_back([f"g{g}-{i}" for i in range(n)], pos), fsync=False
            )
        )
        pos += 3 * n
    spec = index_of_runs(runs)
    return load(tmp_path, spec), spec


def test_a_first_commit_keeps_nothing_and_merges_nothing() -> None:
    plan = plan_commit(None, None, segs({"b": (3, 5), "a": (0, 3)}))
    assert plan.previous is None and plan.keep == [] and plan.merged == []
    assert list(as_dict(plan.new)) == ["a", "b"] and plan.max_stop == 5


@pytest.mark.parametrize(
    ("sizes", "factor", "new", "kept"),
    [
        ([1000, 100, 10], MERGE_FACTOR, 5, 2),  # 10 <= 4 * 5: merged; 100 > 4 * 15: kept
        ([1000, 100, 10], MERGE_FACTOR, 1, 3),  # 10 > 4 * 1: nothing merged
        ([1000, 100, 10], MERGE_FACTOR, 25, 1),  # 10 <= 100, 100 <= 4 * 35; 1000 > 4 * 135
        ([1000, 100, 20], MERGE_FACTOR, 5, 1),  # at most 4 times: 20 <= 4 * 5, 100 <= 4 * 25
        ([1000, 100, 10], 10, 5, 0),  # 10 <= 50, 100 <= 150, 1000 <= 1150: all merged
    ],
)
def test_a_commit_merges_the_newest_runs_while_the_next_is_at_most_factor_times_bigger(
    tmp_path: Path, sizes: list[int], factor: int, new: int, kept: int
) -> None:
    idx, spec = committed(tmp_path, sizes)
    fresh = back_to_back([f"new{i}" for i in range(new)], start=3 * sum(sizes))
    plan = plan_commit(idx, spec, fresh, factor=factor)
    assert [r.count for r in plan.keep] == sizes[:kept]
    assert [len(r) for r in plan.merged] == sizes[kept:]
    assert plan.new.count == new and plan.previous is spec
    written = plan.write(str(tmp_path), 9, fsync=False)
    assert written is not None
    assert [r.count for r in written.all_runs] == [*sizes[:kept], new + sum(sizes[kept:])]
    assert written.all_runs[-1].generation == 9 and written.count == sum(sizes) + new
    after = load(tmp_path, written)
    assert dict(after) == {**dict(idx), **as_dict(fresh)}


def test_a_big_append_is_streamed_into_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past STREAM_MIN segments, an append merged with the newest runs is written through
    memory maps (write_concat); readers cannot tell."""
    import bigarray.core.index as index_module

    monkeypatch.setattr(index_module, "STREAM_MIN", 8)
    idx, spec = committed(tmp_path, [100, 6])
    fresh = back_to_back([f"n{i}" for i in range(5)], start=3 * 106)
    plan = plan_commit(idx, spec, fresh)
    assert [len(r) for r in plan.merged] == [6]
    written = plan.write(str(tmp_path), 3, fsync=False)
    assert written is not None and [r.count for r in written.all_runs] == [100, 11]
    after = load(tmp_path, written)
    assert dict(after) == {**dict(idx), **as_dict(fresh)}
    names = np.load(tmp_path / written.all_runs[-1].files["names"])
    assert names.tobytes() == b"".join(n.encode() for n in [*list(idx)[100:], *as_dict(fresh)])


def test_a_commit_of_segments_already_committed_writes_nothing(tmp_path: Path) -> None:
    idx, spec = committed(tmp_path, [8, 2])
    again = segs({"g1-3": idx["g1-3"], "g2-1": idx["g2-1"]})
    plan = plan_commit(idx, spec, again)
    assert plan.new.count == 0 and plan.max_stop == 0
    assert plan.write(str(tmp_path), 3, fsync=False) is spec
    assert not (tmp_path / "index" / "g3-names.npy").exists()


def test_a_commit_reusing_a_committed_name_is_refused(tmp_path: Path) -> None:
    idx, spec = committed(tmp_path, [8, 2])
    with pytest.raises(DuplicateSegmentError) as info:
        plan_commit(idx, spec, segs({"fresh": (30, 31), "g1-2": (40, 41)}), " in s")
    assert "segment name 'g1-2' is used twice: rows [6, 9) and [40, 41) in s" in str(info.value)


def test_a_commit_over_committed_rows_is_refused(tmp_path: Path) -> None:
    idx, spec = committed(tmp_path, [8, 2])  # rows 0..30
    with pytest.raises(OverlapError) as info:
        plan_commit(idx, spec, segs({"late": (40, 41), "over": (28, 33)}), " in s")
    msg = str(info.value)
    assert "segments 'g2-1' rows [27, 30) and 'over' rows [28, 33) overlap in s" in msg
    assert plan_commit(idx, spec, segs({"empty": (28, 28)})).new.count == 1


def test_a_commit_checks_its_own_segments_too(tmp_path: Path) -> None:
    idx, spec = committed(tmp_path, [4])
    twice = concat([segs({"x": (20, 21)}), segs({"x": (21, 22)})])
    with pytest.raises(DuplicateSegmentError, match="'x' is used twice"):
        plan_commit(idx, spec, twice)
    with pytest.raises(OverlapError, match="'p' rows \\[20, 25\\) and 'q' rows \\[22, 23\\)"):
        plan_commit(idx, spec, segs({"p": (20, 25), "q": (22, 23)}))


def test_an_index_that_does_not_match_its_manifest_entry_is_corrupted(tmp_path: Path) -> None:
    idx, spec = committed(tmp_path, [8, 2])
    with pytest.raises(StoreCorruptedError, match="does not match its manifest entry"):
        plan_commit(idx, spec.all_runs[0], back_to_back(["n"], start=100))


def _commit(
    tmp_path: Path, state: tuple[SegmentIndex | None, IndexFiles | None], g: int, new: SegmentArrays
) -> tuple[SegmentIndex, IndexFiles]:
    idx, spec = state
    plan = plan_commit(idx, spec, new)
    written = plan.write(str(tmp_path), g, fsync=False)
    assert written is not None
    drop_unused_runs(str(tmp_path), written, spec)
    return load(tmp_path, written), written


def test_many_small_commits_keep_runs_shrinking_by_more_than_the_factor(tmp_path: Path) -> None:
    state: tuple[SegmentIndex | None, IndexFiles | None] = (None, None)
    expected: dict[str, tuple[int, int]] = {}
    rewritten = 0
    for g in range(1, 201):
        new = back_to_back([f"c{g}-{i}" for i in range(5)], start=15 * g)
        expected.update(as_dict(new))
        plan = plan_commit(*state, new) if state[0] is not None else None
        rewritten += sum(len(r) for r in plan.merged) if plan is not None else 0
        state = _commit(tmp_path, state, g, new)
        counts = [r.count for r in state[1].all_runs]
        assert all(a > MERGE_FACTOR * b for a, b in zip(counts, counts[1:])), counts
    idx, spec = state
    assert dict(idx) == expected and spec.count == 1000
    assert len(spec.all_runs) <= np.log(1000 / 5) / np.log(MERGE_FACTOR) + 1
    assert rewritten / 1000 <= 2 * MERGE_FACTOR * np.log(1000 / 5) / np.log(MERGE_FACTOR)
    # only the files of the current runs and the previous index remain
    gens = {int(n.split("-")[0][1:]) for n in os.listdir(tmp_path / "index")}
    assert {r.generation for r in spec.all_runs} <= gens and len(gens) <= 2 * len(spec.all_runs) + 1


# --------------------------------------------------------------------------- Hypothesis


@st.composite
def _segment_sets(draw: st.DrawFn) -> dict[str, tuple[int, int]]:
    names = draw(st.lists(st.text(max_size=6) | st.sampled_from(COLLIDE), max_size=60, unique=True))
    lengths = draw(st.lists(st.integers(0, 5), min_size=len(names), max_size=len(names)))
    gaps = draw(st.lists(st.integers(0, 3), min_size=len(names), max_size=len(names)))
    out, pos = {}, 0
    for name, k, gap in zip(names, lengths, gaps):
        pos += gap
        out[name] = (pos, pos + k)
        pos += k
    return out


@settings(max_examples=60, deadline=None)
@given(_segment_sets(), st.randoms(use_true_random=False))
def test_any_segment_set_round_trips_through_the_files(
    tmp_path_factory: pytest.TempPathFactory, pairs: dict[str, tuple[int, int]], rnd: object
) -> None:
    items = list(pairs.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    shuffled = segs(dict(items))
    merged = merge(SegmentArrays.empty(), shuffled)
    d = tmp_path_factory.mktemp("idx")
    spec = write_index(str(d), 1, merged, fsync=False)
    idx = load(d, spec)
    assert len(idx) == len(pairs)
    for name, b in pairs.items():
        assert idx[name] == b
    assert dict(idx) == pairs
    rows = [b for _, b in sorted(pairs.items(), key=lambda kv: kv[1])]
    assert [tuple(b) for b in idx.bounds.tolist()] == rows
    for missing in ("\x00missing", "zz" * 5):
        assert missing not in idx


@settings(max_examples=40, deadline=None)
@given(_segment_sets(), st.lists(st.integers(1, 15), min_size=1, max_size=8))
def test_any_sequence_of_commits_keeps_every_segment_findable(
    tmp_path_factory: pytest.TempPathFactory, pairs: dict[str, tuple[int, int]], cuts: list[int]
) -> None:
    items = list(pairs.items())
    d = tmp_path_factory.mktemp("commits")
    state: tuple[SegmentIndex | None, IndexFiles | None] = (None, None)
    pos = 0
    for g, k in enumerate(cuts * 10, 1):
        if pos >= len(items):
            break
        state = _commit(d, state, g, segs(dict(items[pos : pos + k])))
        pos += k
    if state[0] is None:
        return
    idx, spec = state
    assert len(idx) == spec.count == len(items[:pos])
    assert dict(idx) == dict(items[:pos])
    assert [idx.find(n) for n in idx] == list(range(len(idx)))
    # committing everything again is a no-op
    assert plan_commit(idx, spec, segs(dict(items[:pos]))).new.count == 0


def _expected_refusal(entries: list[tuple[str, int, int]]) -> type[Exception] | None:
    """What merging ``entries`` must raise, found the slow way (None: nothing)."""
    seen: dict[str, tuple[int, int]] = {}
    for name, a, b in entries:
        if seen.setdefault(name, (a, b)) != (a, b):
            return DuplicateSegmentError
    rows = [(a, b) for a, b in seen.values() if b > a]
    for k, (a, b) in enumerate(rows):
        if any(a < d and c < b for c, d in rows[k + 1 :]):
            return OverlapError
    return None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "e", *COLLIDE]),
            st.integers(0, 30),
            st.integers(0, 4),
        ),
        max_size=8,
    ),
    st.integers(0, 8),
)
def test_merge_and_plan_commit_refuse_exactly_what_a_brute_force_search_finds(
    raw: list[tuple[str, int, int]], split: int
) -> None:
    entries = [(n, a, a + k) for n, a, k in raw]
    expected = _expected_refusal(entries)
    new = segs({}) if not entries else concat([segs({n: (a, b)}) for n, a, b in entries])
    if expected is None:
        merged = merge(SegmentArrays.empty(), new)
        want = {n: (a, b) for n, a, b in entries}
        assert as_dict(merged) == want
        assert merged.bounds.tolist() == sorted(merged.bounds.tolist())
    else:
        with pytest.raises(expected):
            merge(SegmentArrays.empty(), new)
    # the same segments in two commits: the second is checked against the first
    first, second = entries[:split], entries[split:]
    if _expected_refusal(first) is not None:
        return
    done = {n: (a, b) for n, a, b in first}
    refusal = _expected_refusal(second)  # the commit's own segments are checked first
    if refusal is None and any(done.get(n, (a, b)) != (a, b) for n, a, b in second):
        refusal = DuplicateSegmentError
    if refusal is None:
        fresh = [(a, b) for n, a, b in second if n not in done and b > a]
        if any(a < d and c < b for a, b in fresh for c, d in done.values() if d > c):
            refusal = OverlapError
    assert (refusal is None) == (expected is None)
    committed = in_memory(segs(done))
    spec = IndexFiles(len(committed), 1, 8, {}, {})
    again = concat([segs({}), *(segs({n: (a, b)}) for n, a, b in second)])
    if refusal is None:
        plan = plan_commit(committed, spec, again)
        assert {**done, **as_dict(plan.new)} == {n: (a, b) for n, a, b in entries}
        assert not set(as_dict(plan.new)) & set(done), "committed segments are dropped"
    else:
        with pytest.raises(refusal):
            plan_commit(committed, spec, again)


def test_a_full_damaged_table_ends_the_probe() -> None:
    """A table with no empty slot (damaged) must not loop forever; slots pointing past the
    run are ignored."""
    seg = back_to_back(["a", "b"])
    arrays = index_arrays(seg)
    spec = IndexFiles(2, 1, 8, {}, dict.fromkeys(INDEX_ROLES, 0))
    for fill in (0, 99):
        buffers = {r: a.tobytes() for r, a in arrays.items()}
        buffers["table"] = np.full(8, fill, "<i8").tobytes()
        run = IndexRun(buffers, spec, "s")
        assert run.find("zz") == -1
        assert run.match(segs({"zz": (9, 10)})).tolist() == [-1]
        assert run.find("a") == (0 if fill == 0 else -1)
