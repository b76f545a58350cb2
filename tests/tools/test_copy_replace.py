"""`bigarray cp`: a destination is replaced at the commit, never deleted first; a file or a
foreign directory is refused. On local paths and on the moto S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import PointerArray, PointerArrayWriter
from bigarray.cli import main
from bigarray.copy import copy_store
from bigarray.core.filesystem import FileAccess
from bigarray.core.format import manifest_objects
from bigarray.core.store import open_store
from bigarray.errors import NotAStoreError, StoreChangedError


@pytest.fixture()
def bucket(s3_bucket: str) -> str:
    """A fresh bucket (conftest's ``s3_bucket``)."""
    return s3_bucket


def make(path: Path, value: float, tag: str, n: int = 20) -> str:
    with PointerArrayWriter(str(path), dtype="f8") as w:
        w.write({f"{tag}{i}": np.full((50, 4), value) for i in range(n)})
    return str(path)


def check(url: str, options: dict[str, Any] | None, value: float, tag: str) -> None:
    store = open_store(url, options)
    var = store.variable()
    assert np.all(store.read_rows("data", 0, var.rows) == value)
    assert store.index is not None and sorted(store.index.keys()) == sorted(
        f"{tag}{i}" for i in range(20)
    )


def test_cp_onto_an_existing_file_says_destination_is_a_file(tmp_path: Path, capsys: Any) -> None:
    src = make(tmp_path / "a.bigarray", 1.0, "a")
    dst = tmp_path / "notes.txt"
    dst.write_text("mine")
    assert main(["cp", src, str(dst), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "is a file" in err and "reachable" not in err
    assert dst.read_text() == "mine"


def test_cp_into_a_foreign_non_empty_directory_is_refused(tmp_path: Path) -> None:
    src = make(tmp_path / "a.bigarray", 1.0, "a")
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "thesis.tex").write_text("mine")
    with pytest.raises(NotAStoreError, match="not a bigarray store"):
        copy_store(src, str(dst), progress=False)
    with pytest.raises(NotAStoreError):
        copy_store(src, str(dst), progress=False, overwrite=True)
    assert os.listdir(dst) == ["thesis.tex"]


def test_cp_into_an_empty_directory_works(tmp_path: Path) -> None:
    src = make(tmp_path / "a.bigarray", 1.0, "a")
    dst = tmp_path / "empty"
    dst.mkdir()
    copy_store(src, str(dst), progress=False)
    check(str(dst), None, 1.0, "a")
    assert sorted(os.listdir(tmp_path)) == ["a.bigarray", "empty"]


def _reader(
    url: str, options: dict[str, Any] | None, stop: threading.Event, seen: list[Any]
) -> None:
    while not stop.is_set():
        try:
            store = open_store(url, options)
            rows = store.read_rows("data", 0, store.variable().rows)
            seen.append(float(rows[0, 0]) if np.all(rows == rows[0, 0]) else "mixed")
        except StoreChangedError:
            pass  # opened the version just replaced: told to reopen, which the loop does
        except Exception as exc:
            seen.append(exc)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_cp_overwrite_replaces_without_a_moment_of_no_store(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if where == "s3":
        opts = request.getfixturevalue("s3_options")
        dst = f"s3://{request.getfixturevalue('bucket')}/cp.bigarray"
    else:
        opts, dst = None, str(tmp_path / "dst.bigarray")
    a = make(tmp_path / "a.bigarray", 1.0, "a")
    b = make(tmp_path / "b.bigarray", 2.0, "b")
    copy_store(a, dst, dst_options=opts, progress=False)
    stop, seen = threading.Event(), []
    t = threading.Thread(target=_reader, args=(dst, opts, stop, seen))
    t.start()
    try:
        for i in range(4):
            copy_store(
                b if i % 2 == 0 else a, dst, dst_options=opts, progress=False, overwrite=True
            )
    finally:
        stop.set()
        t.join()
    bad = [s for s in seen if not isinstance(s, float)]
    assert seen and not bad, bad[:3]
    check(dst, opts, 1.0, "a")
    if where == "s3":
        acc = FileAccess(dst, opts)
        acc.invalidate()
        root = acc.root + "/"
        left = {p[len(root) :] for p in acc.fs.find(acc.root)}
        named = manifest_objects(open_store(dst, opts).manifest) | {"manifest.json"}
        assert left == named, "objects of replaced versions remain"
    else:
        assert sorted(os.listdir(tmp_path)) == ["a.bigarray", "b.bigarray", "dst.bigarray"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_cp_overwrite_killed_before_its_commit_leaves_the_old_store(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import json

    if where == "s3":
        opts = request.getfixturevalue("s3_options")
        dst = f"s3://{request.getfixturevalue('bucket')}/cp.bigarray"
    else:
        opts, dst = None, str(tmp_path / "dst.bigarray")
    a = make(tmp_path / "a.bigarray", 1.0, "a")
    b = make(tmp_path / "b.bigarray", 2.0, "b")
    copy_store(a, dst, dst_options=opts, progress=False)
    args = ["cp", b, dst, "--overwrite", "--quiet"]
    if opts:
        args += ["--dst-options", json.dumps(opts)]
    env = dict(os.environ, BIGARRAY_REMOTE_CRASH_AT="copy-before-manifest")
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    code = f"import sys; from bigarray.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 77, proc.stderr.decode()[-2000:]
    check(dst, opts, 1.0, "a")
    if where == "local":
        assert np.all(np.asarray(PointerArray(dst)) == 1.0)


def test_replacing_a_store_with_an_open_writer_is_refused(tmp_path: Path) -> None:
    """``to_bigarray(remove_exist=True)``, ``bigarray cp --overwrite`` and the xarray
    writer's ``mode="w"`` refuse a store that a writer session holds open, as the seed
    writers' ``remove_exist`` does; once it is closed they replace it."""
    import dask.array as da
    import xarray as xr

    from bigarray.dask_backend import to_bigarray
    from bigarray.errors import StoreExistsError
    from bigarray.xarray_backend import to_bigarray as xr_to_bigarray

    src = make(tmp_path / "src", 2.0, "s", n=2)
    dst = make(tmp_path / "dst", 1.0, "d", n=2)
    w = PointerArrayWriter(dst)
    w.write({"late": np.full((5, 4), 3.0)})
    with pytest.raises(StoreExistsError, match="live writer"):
        to_bigarray(da.zeros((10, 4), chunks=(5, 4)), dst, remove_exist=True)
    with pytest.raises(StoreExistsError, match="live writer"):
        copy_store(src, dst, overwrite=True)
    with pytest.raises(StoreExistsError, match="live writer"):
        xr_to_bigarray(xr.Dataset({"a": ("row", np.ones(3))}), dst, mode="w")
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]
    w.close()
    assert PointerArray(dst)["late"].shape == (5, 4)  # the open writer's rows committed
    copy_store(src, dst, overwrite=True)
    assert sorted(PointerArray(dst).indices) == ["s0", "s1"]


def test_cp_refuses_a_destination_inside_the_source_and_quiet_prints_nothing(
    tmp_path: Path, capsys: Any
) -> None:
    from bigarray.errors import StoreExistsError

    src = make(tmp_path / "s", 1.0, "a", n=2)
    for dst in (os.path.join(src, "inner"), src):
        with pytest.raises(StoreExistsError, match="inside it"):
            copy_store(src, dst, overwrite=True, progress=False)
    assert sorted(PointerArray(src).indices) == ["a0", "a1"]
    assert not os.path.exists(os.path.join(src, "inner"))
    capsys.readouterr()
    assert main(["cp", src, str(tmp_path / "c"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_cp_of_a_store_being_committed_to_copies_one_whole_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits landing during a copy delete index files of the commit being copied (a store
    keeps the previous commit's only): a local source's files are held open from the start,
    so the copy still takes the commit it began on, whole and verified."""
    import bigarray.copy as copy_mod
    from bigarray.core.verify import verify_store

    src, dst = tmp_path / "src", tmp_path / "dst"
    w = PointerArrayWriter(src, shape=(0, 2), dtype="i4")
    w.write({"a": np.ones((3, 2), "i4")})
    w.flush()
    first = open_store(str(src)).manifest.segments
    assert first is not None
    named = src / first.all_runs[0].files["names"]
    real = copy_mod._copy_file
    commits = [0]

    def commit_while_copying(*args: Any, **kwargs: Any) -> None:
        while named.exists():  # on the first file copied: until the copied index is gone
            commits[0] += 1
            w.write({f"n{commits[0]}": np.full((1, 2), commits[0], "i4")})
            w.flush()
        real(*args, **kwargs)

    monkeypatch.setattr(copy_mod, "_copy_file", commit_while_copying)
    copy_store(str(src), str(dst), progress=False)
    monkeypatch.undo()
    assert commits[0] >= 2  # the race happened
    w.close()
    assert verify_store(str(dst)).ok
    got = PointerArray(dst)
    assert list(got.indices) == ["a"] and (np.asarray(got["a"]) == 1).all()
    assert len(PointerArray(src).indices) == commits[0] + 1
