"""The 2020 benchmark script's workload: one big ``write()``, open, slices, cleanup.

Behaviour only (speed is measured in ``benchmarks/seed_script.py``): a large write returns
before its block sums are done and the commit still records them; the GIL-free CRC path
gives google-crc32c's sums; stores are removed and sized through the API and the CLI.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from legacy_files import write_legacy_mmap
from run_cli import run_cli as _run

import bigarray
from bigarray import MmapArray, MmapArrayWriter, PointerArray, PointerArrayWriter
from bigarray.core import integrity
from bigarray.core import store as store_module
from bigarray.core.verify import verify_store
from bigarray.errors import HostileInputError, NotAStoreError


def test_large_write_returns_before_its_block_sums_and_commit_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold the follower thread's summing until the write has returned: if write() waited
    # for the sums (as it did), it would never return while they are held.
    release = threading.Event()
    real = integrity.sum_blocks

    def held(*args: Any) -> np.ndarray:
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(integrity, "sum_blocks", held)
    x = np.random.default_rng(0).random((4096, 512))  # 16 MiB: 16 blocks, followed
    w = MmapArrayWriter(tmp_path / "s", dtype="float64", shape=(0, 512))
    done = threading.Event()
    t = threading.Thread(target=lambda: (w.write(x), done.set()))
    t.start()
    returned = done.wait(20)
    release.set()
    t.join(30)
    assert returned, "write() waited for its block sums"
    w.close()
    report = verify_store(tmp_path / "s")
    assert report.ok, report
    np.testing.assert_array_equal(MmapArray(tmp_path / "s"), x)


def test_discarded_writer_stops_its_followers(tmp_path: Path) -> None:
    w = MmapArrayWriter(tmp_path / "s", dtype="float64", shape=(0, 512))
    w.write(np.ones((4096, 512)))
    w.writer.discard()  # must not hang nor leave a thread reading a closed descriptor
    assert w.closed
    assert len(MmapArray(tmp_path / "s")) == 0


@pytest.mark.parametrize("nbytes", [0, 1, 1000, (64 << 10) - 1, 64 << 10, (1 << 20) + 3])
def test_gil_free_crc_matches_google_crc32c(nbytes: int) -> None:
    import google_crc32c

    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    assert integrity.extend_crc(7, data) == google_crc32c.extend(7, data)
    assert integrity.extend_crc(0, data.tobytes()) == google_crc32c.extend(0, data.tobytes())


# --------------------------------------------------------------------------- open and slice


def _named_store(path: Path) -> np.ndarray:
    x = np.arange(6000 * 4, dtype="f8").reshape(6000, 4)
    with PointerArrayWriter(path, dtype="float64", shape=(0, 4)) as w:
        w.write({"a": x[:2500], "b": x[2500:]})
    return x


def test_reopening_an_unchanged_store_skips_manifest_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _named_store(tmp_path / "s")
    PointerArray(tmp_path / "s")
    calls = []
    real = store_module.parse_manifest
    monkeypatch.setattr(store_module, "parse_manifest", lambda *a: (calls.append(1), real(*a))[1])
    for _ in range(3):
        PointerArray(tmp_path / "s")
        MmapArray(tmp_path / "s")
    assert calls == []


def test_reopening_after_a_commit_sees_the_new_commit(tmp_path: Path) -> None:
    x = _named_store(tmp_path / "s")
    assert len(PointerArray(tmp_path / "s")) == 6000
    with PointerArrayWriter(tmp_path / "s") as w:
        w.write({"c": x[:10]})
    y = PointerArray(tmp_path / "s")
    assert len(y) == 6010 and list(y.indices) == ["a", "b", "c"]
    np.testing.assert_array_equal(y["c"], x[:10])


def test_index_file_symlinked_inside_the_store_opens(tmp_path: Path) -> None:
    x = _named_store(tmp_path / "s")
    (bounds,) = (tmp_path / "s" / "index").glob("g*-bounds.npy")
    bounds.rename(tmp_path / "s" / "bounds-real.npy")
    bounds.symlink_to(os.path.join("..", "bounds-real.npy"))
    np.testing.assert_array_equal(PointerArray(tmp_path / "s")["b"], x[2500:])


def test_index_file_symlinked_out_of_the_store_is_refused(tmp_path: Path) -> None:
    _named_store(tmp_path / "s")
    (bounds,) = (tmp_path / "s" / "index").glob("g*-bounds.npy")
    outside = tmp_path / "outside.npy"
    bounds.rename(outside)
    bounds.symlink_to(outside)
    with pytest.raises(HostileInputError, match="outside the store"):
        PointerArray(tmp_path / "s")


def test_slices_keep_numpy_memmap_attributes_and_pickle_by_reference(tmp_path: Path) -> None:
    x = _named_store(tmp_path / "s")
    y = PointerArray(tmp_path / "s")
    m = np.load(str(tmp_path / "s" / "data.npy"), mmap_mode="r")
    for view, ref in [(y[100:356], m[100:356]), (y[100:356][10:20], m[100:356][10:20])]:
        assert type(view) is PointerArray
        assert view._mmap is y._mmap is not None
        assert (view.filename, view.offset, view.mode) == (ref.filename, ref.offset, ref.mode)
        np.testing.assert_array_equal(view, ref)
        assert len(pickle.dumps(view)) < 1000
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(view)), ref)
    total = y[:10] + 1  # a new array: not a map, plain values
    assert total._mmap is None if isinstance(total, np.memmap) else True
    np.testing.assert_array_equal(total, x[:10] + 1)
    assert y[5, 1] == x[5, 1] and y["a"].shape == (2500, 4)


# --------------------------------------------------------------------------- remove and size


def _files_size(path: Path) -> int:
    return sum(
        os.lstat(os.path.join(d, f)).st_size
        for d, _, files in os.walk(path)
        for f in files
        if not os.path.islink(os.path.join(d, f))
    )


def test_remove_deletes_a_store_what_os_remove_did_for_a_2020_file(tmp_path: Path) -> None:
    _named_store(tmp_path / "s")
    x = PointerArray(tmp_path / "s")
    bigarray.remove(tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert x["a"].shape == (2500, 4)  # an open array keeps its mapped pages
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bigarray.remove(tmp_path / "s")
    legacy = tmp_path / "old.bigarray"
    write_legacy_mmap(legacy, np.arange(12, dtype="f4").reshape(3, 4))
    bigarray.remove(str(legacy))
    assert not legacy.exists()


def test_remove_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    for path in (mine, plain, tmp_path / "empty"):
        if path.name == "empty":
            path.mkdir()
        with pytest.raises(NotAStoreError, match="refusing"):
            bigarray.remove(path)
    assert (mine / "thesis.tex").read_text() == "years of work" and plain.exists()


def test_remove_of_a_symlink_to_a_store_removes_the_link(tmp_path: Path) -> None:
    _named_store(tmp_path / "s")
    (tmp_path / "link").symlink_to(tmp_path / "s")
    bigarray.remove(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "link") and len(PointerArray(tmp_path / "s")) == 6000


def test_getsize_adds_up_the_store_files(tmp_path: Path) -> None:
    _named_store(tmp_path / "s")
    size = bigarray.getsize(tmp_path / "s")
    assert size == _files_size(tmp_path / "s")
    assert size >= 6000 * 4 * 8
    legacy = tmp_path / "old.bigarray"
    write_legacy_mmap(legacy, np.arange(12, dtype="f4").reshape(3, 4))
    assert bigarray.getsize(legacy) == os.path.getsize(legacy)
    with pytest.raises(NotAStoreError):
        bigarray.getsize(tmp_path)


def test_cli_rm_and_the_size_in_info(tmp_path: Path) -> None:
    _named_store(tmp_path / "s")
    size = _files_size(tmp_path / "s")
    info = _run("info", str(tmp_path / "s"))
    assert info.returncode == 0, info.stderr
    assert f"on disk    {size / 1024:,.1f} KiB ({size:,} bytes" in info.stdout
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "f").write_text("keep")
    refused = _run("rm", str(tmp_path / "mine"))
    assert refused.returncode == 1 and "NotAStoreError" in refused.stderr
    assert (tmp_path / "mine" / "f").exists()
    done = _run("rm", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "s").exists() and f"removed {tmp_path / 's'}" in done.stdout


def test_seed_script_benchmark_runs_on_a_small_shape(tmp_path: Path) -> None:
    from benchmarks.seed_script import main

    out = tmp_path / "r.json"
    args = ["--shape", "600,5,8", "--repeat", "1", "--opens", "3", "--workdir", str(tmp_path)]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert all(result["correct"].values())
    for key in ("write bigarray", "write h5py", "open MmapArray", "iterate MmapArray"):
        assert result["median"][key] > 0
    assert result["sizes"]["bigarray.getsize"] >= 600 * 5 * 8 * 8


def test_reopening_a_checksummed_store_reads_its_index_files_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _named_store(tmp_path / "s")
    PointerArray(tmp_path / "s")
    loads = []
    real = store_module.Store._load
    monkeypatch.setattr(
        store_module.Store, "_load", lambda self, *a: (loads.append(a[0]), real(self, *a))[1]
    )
    np.testing.assert_array_equal(PointerArray(tmp_path / "s")["b"], x[2500:])
    assert loads == []
    (bounds,) = (tmp_path / "s" / "index").glob("g*-bounds.npy")
    (tmp_path / "copy").write_bytes(bounds.read_bytes())
    os.replace(tmp_path / "copy", bounds)  # replaced (another inode): read again
    np.testing.assert_array_equal(PointerArray(tmp_path / "s")["b"], x[2500:])
    assert len(loads) == 5


def test_remove_refuses_a_store_an_open_writer_is_writing(tmp_path: Path) -> None:
    from bigarray import PointerArrayWriter, remove
    from bigarray.errors import StoreExistsError

    p = tmp_path / "x.bigarray"
    w = PointerArrayWriter(p, shape=(None,), dtype="int32")
    w.write({"a": np.arange(2)})
    w.flush()
    with pytest.raises(StoreExistsError, match="open writer"):
        remove(p)
    w.close()
    remove(p)
    assert not p.exists()


def test_remove_never_deletes_a_directory_with_npy_files_on_a_guess(tmp_path: Path) -> None:
    from bigarray import remove
    from bigarray.errors import NotAStoreError

    d = tmp_path / "u"
    (d / "index").mkdir(parents=True)
    (d / ".lock").touch()
    np.save(d / "mydata.npy", np.arange(5))
    with pytest.raises(NotAStoreError):
        remove(d)
    assert (d / "mydata.npy").exists()


def test_remove_wants_a_valid_manifest_or_2020_file_not_a_mention_or_a_magic(
    tmp_path: Path,
) -> None:
    """A directory whose manifest.json merely mentions "format": "bigarray", and a file that
    merely starts with b"mmapdata", are the user's: refused and kept."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "manifest.json").write_text('{"datasets": [{"format": "bigarray"}]}')
    (project / "thesis.tex").write_text("years of work")
    with pytest.raises(NotAStoreError, match="not a valid bigarray manifest"):
        bigarray.remove(project)
    notes = tmp_path / "notes.txt"
    notes.write_text("mmapdata notes: the 2020 format starts with this magic\n")
    with pytest.raises(NotAStoreError, match="not a valid 2020 bigarray file"):
        bigarray.remove(notes)
    assert (project / "thesis.tex").read_text() == "years of work" and notes.exists()


