"""The segment index in runs: a commit writes one small run, lookups see every run, merges
keep the runs few, ``bigarray compact`` merges them into one, every run is checksummed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bigarray import PointerArray, PointerArrayWriter, StoreWriter
from bigarray.copy import copy_store
from bigarray.core.compact import compact
from bigarray.core.index import MERGE_FACTOR
from bigarray.core.store import Store, open_store, read_manifest
from bigarray.core.verify import verify_store
from bigarray.errors import DuplicateSegmentError, OverlapError


def seg(name: str) -> np.ndarray:
    """1 to 4 rows, a function of the name."""
    h = sum(name.encode())
    return np.full((1 + h % 4, 2), h, np.int32)


def append(path: Path, names: list[str], **kw: object) -> tuple[int, int]:
    with PointerArrayWriter(path, dtype="int32", **kw) as w:  # type: ignore[arg-type]
        return w.write({n: seg(n) for n in names})


def runs_of(path: Path) -> list[int]:
    spec = read_manifest(str(path)).segments
    assert spec is not None
    return [r.count for r in spec.all_runs]


def check_all(path: Path, names: list[str]) -> None:
    """Every name reads back its data; iteration and the arrays are in row order."""
    x = PointerArray(path)
    assert len(x.indices) == len(names)
    for n in names:
        np.testing.assert_array_equal(x[n], seg(n))
        assert n in x.indices
    b = x.indices.arrays.bounds
    assert bool(np.all(b[1:, 0] >= b[:-1, 0]))
    order = list(x.indices)
    assert [x.indices.find(n) for n in order] == list(range(len(order)))
    assert "nope" not in x.indices and x.indices.find("nope") == -1


def test_commit_writes_a_small_run_and_leaves_older_runs_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s"
    first = [f"a{i}" for i in range(1000)]
    append(path, first)
    spec = read_manifest(str(path)).segments
    assert spec is not None and not spec.runs  # one run: the manifest form older readers know
    old_files = {path / spec.files[r]: (path / spec.files[r]).stat() for r in spec.files}
    append(path, ["b0", "b1", "b2"])
    assert runs_of(path) == [1000, 3]
    for f, st in old_files.items():  # the big run was neither rewritten nor touched
        assert f.stat().st_ino == st.st_ino and f.stat().st_mtime_ns == st.st_mtime_ns
    check_all(path, [*first, "b0", "b1", "b2"])
    assert verify_store(path).ok


def test_many_small_commits_keep_few_runs(tmp_path: Path) -> None:
    path = tmp_path / "s"
    names: list[str] = []
    most = 0
    for c in range(120):
        batch = [f"c{c}-{j}" for j in range(5)]
        append(path, batch)
        names += batch
        most = max(most, len(runs_of(path)))
        sizes = runs_of(path)
        # from oldest to newest every run is more than MERGE_FACTOR times the next
        assert all(a > MERGE_FACTOR * b for a, b in zip(sizes, sizes[1:])), sizes
    assert most <= math.log(len(names) / 5, MERGE_FACTOR) + 2
    check_all(path, names)
    assert verify_store(path).ok


def test_duplicate_name_in_an_older_run_is_refused_and_same_segment_is_idempotent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(100)])
    append(path, ["b"])
    with pytest.raises(DuplicateSegmentError, match="'a7' is (used twice|already committed)"):
        append(path, ["a7", "new"])
    # a retried commit of a committed segment (same name, same rows) adds nothing
    start, stop = PointerArray(path).indices["a3"]
    with StoreWriter(path) as w:
        w.name_rows(["a3"], [start], [stop])
    assert len(PointerArray(path).indices) == 101
    assert runs_of(path) == [100, 1]


def test_crc32_collision_across_runs_is_told_apart_by_bytes(tmp_path: Path) -> None:
    """'plumless' and 'buckeroo' share a crc32: the probe must compare the names."""
    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(200)] + ["plumless"])
    append(path, ["buckeroo"])
    x = PointerArray(path)
    assert x.indices["plumless"] != x.indices["buckeroo"]
    np.testing.assert_array_equal(x["buckeroo"], seg("buckeroo"))
    with pytest.raises(DuplicateSegmentError, match="buckeroo"):
        append(path, ["buckeroo"], remove_exist=False)


def test_overlap_with_an_older_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(100)])
    append(path, ["b"])
    a5 = PointerArray(path).indices["a5"]
    w = StoreWriter(path)
    w.name_rows(["hole"], [a5[0]], [a5[0] + 1])
    with pytest.raises(OverlapError, match="'a5'"):
        w.flush()
    w.discard()


def test_runs_written_out_of_row_order_still_read_in_row_order(tmp_path: Path) -> None:
    """Segments written into rows left free by earlier commits interleave the runs."""
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int32") as w:
        w.write({f"hi{i}": seg(f"hi{i}") for i in range(300)}, start_position=10_000)
    with PointerArrayWriter(path) as w:
        w.write({f"lo{i}": seg(f"lo{i}") for i in range(3)}, start_position=0)
    with PointerArrayWriter(path) as w:
        w.write({"mid": seg("mid")}, start_position=5000)
    assert len(runs_of(path)) >= 2
    names = [f"lo{i}" for i in range(3)] + ["mid"] + [f"hi{i}" for i in range(300)]
    check_all(path, names)
    assert list(PointerArray(path).indices)[:4] == names[:4]
    import dask

    from bigarray.dask_backend import map_segments

    got = dict(map_segments(len, str(path), chunks=4000).compute(scheduler="sync"))
    assert got == {n: len(seg(n)) for n in names}
    with dask.config.set(scheduler="sync"):
        assert verify_store(path).ok
    compact(str(path))  # interleaved runs: merged in memory and sorted
    assert len(runs_of(path)) == 1
    check_all(path, names)
    assert verify_store(path).ok


def test_compact_merges_runs_into_one_and_readers_and_verify_follow(tmp_path: Path) -> None:
    path = tmp_path / "s"
    names: list[str] = []
    for c in range(6):
        batch = [f"c{c}-{j}" for j in range(30 * (6 - c))]
        append(path, batch)
        names += batch
    assert len(runs_of(path)) > 1
    before = open_store(str(path))  # a reader of the previous commit keeps reading
    spec = compact(str(path))
    assert spec is not None and not spec.runs and runs_of(path) == [len(names)]
    doc = json.loads((path / "manifest.json").read_text())
    assert "runs" not in doc["segments"]  # the single-run form, as before multi-run indexes
    assert (
        before.index is not None and before.index[names[0]] == PointerArray(path).indices[names[0]]
    )
    before.close()
    check_all(path, names)
    report = verify_store(path)
    assert report.ok, report
    assert compact(str(path)) == spec  # nothing left to merge
    # the files of runs no manifest names are gone after the next commit
    append(path, ["last"])
    live = {
        p
        for r in read_manifest(str(path)).segments.all_runs
        for p in r.files.values()  # type: ignore[union-attr]
    } | {p for p in spec.files.values()}
    assert {f"index/{f}" for f in os.listdir(path / "index")} == live


def test_verify_checks_the_files_of_every_run(tmp_path: Path) -> None:
    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(500)])
    append(path, ["b"])
    spec = read_manifest(str(path)).segments
    assert spec is not None and len(spec.runs) == 2
    old = path / spec.runs[0].files["bounds"]
    raw = bytearray(old.read_bytes())
    raw[-3] ^= 0x40
    old.write_bytes(bytes(raw))
    report = verify_store(path)
    assert not report.ok
    assert any(spec.runs[0].files["bounds"] in p for p in report.problems), report.problems


def test_info_shows_runs_and_compact_command_merges(tmp_path: Path) -> None:
    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(500)])
    append(path, ["b", "c"])
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cli = [sys.executable, "-m", "bigarray.cli"]
    out = subprocess.run([*cli, "info", str(path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "index      2 runs (500, 2 segments)" in out.stdout
    out = subprocess.run([*cli, "compact", str(path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "1 run (502 segments)" in out.stdout
    assert "compact 2 runs" in out.stderr  # the progress bar
    assert runs_of(path) == [502]
    out = subprocess.run([*cli, "compact", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "not a local bigarray store" in out.stderr


def test_a_store_of_many_runs_copies_and_reads_remotely(tmp_path: Path) -> None:
    path = tmp_path / "s"
    names: list[str] = []
    for c in range(3):
        batch = [f"c{c}-{j}" for j in range(100 // (c + 1))]
        append(path, batch)
        names += batch
    assert len(runs_of(path)) > 1
    url = "memory://runs-copy/s.bigarray"
    copy_store(str(path), url, progress=False)
    with open_store(url) as store:
        assert store.index is not None and len(store.index) == len(names)
        for n in names[::7]:
            a, b = store.index[n]
            np.testing.assert_array_equal(store.read_rows(None, a, b), seg(n))


def test_store_lookups_match_across_runs_without_loading_names(tmp_path: Path) -> None:
    """The commit's checks go through match/first_overlap on the mapped runs."""
    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(300)])
    append(path, ["b"])
    from bigarray.core.index import SegmentArrays

    with Store(str(path)) as store:
        idx = store.index
        assert idx is not None and len(idx.runs) == 2
        probe = SegmentArrays.from_names(
            ["a5", "b", "zz"], np.array([0, 0, 0]), np.array([1, 1, 1])
        )
        got = idx.match(probe)
        assert got[0].tolist() == list(idx["a5"]) and got[1].tolist() == list(idx["b"])
        assert got[2].tolist() == [-1, -1]
        a5 = idx["a5"]
        hit = idx.first_overlap(np.array([[10**9, 10**9 + 1], [a5[0], a5[0] + 1]]))
        assert hit is not None and hit[0] == 1 and hit[1] == "a5"
        assert idx.first_overlap(np.array([[10**9, 10**9 + 5]])) is None


