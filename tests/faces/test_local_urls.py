"""Every public entry point takes a local store the same way, whatever spells its path:
a plain path, ``file:///x``, ``FILE:///x`` or ``local:///x`` (one ``is_local``/``local_path``
in :mod:`bigarray.core.filesystem`)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from legacy_files import write_legacy_pointer

import bigarray
from bigarray import MmapArray, PointerArray, PointerArrayWriter
from bigarray.core.filesystem import is_local, local_path
from bigarray.core.store import Store, is_store, open_store
from bigarray.errors import NotAStoreError

SPELLINGS = ["plain", "file://", "FILE://", "local://", "file:"]


def _spell(path: Path, how: str) -> str:
    return str(path) if how == "plain" else f"{how}{path}"


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "s.bigarray"
    data = np.arange(40, dtype="f4").reshape(20, 2)
    with PointerArrayWriter(path, shape=(0, 2), dtype="f4") as w:
        w.write({"a": data[:5], "b": data[5:12], "c": data[12:]})
    return path, data


@pytest.mark.parametrize("how", SPELLINGS)
def test_the_one_is_local_takes_every_spelling_of_a_local_path(tmp_path: Path, how: str) -> None:
    url = _spell(tmp_path / "x", how)
    assert is_local(url)
    assert local_path(url) == str(tmp_path / "x")
    assert not is_local("s3://bucket/x") and not is_local("simplecache::file:///x")


@pytest.mark.parametrize("how", SPELLINGS)
def test_every_reader_opens_a_local_store_by_any_spelling(
    store: tuple[Path, np.ndarray], how: str
) -> None:
    path, data = store
    url = _spell(path, how)
    assert is_store(url)
    with open_store(url) as s:
        assert isinstance(s, Store)  # memory-mapped, not read through fsspec
        np.testing.assert_array_equal(s.read_rows("data", 0, 20), data)
    h = bigarray.open(url)
    assert h.url == str(path)  # the handle names the directory, never the URL
    np.testing.assert_array_equal(h["b"], data[5:12])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(h))[...], data)
    np.testing.assert_array_equal(np.asarray(PointerArray(url)), data)
    np.testing.assert_array_equal(np.asarray(MmapArray(url)), data)


@pytest.mark.parametrize("how", SPELLINGS)
def test_dask_reads_and_writes_a_local_store_by_any_spelling(
    tmp_path: Path, store: tuple[Path, np.ndarray], how: str
) -> None:
    da = pytest.importorskip("dask.array")
    from bigarray.dask_backend import from_bigarray, map_segments, to_bigarray

    path, data = store
    x = from_bigarray(_spell(path, how), chunks="segments")
    assert x.chunks[0] == (5, 7, 8)
    np.testing.assert_array_equal(x.compute(scheduler="sync"), data)
    lengths = dict(map_segments(len, _spell(path, how)).compute(scheduler="sync"))
    assert lengths == {"a": 5, "b": 7, "c": 8}
    out = tmp_path / "out.bigarray"
    to_bigarray(da.from_array(data, chunks=7), _spell(out, how))
    assert out.is_dir()  # written where the path says, not under a directory named "file:"
    np.testing.assert_array_equal(np.asarray(MmapArray(out)), data)


@pytest.mark.parametrize("how", SPELLINGS)
def test_torch_dataset_opens_a_local_store_by_any_spelling(
    store: tuple[Path, np.ndarray], how: str
) -> None:
    pytest.importorskip("torch")
    from bigarray.torch import SegmentDataset

    path, data = store
    ds: Any = SegmentDataset(_spell(path, how))
    assert ds.url == str(path)
    name, t = ds[1]
    assert name == "b"
    np.testing.assert_array_equal(t.numpy(), data[5:12])
    ds.check_unchanged()


@pytest.mark.parametrize("how", SPELLINGS)
def test_copy_takes_a_local_store_by_any_spelling(
    tmp_path: Path, store: tuple[Path, np.ndarray], how: str
) -> None:
    from bigarray.copy import copy_store

    path, data = store
    dest = tmp_path / "copy.bigarray"
    copy_store(_spell(path, how), _spell(dest, how))
    assert dest.is_dir()
    np.testing.assert_array_equal(PointerArray(dest)["c"], data[12:])


@pytest.mark.parametrize("how", SPELLINGS)
def test_the_xarray_engine_opens_a_local_store_by_any_spelling(
    store: tuple[Path, np.ndarray], how: str
) -> None:
    xr = pytest.importorskip("xarray")
    path, data = store
    with xr.open_dataset(_spell(path, how), engine="bigarray") as ds:
        np.testing.assert_array_equal(ds["data"].values, data)


@pytest.mark.parametrize("how", SPELLINGS)
def test_the_command_line_and_store_tools_take_any_spelling(
    tmp_path: Path, store: tuple[Path, np.ndarray], how: str, capsys: Any
) -> None:
    from bigarray.cli import main

    path, _ = store
    url = _spell(path, how)
    assert main(["info", url]) == 0
    assert "segments   3" in capsys.readouterr().out
    assert main(["verify", url]) == 0
    assert main(["compact", url, "--quiet"]) == 0
    assert bigarray.getsize(url) == bigarray.getsize(path) > 0
    bigarray.remove(url)
    assert not path.exists()


@pytest.mark.parametrize("how", SPELLINGS)
def test_convert_takes_any_spelling_of_its_source_and_destination(
    tmp_path: Path, store: tuple[Path, np.ndarray], how: str
) -> None:
    from bigarray.convert import convert

    np.save(tmp_path / "a.npy", np.arange(6))
    assert convert(_spell(tmp_path / "a.npy", how), _spell(tmp_path / "out", how)) == "npy"
    np.testing.assert_array_equal(np.asarray(MmapArray(tmp_path / "out")), np.arange(6))
    _, data = store
    legacy = tmp_path / "old.bin"
    write_legacy_pointer(legacy, data, {"a": (0, 5)})
    assert convert(_spell(legacy, how), _spell(tmp_path / "new", how)) == "legacy"
    np.testing.assert_array_equal(PointerArray(tmp_path / "new")["a"], data[:5])


@pytest.mark.parametrize("how", SPELLINGS)
def test_seed_writers_write_where_a_local_url_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """file:// (any case) and local:// name the path itself, never ./file:/... under the cwd."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    p = tmp_path / "e.bigarray"
    with PointerArrayWriter(p, shape=(None,), dtype="f8") as w:
        w.write({"a": np.arange(3.0)})
    with PointerArrayWriter(_spell(p, how)) as w:
        w.write({"b": np.arange(2.0)})
    assert dict(PointerArray(p).indices) == {"a": (0, 3), "b": (3, 5)}
    w2 = bigarray.MmapArrayWriter(_spell(tmp_path / "m.bigarray", how), shape=(4,), dtype="f8")
    w2.write(np.ones(4))
    w2.close()
    np.testing.assert_array_equal(MmapArray(tmp_path / "m.bigarray"), np.ones(4))
    assert w2.path == str(tmp_path / "m.bigarray")
    assert os.listdir(cwd) == []


@pytest.mark.parametrize("url", ["s3://bucket/x.bigarray", "memory://x", "simplecache::file:///x"])
def test_seed_writers_refuse_urls_of_other_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for cls in (PointerArrayWriter, bigarray.MmapArrayWriter):
        with pytest.raises(NotAStoreError, match="writes local stores only"):
            cls(url, shape=(2,), dtype="f8")
    assert os.listdir(tmp_path) == []
