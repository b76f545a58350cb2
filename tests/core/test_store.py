"""Reading stores: format transparency, index lookups, and clear errors for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bigarray import MmapArray, PointerArray, PointerArrayWriter, Store
from bigarray.errors import (
    BigArrayError,
    FormatError,
    HostileInputError,
    NotAStoreError,
    ReadOnlyError,
    SegmentNotFoundError,
    StoreChangedError,
    StoreCorruptedError,
    StoreNotFoundError,
    VariableNotFoundError,
)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.bigarray"
    with PointerArrayWriter(path, dtype="float32") as w:
        w.write({f"seg{i}": np.full((i + 1, 3), i, np.float32) for i in range(50)})
    return path


def test_layout_is_transparent(store: Path) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["format"] == "bigarray" and manifest["version"] == 1
    var = manifest["variables"]["data"]
    assert var["dtype"] == "<f4" and var["shape"] == [1275, 3]
    data = np.load(store / var["shards"][0]["path"], mmap_mode="r")
    assert data.shape == (1275, 3)
    files = manifest["segments"]["files"]
    bounds = np.load(store / files["bounds"])
    names = np.load(store / files["names"]).tobytes()
    offs = np.load(store / files["name_offsets"])
    assert names[offs[7] : offs[8]] == b"seg7"
    np.testing.assert_array_equal(data[bounds[7, 0] : bounds[7, 1]], np.full((8, 3), 7))
    # nothing in the store is a pickle
    for f in store.rglob("*.npy"):
        assert np.load(f, allow_pickle=False) is not None


def test_lookup(store: Path) -> None:
    x = PointerArray(store)
    assert x.indices["seg10"] == (55, 66)
    assert "seg10" in x.indices and "seg50" not in x.indices and 3 not in x.indices
    assert len(x.indices) == 50
    with pytest.raises(SegmentNotFoundError, match="no segment named 'seg50' among 50"):
        x["seg50"]
    with pytest.raises(KeyError):  # the builtin a dict user would catch
        x.indices["nope"]
    assert x.indices.get("nope") is None
    assert float(np.sum(x)) == float(sum(i * (i + 1) * 3 for i in range(50)))


def test_read_only(store: Path) -> None:
    x = PointerArray(store)
    with pytest.raises(ReadOnlyError, match="read-only"):
        x[0] = 1
    with pytest.raises(ReadOnlyError, match="mode='r'"):
        PointerArray(store, mode="r+")
    with pytest.raises(ValueError):  # numpy's own guard holds for views too
        np.asarray(x)[0] = 1


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        PointerArray(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError, match="without manifest.json"):
        PointerArray(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(NotAStoreError, match="is a file"):
        PointerArray(tmp_path / "file.bin")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"hello": "world"}')
    with pytest.raises(FormatError, match="not a bigarray manifest"):
        MmapArray(foreign)
    (foreign / "manifest.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(FormatError, match="not valid JSON"):
        MmapArray(foreign)


def test_newer_version_refused(store: Path) -> None:
    m = json.loads((store / "manifest.json").read_text())
    m["version"] = 99
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match="version 99; this bigarray reads version 1"):
        PointerArray(store)


def test_truncated_data_is_an_error_not_sigbus(store: Path) -> None:
    data = store / "data.npy"
    size = data.stat().st_size
    os.truncate(data, size - 100)
    with pytest.raises(StoreCorruptedError, match="truncated or replaced"):
        PointerArray(store)


def test_truncated_index(store: Path) -> None:
    m = json.loads((store / "manifest.json").read_text())
    bounds = store / m["segments"]["files"]["bounds"]
    saved = bounds.read_bytes()
    os.truncate(bounds, 200)
    with pytest.raises(StoreCorruptedError, match="bounds"):
        PointerArray(store).indices["seg1"]
    bounds.write_bytes(saved)
    assert PointerArray(store).indices["seg1"] == (1, 3)
    os.unlink(store / m["segments"]["files"]["table"])
    with pytest.raises(StoreCorruptedError, match="missing"):
        PointerArray(store).indices["seg1"]


def test_variable_not_found(store: Path) -> None:
    with pytest.raises(VariableNotFoundError, match="no variable 'feat'; it holds \\['data'\\]"):
        PointerArray(store, variable="feat")


def test_manifest_paths_stay_inside(store: Path, tmp_path: Path) -> None:
    m = json.loads((store / "manifest.json").read_text())
    for bad in ("../outside.npy", "/etc/passwd", "a/../../b.npy"):
        m["variables"]["data"]["shards"][0]["path"] = bad
        (store / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(HostileInputError, match="not a plain relative path"):
            PointerArray(store)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros((1275, 3), np.float32))
    (store / "link.npy").symlink_to(outside)
    m["variables"]["data"]["shards"][0]["path"] = "link.npy"
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(HostileInputError, match="outside the store"):
        PointerArray(store)


@pytest.mark.parametrize("dtype", ["|O", "[('a', '<f4')]", "<V8", "object", "<f4,<i4"])
def test_manifest_dtype_must_be_plain(store: Path, dtype: str) -> None:
    m = json.loads((store / "manifest.json").read_text())
    m["variables"]["data"]["dtype"] = dtype
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(HostileInputError, match="not a plain numeric"):
        PointerArray(store)


@pytest.mark.parametrize(
    "shape,match",
    [
        ([-1, 3], "ints >= 0"),
        ([2**62, 2**20], "2\\*\\*62 bytes"),
        ("12", "list of 1 to 32"),
        ([1275, 3.5], "ints >= 0"),
    ],
)
def test_manifest_shape_checked(store: Path, shape: object, match: str) -> None:
    m = json.loads((store / "manifest.json").read_text())
    m["variables"]["data"]["shape"] = shape
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match=match):
        PointerArray(store)


def test_store_api(store: Path) -> None:
    with Store(store) as s:
        assert s.manifest.rows == 1275
        np.testing.assert_array_equal(s.read_rows(None, 3, 6), np.full((3, 3), 2))
        assert s.index is not None and s.index["seg2"] == (3, 6)


def test_every_error_is_a_bigarray_error(tmp_path: Path) -> None:
    with pytest.raises(BigArrayError):
        PointerArray(tmp_path / "nothing")


# ----------------------------------------------------------------------------- reader protocol
def test_every_reader_satisfies_the_store_reader_protocol(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    from legacy_files import write_legacy_pointer

    from bigarray.core.legacy import LegacyStore
    from bigarray.core.store import RemoteStore, StoreReader, open_store

    data = np.arange(12, dtype="i4").reshape(6, 2)
    path = tmp_path / "s.bigarray"
    with PointerArrayWriter(path, shape=(0, 2), dtype="i4") as w:
        w.write({"a": data[:2], "b": data[2:]})
    url = f"memory://reader-protocol-{os.getpid()}/s.bigarray"
    fsspec.filesystem("memory").put(str(path), url, recursive=True)
    legacy = tmp_path / "old.bin"
    write_legacy_pointer(legacy, data, {"a": (0, 2), "b": (2, 6)})
    readers = [open_store(path), open_store(url), open_store(legacy)]
    assert [type(r) for r in readers] == [Store, RemoteStore, LegacyStore]
    for reader in readers:
        assert isinstance(reader, StoreReader)
        with reader as r:
            assert r.index is not None and r.index["b"] == (2, 6)
            np.testing.assert_array_equal(r.index.bounds, [[0, 2], [2, 6]])
            np.testing.assert_array_equal(r.read_rows(None, 2, 6), data[2:])
            assert [a.tolist() for a in r.read_ranges(None, [(0, 1), (5, 6)])] == [
                data[:1].tolist(),
                data[5:].tolist(),
            ]
            assert r.variable().rows == 6 and r.manifest.variables["data"].rows == 6
            assert r.fingerprint() == r.fingerprint()
            assert r.is_legacy == (type(r) is LegacyStore)


def test_a_store_replaced_at_its_path_has_another_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "s.bigarray"
    for _ in range(2):
        with PointerArrayWriter(path, shape=(0,), dtype="i4", remove_exist=True) as w:
            w.write({"a": np.arange(3, dtype="i4")})
        if _ == 0:
            first = Store(path).fingerprint()
    assert Store(path).fingerprint() != first


def test_is_store_wants_a_manifest_that_parses_not_one_that_names_the_format(
    store: Path, tmp_path: Path
) -> None:
    """A user's directory whose manifest.json merely mentions "format": "bigarray" is not a
    store (every tool that deletes or replaces a store asks is_store first), nor is a store
    whose manifest no longer parses."""
    from bigarray import is_store

    assert is_store(str(store)) and is_store(store)
    project = tmp_path / "project"
    project.mkdir()
    (project / "manifest.json").write_text(
        json.dumps({"datasets": [{"name": "train", "format": "bigarray"}]}, indent=1)
    )
    (project / "thesis.tex").write_text("mine")
    assert not is_store(str(project))
    (project / "manifest.json").write_text('{"format": "bigarray", "version": 1')  # cut short
    assert not is_store(str(project))
    (project / "manifest.json").write_text('{"format": "bigarray", "version": 1}')
    assert not is_store(str(project))  # no variables, no generation: not a manifest
    assert not is_store(str(project / "thesis.tex")) and not is_store(str(tmp_path / "nope"))


def _commit_until_gone(w: PointerArrayWriter, file: Path, tag: str) -> None:
    """Commit one segment at a time until ``file`` (an index file) is deleted."""
    for i in range(200):
        w.write({f"{tag}{i}": np.ones((1, 2), "i4")})
        w.flush()
        if not file.exists():
            return
    raise AssertionError(f"{file} outlived 200 commits")


def test_a_handle_whose_index_files_later_commits_deleted_says_the_store_changed(
    tmp_path: Path,
) -> None:
    """A commit deletes the index files of the commit two before it. A handle that read its
    manifest before that, and maps its index only now, finds them gone: the store changed
    (reopen it), it is not damaged; opening again reads the current commit."""
    from bigarray.core.store import open_local

    p = tmp_path / "s"
    w = PointerArrayWriter(p, shape=(0, 2), dtype="i4")
    w.write({"a": np.ones((1, 2), "i4")})
    w.flush()
    old = Store(p)
    named = p / old.manifest.segments.all_runs[0].files["names"]
    _commit_until_gone(w, named, "n")
    with pytest.raises(StoreChangedError, match="Open the store again"):
        old.index  # noqa: B018
    fresh = open_local(p)
    assert fresh.index["a"] == (0, 1)
    w.close()


def test_a_handle_of_a_replaced_store_never_reads_the_replacement(tmp_path: Path) -> None:
    """A handle that read the old store's manifest, then opens its files after another
    program replaced the store (remove_exist), says the store changed: it never reads the
    replacement's bytes (or index) through the old manifest."""
    p = tmp_path / "s"
    with PointerArrayWriter(p, shape=(0,), dtype="i4") as w:
        w.write({"a": np.ones(12, "i4")})
    old = Store(p)
    with PointerArrayWriter(p, shape=(0,), dtype="i4", remove_exist=True) as w:
        w.write({"b": np.full(100, 7, "i4")})
    with pytest.raises(StoreChangedError, match="replaced"):
        old.read_rows(None, 0, 4)
    with pytest.raises(StoreChangedError, match="replaced"):
        old.index  # noqa: B018
    assert np.asarray(Store(p).read_rows(None, 0, 4)).tolist() == [7, 7, 7, 7]
    # a smaller replacement (its data file shorter than the old manifest needs) too
    old = Store(f"file:{p}")  # the local path as a URL
    with PointerArrayWriter(p, shape=(0,), dtype="i4", remove_exist=True) as w:
        w.write({"c": np.full(3, 5, "i4")})
    with pytest.raises(StoreChangedError, match="replaced"):
        old.read_rows(None, 0, 4)
