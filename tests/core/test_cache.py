"""The one per-process cache of open stores (:mod:`bigarray.core.cache`): one key recipe,
bounded, shared by the lazy handle, the torch datasets and :func:`open_cached`."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarray
from bigarray import PointerArrayWriter
from bigarray import lazy as lazy_mod
from bigarray.core.cache import OPEN_STORES, OpenStores, freeze_options, store_key
from bigarray.core.store import open_cached


class _Item:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _write(path: Path, rows: int = 4, **kw: Any) -> np.ndarray:
    data = np.arange(rows * 2, dtype="i4").reshape(rows, 2)
    with PointerArrayWriter(path, shape=(0, 2), dtype="i4", **kw) as w:
        w.write({"a": data[:1], "b": data[1:]})
    return data


def test_one_key_recipe_whatever_spells_the_store(tmp_path: Path) -> None:
    p = tmp_path / "s"
    keys = {store_key(u) for u in [str(p), f"file://{p}", f"FILE://{p}", f"local://{p}"]}
    assert len(keys) == 1
    rel = os.path.relpath(p)
    assert store_key(rel) == store_key(p)
    assert store_key("s3://b/x/") == store_key("s3://b/x")
    a = {"client_kwargs": {"endpoint_url": "http://h", "region": "r"}, "anon": True}
    b = {"anon": True, "client_kwargs": {"region": "r", "endpoint_url": "http://h"}}
    assert store_key("s3://b/x", a) == store_key("s3://b/x", b)
    assert store_key("s3://b/x", a) != store_key("s3://b/x", {**a, "anon": False})
    assert store_key("s3://b/x", a, commit=1) != store_key("s3://b/x", a, commit=2)
    hash(freeze_options({"list": [1, {"x": [2]}], "set": {3}, "obj": bytearray(b"z")}))


def test_the_cache_is_bounded_and_keeps_what_another_thread_put_first() -> None:
    cache = OpenStores(3)
    items = [_Item() for _ in range(5)]
    for i, item in enumerate(items):
        assert cache.put((f"/s{i}",), item) is item
    assert len(cache) == 3
    assert cache.get(("/s0",)) is None and cache.get(("/s4",)) is items[4]
    # evicted entries are dropped, not closed: another face may still read through them
    assert not any(i.closed for i in items)
    late = _Item()
    assert cache.put(("/s4",), late) is items[4] and late.closed
    assert cache.open(("/s9",), _Item) is cache.open(("/s9",), _Item)


def test_release_closes_every_entry_of_a_store(tmp_path: Path) -> None:
    cache = OpenStores(8)
    mine = [_Item(), _Item()]
    other = _Item()
    cache.put(store_key(tmp_path / "a", None, 1), mine[0])
    cache.put(store_key(f"file://{tmp_path}/a", None, 2, "lazy", "data"), mine[1])
    cache.put(store_key(tmp_path / "b"), other)
    cache.release(tmp_path / "a")
    assert all(i.closed for i in mine) and not other.closed and len(cache) == 1
    cache.clear()
    assert other.closed and len(cache) == 0


def _forked_sizes(cache: OpenStores, q: Any) -> None:
    q.put(sorted(str(k[0]) for k in cache._items))


def test_a_forked_child_keeps_local_entries_and_drops_remote_ones() -> None:
    cache = OpenStores(8)
    cache.put(("/data/local",), _Item())
    cache.put(("s3://bucket/remote",), _Item())
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_forked_sizes, args=(cache, q))
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert got == ["/data/local"]
    assert len(cache) == 2  # the parent keeps both


def test_lazy_handles_share_the_one_cache(tmp_path: Path) -> None:
    OPEN_STORES.clear()
    data = _write(tmp_path / "s")
    h = bigarray.open(tmp_path / "s")
    np.testing.assert_array_equal(h["b"], data[1:])
    assert lazy_mod.open_store_count() == len(OPEN_STORES) == 1
    OPEN_STORES.release(f"file://{tmp_path}/s")
    assert len(OPEN_STORES) == 0
    np.testing.assert_array_equal(h[...], data)  # simply reopened


def test_open_cached_shares_a_reader_and_follows_a_local_commit(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write(path)
    first = open_cached(path)
    assert open_cached(f"file://{path}") is first
    _write(path, rows=6, remove_exist=True)  # committed again at the same path
    now = open_cached(path)
    assert now is not first and now.variable().rows == 6
    # pinned to a commit: a reader per commit
    pinned = open_cached(path, commit=now.fingerprint())
    assert pinned is open_cached(path, commit=now.fingerprint())
    assert pinned.fingerprint() == now.fingerprint()


def test_open_cached_pins_a_remote_commit(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    path = tmp_path / "s"
    _write(path)
    url = f"memory://open-cached-{os.getpid()}/s"
    fs = fsspec.filesystem("memory")
    fs.put(str(path), url, recursive=True)
    old = open_cached(url)
    assert open_cached(url + "/") is old
    _write(path, rows=9, remove_exist=True)
    fs.rm(url, recursive=True)
    fs.put(str(path), url, recursive=True)
    # unpinned, a remote reader is the one first opened (no request per call) ...
    assert open_cached(url) is old
    # ... pinned to what the caller read, another commit is another reader
    new = open_cached(url, commit="read-after-the-rewrite")
    assert new is not old and new.variable().rows == 9
    OPEN_STORES.release(url)