def test_chunk_plan_of_a_store_that_fits_one_chunk_never_gathers_the_runs(
    tmp_path: Path,
) -> None:
    from bigarray.core.chunks import segment_chunks
    from bigarray.dask_backend import from_bigarray
    from bigarray.lazy import open_array

    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(400)])
    append(path, [f"b{i}" for i in range(7)])
    arr = open_array(str(path))
    assert arr.row_chunks("auto") == (len(arr),)
    idx = arr.indices
    assert len(idx.runs) == 2 and idx._bases is None  # the runs were never laid out in rows
    # the same plan as from the segments, at every target that covers the rows
    bounds = np.asarray(idx.bounds)
    for target in (len(arr), 10 * len(arr)):
        assert segment_chunks(bounds, len(arr), 1, target) == arr.row_chunks(target)
    # smaller targets still cut on segment boundaries
    x = from_bigarray(str(path), chunks=50)
    cuts = np.cumsum(x.chunks[0])[:-1]
    assert set(cuts.tolist()) <= set(bounds[:, 0].tolist())
    np.testing.assert_array_equal(x.compute(), np.asarray(PointerArray(path)))


def test_write_over_rows_of_an_older_run_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(300)])
    append(path, ["b"])
    a9 = PointerArray(path).indices["a9"]
    before = np.asarray(PointerArray(path)["a9"]).copy()
    with PointerArrayWriter(path) as w:
        with pytest.raises(OverlapError, match="'a9'"):
            w.write({"x": np.zeros((1, 2), np.int32)}, start_position=a9[0])
        w.write({"y": np.zeros((1, 2), np.int32)})  # appending still works
    np.testing.assert_array_equal(PointerArray(path)["a9"], before)
    assert "y" in PointerArray(path).indices and "x" not in PointerArray(path).indices


