"""One rule for where a tool writes (:func:`bigarray.core.destination.prepare_destination`):
a bigarray store is replaced when asked, beside it and switched in at the end; anything
else is refused and never deleted. The converters and ``copy_store`` follow it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from legacy_files import write_legacy_pointer

import bigarray
from bigarray import MmapArray, PointerArray, PointerArrayWriter
from bigarray.convert import convert, to_netcdf, to_zarr
from bigarray.copy import copy_store
from bigarray.core.cache import OPEN_STORES
from bigarray.core.destination import prepare_destination
from bigarray.errors import NotAStoreError, StoreChangedError, StoreExistsError


def _store(path: Path, value: int, n: int = 6) -> Path:
    with PointerArrayWriter(path, shape=(0, 2), dtype="i4", remove_exist=True) as w:
        w.write({"a": np.full((n, 2), value, "i4")})
    return path


def _mine(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("mine")
    return d


# ----------------------------------------------------------------------------- the rule
def test_a_free_path_is_written_beside_and_moved_in(tmp_path: Path) -> None:
    for free in [tmp_path / "new", tmp_path / "empty_dir", tmp_path / "empty_file"]:
        if free.name == "empty_dir":
            free.mkdir()
        elif free.name == "empty_file":
            free.write_bytes(b"")
        dest = prepare_destination(free, replace=False)
        assert dest.path == str(free) and not os.path.lexists(dest.staging)
        assert dest.replacing == (free.name != "new")
        _store(Path(dest.staging), 1)
        dest.commit()
        assert PointerArray(free)["a"].sum() == 12


def test_a_store_is_replaced_only_when_asked_and_readers_keep_the_old_one(
    tmp_path: Path,
) -> None:
    path = _store(tmp_path / "s", 1)
    with pytest.raises(StoreExistsError, match=r"already exists; pass remove_exist=True"):
        prepare_destination(path, replace=False)
    dest = prepare_destination(path, replace=True)
    old = PointerArray(path)
    _store(Path(dest.staging), 2)
    assert PointerArray(path)["a"][0, 0] == 1  # the old store until the switch
    handle = bigarray.open(path)
    assert handle["a"][0, 0] == 1 and len(OPEN_STORES) >= 1
    dest.commit()
    assert PointerArray(path)["a"][0, 0] == 2 and old["a"][0, 0] == 1
    # the cached readers of the old store were let go (they pinned its deleted files)
    assert not [k for k in OPEN_STORES._items if k[0] == str(path)]
    with pytest.raises(StoreChangedError):
        handle["a"]
    dest = prepare_destination(path, replace=True)
    _store(Path(dest.staging), 3)
    dest.abandon()
    assert PointerArray(path)["a"][0, 0] == 2 and not os.path.lexists(dest.staging)


@pytest.mark.parametrize("replace", [False, True])
def test_anything_but_a_store_is_refused_and_never_deleted(tmp_path: Path, replace: bool) -> None:
    mine = _mine(tmp_path)
    with pytest.raises(NotAStoreError, match="non-empty directory that is not a bigarray store"):
        prepare_destination(mine, replace=replace)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(NotAStoreError, match="is a file that is not a bigarray store"):
        prepare_destination(notes, replace=replace)
    link = tmp_path / "link"
    link.symlink_to(_store(tmp_path / "s", 1))
    with pytest.raises(NotAStoreError, match="is a symbolic link"):
        prepare_destination(link, replace=replace)
    legacy = tmp_path / "old.bin"
    write_legacy_pointer(legacy, np.zeros((4, 2), "i4"), {"a": (0, 4)})
    with pytest.raises(NotAStoreError, match="not a bigarray store"):
        prepare_destination(legacy, replace=replace)
    assert os.listdir(mine) == ["thesis.tex"] and notes.read_text() == "mine"
    assert os.path.islink(link) and legacy.stat().st_size > 0
    assert not [n for n in os.listdir(tmp_path) if ".replace-" in n]  # nothing staged


def test_a_store_a_live_writer_holds_is_not_replaced(tmp_path: Path) -> None:
    path = _store(tmp_path / "s", 1)
    with (
        PointerArrayWriter(path, shape=None, dtype="i4"),
        pytest.raises(StoreExistsError, match="live writer"),
    ):
        prepare_destination(path, replace=True)


# ----------------------------------------------------------------------------- the tools
def test_convert_replaces_a_store_beside_it_and_a_failure_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    path = _store(tmp_path / "s", 1)
    np.save(tmp_path / "b.npy", np.full((3, 2), 7, "i4"))
    before = PointerArray(path)
    convert(tmp_path / "b.npy", path, remove_exist=True)
    assert np.asarray(before).sum() == 12  # a reader of the old store keeps it
    np.testing.assert_array_equal(np.asarray(MmapArray(path)), np.full((3, 2), 7, "i4"))
    # a source that fails half-way (a damaged member of an archive, met while copying)
    np.savez(tmp_path / "c.npz", x=np.zeros((1000, 2), "i4"), y=np.full((1000, 2), 3, "i4"))
    raw = bytearray((tmp_path / "c.npz").read_bytes())
    raw[raw.rfind(b"\x03\x00\x00\x00\x03\x00\x00\x00")] = 9
    (tmp_path / "c.npz").write_bytes(bytes(raw))
    kept = _store(tmp_path / "kept", 5)
    with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
        convert(tmp_path / "c.npz", kept, remove_exist=True)
    np.testing.assert_array_equal(PointerArray(kept)["a"], np.full((6, 2), 5, "i4"))
    assert not [n for n in os.listdir(tmp_path) if ".replace-" in n]


def test_convert_refuses_a_users_directory_even_with_remove_exist(tmp_path: Path) -> None:
    mine = _mine(tmp_path)
    np.save(tmp_path / "b.npy", np.arange(4))
    with pytest.raises(NotAStoreError, match="refusing to replace it even with remove_exist"):
        convert(tmp_path / "b.npy", mine, remove_exist=True)
    assert os.listdir(mine) == ["thesis.tex"]


def test_exports_replace_their_own_format_only(tmp_path: Path) -> None:
    pytest.importorskip("xarray")
    pytest.importorskip("zarr")
    pytest.importorskip("h5netcdf")
    src = _store(tmp_path / "s", 1)
    mine = _mine(tmp_path)
    with pytest.raises(NotAStoreError):
        to_zarr(src, mine, remove_exist=True)
    assert os.listdir(mine) == ["thesis.tex"]
    notes = tmp_path / "notes.nc"
    notes.write_text("mine")
    with pytest.raises(NotAStoreError):
        to_netcdf(src, notes, remove_exist=True)
    assert notes.read_text() == "mine"
    # an export of the same format is replaced when asked
    to_zarr(src, tmp_path / "out.zarr")
    with pytest.raises(StoreExistsError):
        to_zarr(src, tmp_path / "out.zarr")
    to_zarr(src, tmp_path / "out.zarr", remove_exist=True)
    to_netcdf(src, tmp_path / "out.nc")
    to_netcdf(src, tmp_path / "out.nc", remove_exist=True)
    assert not [n for n in os.listdir(tmp_path) if ".replace-" in n]


def test_copy_follows_the_same_rule(tmp_path: Path) -> None:
    src = _store(tmp_path / "a", 1)
    dst = _store(tmp_path / "b", 2)
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        copy_store(src, dst, progress=False)
    copy_store(src, dst, progress=False, overwrite=True)
    assert PointerArray(dst)["a"][0, 0] == 1
    mine = _mine(tmp_path)
    with pytest.raises(NotAStoreError):
        copy_store(src, mine, progress=False, overwrite=True)
    assert os.listdir(mine) == ["thesis.tex"]


def test_a_manifest_that_only_mentions_bigarray_makes_no_store_for_any_entry_point(
    tmp_path: Path,
) -> None:
    """A user's directory whose manifest.json merely says "format": "bigarray" (a project's
    list of data sets) is refused by every entry point that deletes or replaces a store,
    and kept whole."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "manifest.json").write_text(
        '{"datasets": [{"name": "train", "format": "bigarray", "path": "train.bigarray"}]}'
    )
    (project / "thesis.tex").write_text("precious")
    src = _store(tmp_path / "s", 1)
    np.save(tmp_path / "b.npy", np.arange(4))
    attempts = [
        lambda: bigarray.remove(project),
        lambda: prepare_destination(project, replace=True),
        lambda: PointerArrayWriter(project, shape=(3,), dtype="f8", remove_exist=True),
        lambda: bigarray.MmapArrayWriter(project, shape=(3,), dtype="f8", remove_exist=True),
        lambda: convert(tmp_path / "b.npy", project, remove_exist=True),
        lambda: copy_store(src, project, progress=False, overwrite=True),
    ]
    for attempt in attempts:
        with pytest.raises(NotAStoreError):
            attempt()
        assert sorted(os.listdir(project)) == ["manifest.json", "thesis.tex"]
    da = pytest.importorskip("dask.array")
    from bigarray.dask_backend import to_bigarray

    with pytest.raises(NotAStoreError):
        to_bigarray(da.ones((4, 2), chunks=2), str(project), remove_exist=True)
    xr = pytest.importorskip("xarray")
    from bigarray import xarray_backend

    with pytest.raises(NotAStoreError):
        xarray_backend.to_bigarray(xr.Dataset({"x": ("row", np.ones(3))}), project, mode="w")
    assert (project / "thesis.tex").read_text() == "precious"
