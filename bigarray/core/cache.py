"""The one per-process cache of open stores: bounded, least recently used first out.

Every face that reopens stores by URL inside a worker (the lazy handle and dask graphs, the
torch datasets, the xarray engine) keeps what it opened here, under one key recipe
(:func:`store_key`): the normalised path or URL, the storage options frozen, the identity of
the commit the caller read (so a store rewritten since is another entry, never served from
a stale map) and whatever the face adds (a variable name). At most
:data:`MAX_OPEN_STORES` entries are held (each may hold memory maps, hence file
descriptors); the least recently used is closed first.

An evicted entry is dropped, not closed: another thread (or face) may still be reading
through it, and its maps are unmapped when the last user lets go of it. :meth:`release`
and :meth:`clear` close what they drop (a store being replaced or removed must not stay
pinned); arrays already handed out stay valid either way (a memory map lives as long as a
view of it). After a fork the child keeps the
local entries (maps are inherited) and drops the remote ones (an fsspec client is not
usable across a fork).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol, TypeVar

from .filesystem import is_local, local_path

__all__ = ["MAX_OPEN_STORES", "OPEN_STORES", "OpenStores", "freeze_options", "store_key"]

#: At most this many entries stay open per process (each holds a memory map, hence a file
#: descriptor, per shard); the least recently used is closed first.
MAX_OPEN_STORES = 64


class Closeable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closeable)


def normalise_url(url: str | os.PathLike[str]) -> str:
    """The cache's spelling of a store's location: an absolute path for a local store
    (whatever spelled it: ``file://``, ``local://``, relative), the URL without a trailing
    slash otherwise."""
    if is_local(url):
        return local_path(url)
    return os.fspath(url).rstrip("/")


def freeze_options(options: Mapping[str, Any] | None) -> Hashable:
    """``storage_options`` as a hashable value, equal for equal options in any order
    (nested dicts and lists too; anything unhashable by its ``repr``)."""

    def freeze(v: Any) -> Hashable:
        if isinstance(v, Mapping):
            return tuple(sorted((str(k), freeze(x)) for k, x in v.items()))
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x) for x in v)
        if isinstance(v, (set, frozenset)):
            return tuple(sorted(repr(x) for x in v))
        try:
            hash(v)
        except TypeError:
            return repr(v)
        return v

    return freeze(dict(options or {}))


def store_key(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    commit: Hashable = None,
    *extra: Hashable,
) -> tuple[Hashable, ...]:
    """The one key recipe: ``(normalised url, frozen options, commit identity, *extra)``.

    ``commit`` is what the caller read (a reader's ``fingerprint()``, a manifest
    generation); ``None`` when it pins none. ``extra`` tells apart entries a face derives
    from the same store (a variable's views).
    """
    return (normalise_url(url), freeze_options(storage_options), commit, *extra)


class OpenStores:
    """A bounded, thread-safe, per-process LRU of open stores (or anything with ``close``).

    Parameters
    ----------
    capacity
        Most entries held; the least recently used is closed beyond it.
    """

    def __init__(self, capacity: int = MAX_OPEN_STORES) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[Hashable, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        ref = weakref.ref(self)

        def after_fork() -> None:
            me = ref()
            if me is not None:
                me._after_fork()

        os.register_at_fork(after_in_child=after_fork)

    def get(self, key: tuple[Hashable, ...]) -> Any | None:
        """The entry under ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[Hashable, ...], item: T) -> T:
        """Keep ``item`` under ``key`` and return the entry kept: when another thread put one
        first, that one (``item``, never shared, is closed). Beyond the capacity the least
        recently used entry is dropped."""
        with self._lock:
            old = self._items.get(key)
            if old is None:
                self._items[key] = item
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
                return item
            self._items.move_to_end(key)
        item.close()
        return old

    def discard(self, key: tuple[Hashable, ...]) -> None:
        """Drop the entry under ``key`` (not closed: it may be in use)."""
        with self._lock:
            self._items.pop(key, None)

    def open(self, key: tuple[Hashable, ...], opener: Callable[[], T]) -> T:
        """The entry under ``key``, made by ``opener()`` (outside the lock) on a miss."""
        hit = self.get(key)
        if hit is not None:
            return hit
        return self.put(key, opener())

    def release(self, url: str | os.PathLike[str]) -> None:
        """Close and drop every entry of the store at ``url`` (a store being replaced or
        removed: its maps must not pin the old files)."""
        where = normalise_url(url)
        with self._lock:
            gone = [self._items.pop(k) for k in [k for k in self._items if k[0] == where]]
        for e in gone:
            e.close()

    def clear(self) -> None:
        """Close and drop every entry."""
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        for e in items:
            e.close()

    def __len__(self) -> int:
        return len(self._items)

    def _after_fork(self) -> None:
        # the parent's lock may have been held by another thread at the fork
        self._lock = threading.Lock()
        for key in [k for k in self._items if not is_local(str(k[0]))]:
            del self._items[key]  # not closed: the parent still uses it


#: The per-process cache every face uses.
OPEN_STORES = OpenStores(MAX_OPEN_STORES)