def test_manifest_with_malformed_runs_is_refused(tmp_path: Path) -> None:
    from bigarray.errors import FormatError

    path = tmp_path / "s"
    append(path, [f"a{i}" for i in range(100)])
    append(path, ["b"])
    doc = json.loads((path / "manifest.json").read_text())
    good = json.loads(json.dumps(doc))
    doc["segments"]["runs"][1]["generation"] = doc["segments"]["runs"][0]["generation"]
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="same generation"):
        PointerArray(path)
    doc = json.loads(json.dumps(good))
    doc["segments"]["count"] += 1
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="sum of its runs"):
        PointerArray(path)
    doc = json.loads(json.dumps(good))
    doc["segments"]["runs"][0]["files"]["names"] = "../escape.npy"
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="plain relative path"):
        PointerArray(path)


def test_big_merges_stream_through_memory_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of millions of segments are merged file to file; the threshold is lowered so
    that small runs take that path here."""
    import bigarray.core.index

    monkeypatch.setattr(bigarray.core.index, "STREAM_MIN", 1)
    path = tmp_path / "s"
    names: list[str] = []
    for c, size in enumerate((50, 40, 30, 20, 200, 7)):
        batch = [f"c{c}-{j}" for j in range(size)]
        append(path, batch)
        names += batch
    check_all(path, names)
    assert verify_store(path).ok
    for fsync in (False, True):
        append(path, [f"f{fsync}"], fsync=fsync)
        names.append(f"f{fsync}")
    compact(str(path), fsync=True)
    assert runs_of(path) == [len(names)]
    check_all(path, names)
    report = verify_store(path)
    assert report.ok, report