def test_remove_exist_refuses_a_symlink_and_keeps_it_and_its_target(tmp_path: Path) -> None:
    """The seed writers refuse a symbolic link as every other entry point does: neither the
    link nor what it points to (a user's directory, a store) is replaced."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "k.txt").write_text("k")
    _named_store(tmp_path / "s")
    for target in (mine, tmp_path / "s"):
        link = tmp_path / f"link-{target.name}"
        link.symlink_to(target)
        for cls in (MmapArrayWriter, PointerArrayWriter):
            with pytest.raises(NotAStoreError, match="is a symbolic link"):
                cls(link, shape=(2,), dtype="f8", remove_exist=True)
            assert os.path.islink(link) and os.readlink(link) == str(target)
    assert os.listdir(mine) == ["k.txt"] and len(PointerArray(tmp_path / "s")) == 6000


def test_a_writer_refusing_a_users_path_does_not_advise_remove_exist(tmp_path: Path) -> None:
    """remove_exist=True never replaces a user's directory, file or 2020 file, so the errors
    that refuse them must not suggest it."""
    from bigarray.errors import ReadOnlyError, StoreExistsError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "k.txt").write_text("k")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for path in (mine, notes):
        for cls in (MmapArrayWriter, PointerArrayWriter):
            with pytest.raises(StoreExistsError) as err:
                cls(path, shape=(2,), dtype="f8")
            assert "pass remove_exist=True" not in str(err.value)
            assert "remove_exist=True replaces only a bigarray store" in str(err.value)
            with pytest.raises(NotAStoreError):
                cls(path, shape=(2,), dtype="f8", remove_exist=True)
    legacy = tmp_path / "old.bin"
    write_legacy_mmap(legacy, np.zeros((3, 2), "f4"))
    with pytest.raises(ReadOnlyError) as err2:
        MmapArrayWriter(legacy, shape=(2,), dtype="f8")
    assert "pass remove_exist=True" not in str(err2.value)
    assert "bigarray.remove(path)" in str(err2.value)
    with pytest.raises(NotAStoreError):
        MmapArrayWriter(legacy, shape=(2,), dtype="f8", remove_exist=True)
    assert os.listdir(mine) == ["k.txt"] and notes.read_text() == "mine" and legacy.exists()


def test_a_writer_on_a_store_of_a_newer_bigarray_says_to_upgrade(tmp_path: Path) -> None:
    """is_store is strict now (a newer format version is not a store this version reads);
    the seed writer still says why instead of calling it a user's directory."""
    from bigarray.errors import FormatError

    _named_store(tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["version"] = 99
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatError, match="version 99"):
        PointerArrayWriter(tmp_path / "s", dtype="f8")
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "manifest.json")
    with pytest.raises(bigarray.errors.StoreExistsError):  # refused, and no hang
        PointerArrayWriter(fifo_dir, dtype="f8")


def test_getsize_of_a_store_whose_writer_session_ends_while_it_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer session ending (its journal directory removed) between the listing of the
    journal and the listing of the session's directory is no error: that directory is gone,
    and so are its bytes."""
    from bigarray.core import manage

    path = tmp_path / "s"
    _named_store(path)
    w = PointerArrayWriter(path)  # an open session: a directory under journal/
    w.write({"extra": np.ones((1, 4), "f8")})
    sessions = list((path / "journal").iterdir())
    assert sessions
    real = os.scandir

    def scandir_then_end_session(where: Any) -> Any:
        listed = not isinstance(where, int) and os.fspath(where) == str(sessions[0])
        if listed and not w.closed:
            w.close()  # the session ends after its directory was listed, before it is read
        return real(where)

    monkeypatch.setattr(manage.os, "scandir", scandir_then_end_session)
    size = bigarray.getsize(path)
    monkeypatch.undo()
    assert not sessions[0].exists()  # the race happened
    assert size > 6000 * 4 * 8
