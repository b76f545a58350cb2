"""A read-only, array-like handle on a committed variable that is *not* an ndarray.

``dask.array.from_array`` calls ``x.copy()`` on anything array-like that has one, and slices
plain ndarrays eagerly into the graph, so ``da.from_array(PointerArray(...))`` reads the whole
memory map into the client and ships it with the graph. :class:`LazyArray` is the way around
that: it has ``shape``, ``dtype``, ``ndim``, segment-aligned ``chunks``, ``__getitem__``
returning numpy and ``__array__``, but it holds no data. It pickles by reference (URL,
options, the committed shards it saw) and reopens the store inside whichever process reads
it, through a small per-process cache with a bound on open stores. Its ``copy()`` returns
another handle on the same immutable committed rows, so ``da.from_array(handle)`` copies
nothing and its graph stays a few kilobytes on every scheduler.

The same handle backs :func:`bigarray.dask_backend.from_bigarray` and the xarray backend.

Examples
--------
>>> import dask.array as da                                  # doctest: +SKIP
>>> h = bigarray.open("features.bigarray")                   # doctest: +SKIP
>>> x = da.from_array(h)          # chunks follow segments    # doctest: +SKIP
>>> x.sum().compute()                                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .core.cache import MAX_OPEN_STORES, OPEN_STORES, freeze_options, store_key
from .core.chunks import rows_per_chunk, segment_chunks
from .core.filesystem import is_local, local_path
from .core.format import Shard, Variable, normalize_dtype
from .core.index import SegmentArrays
from .core.store import SegmentLookup, StoreReader, open_local
from .core.store import open_store as open_any
from .errors import SchemaError, SegmentNotFoundError, StoreChangedError, StoreNotFoundError

__all__ = [
    "EMPTY_INDEX",
    "MAX_OPEN_STORES",
    "LazyArray",
    "SupportsLazyArray",
    "chunk_bytes",
    "open_array",
    "target_rows",
]

_DEFAULT_CHUNK_BYTES = 128 << 20


# ----------------------------------------------------------------------------- the seam
def open_store(url: str, storage_options: Mapping[str, Any] | None = None) -> StoreReader:
    """Open the store at ``url`` (a memory-mapped local store, or an fsspec reader)."""
    if is_local(url):
        return open_local(local_path(url))
    return open_any(url, storage_options=dict(storage_options or {}))


# ----------------------------------------------------------------------------- chunk plans
def chunk_bytes(chunks: Any, row_nbytes: int) -> int:
    """Target bytes per chunk for ``chunks`` = ``"auto"`` (dask's ``array.chunk-size``), a
    byte string such as ``"64 MiB"``, or an int number of rows (of ``row_nbytes`` each),
    for the planner :func:`bigarray.core.chunks.segment_chunks`."""
    if isinstance(chunks, bool):
        raise SchemaError(f"chunks={chunks!r}: expected 'auto', 'segments', an int or bytes")
    if isinstance(chunks, (int, np.integer)):
        if chunks <= 0:
            raise SchemaError(
                f"chunks={chunks!r}: a row count must be >= 1 (or use 'auto' or 'segments')"
            )
        return int(chunks) * max(1, row_nbytes)
    if chunks == "auto":
        nbytes: int = _DEFAULT_CHUNK_BYTES
        try:
            import dask
            from dask.utils import parse_bytes

            nbytes = int(parse_bytes(dask.config.get("array.chunk-size", "128MiB")))
        except ImportError:  # dask is optional for the handle itself
            pass
        return nbytes
    if isinstance(chunks, str):
        try:
            from dask.utils import parse_bytes

            return int(parse_bytes(chunks))
        except (ImportError, ValueError):
            raise SchemaError(
                f"chunks={chunks!r} is not understood: expected 'auto', 'segments', an int "
                "number of rows, or a size such as '64 MiB'"
            ) from None
    raise SchemaError(
        f"chunks={chunks!r} is not understood: expected 'auto', 'segments', an int "
        "number of rows, a size such as '64 MiB', or a tuple of row counts"
    )


def target_rows(chunks: Any, row_nbytes: int) -> int:
    """Rows per chunk for ``chunks`` (see :func:`chunk_bytes`)."""
    return rows_per_chunk(chunk_bytes(chunks, row_nbytes), row_nbytes)


def check_row_chunks(
    chunks: tuple[int, ...], rows: int, bounds: np.ndarray | None, where: str
) -> tuple[int, ...]:
    """Validate explicit row chunks: they sum to ``rows`` and never cut a segment."""
    sizes = np.asarray(chunks, np.int64)
    if sizes.ndim != 1 or (sizes < 0).any() or int(sizes.sum()) != rows:
        raise SchemaError(
            f"{where}: row chunks {_short(chunks)} must be non-negative and sum to {rows} rows"
        )
    if bounds is not None and len(bounds):
        cuts = np.cumsum(sizes)[:-1]
        b = np.asarray(bounds, np.int64)
        i = np.searchsorted(b[:, 0], cuts, "right") - 1
        ok = i >= 0
        bad = np.zeros(len(cuts), bool)
        bad[ok] = (b[i[ok], 0] < cuts[ok]) & (cuts[ok] < b[i[ok], 1])
        if bad.any():
            c = int(cuts[bad][0])
            j = int(i[bad][0])
            raise SchemaError(
                f"{where}: a chunk boundary at row {c} cuts segment #{j} rows "
                f"[{int(b[j, 0])}, {int(b[j, 1])}); chunk boundaries must fall on segment "
                "boundaries. Use chunks='auto', 'segments' or an int number of rows."
            )
    return tuple(int(s) for s in sizes)


def _short(t: tuple[int, ...]) -> str:
    return repr(t) if len(t) <= 6 else f"({', '.join(map(str, t[:3]))}, ..., {t[-1]}) [{len(t)}]"


# ----------------------------------------------------------------------------- no segments
class _EmptyIndex(Mapping[str, tuple[int, int]]):
    """The segment index of a store written without names: no name is in it."""

    @property
    def bounds(self) -> np.ndarray:
        return np.zeros((0, 2), np.int64)

    @property
    def arrays(self) -> SegmentArrays:
        return SegmentArrays.empty()

    def __getitem__(self, name: str) -> tuple[int, int]:
        raise SegmentNotFoundError(f"no segment named {name!r}: this store has no segment index")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


#: ``x.indices`` of a store without a segment index (an empty read-only mapping).
EMPTY_INDEX: SegmentLookup = _EmptyIndex()


# ----------------------------------------------------------------------------- open stores
class _Opened:
    """One store opened in this process: the store object and the views of the shards the
    handle saw (local), or the store for ``read_rows`` (remote)."""

    def __init__(self, store: StoreReader, var: Variable, local: bool) -> None:
        self.store = store
        self.var = var
        self.local = local
        self.views: list[np.ndarray] = []
        self.starts = np.array([s.start for s in var.shards], np.int64)
        if local:
            self.views = [np.asarray(v) for v in store.shard_views(var)]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` (a view of the memory map when one shard holds them)."""
        if not self.local:
            return np.asarray(self.store.read_rows(self.var.name, start, stop))
        if len(self.views) == 1:
            return self.views[0][start:stop]
        if not self.views:
            return np.zeros((0, *self.var.shape[1:]), self.var.dtype)
        parts = []
        for shard, view in zip(self.var.shards, self.views):
            a, b = max(start, shard.start), min(stop, shard.stop)
            if a < b:
                parts.append(view[a - shard.start : b - shard.start])
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return np.zeros((0, *self.var.shape[1:]), self.var.dtype)
        return np.concatenate(parts)

    def close(self) -> None:
        # the views stay: a thread may be reading through them (their maps go with them)
        self.store.close()


#: The one per-process cache of open stores (see :mod:`bigarray.core.cache`).
_CACHE = OPEN_STORES


def open_store_count() -> int:
    """How many stores this process holds open in its cache of open stores (for tests and
    tools)."""
    return len(_CACHE)


# ----------------------------------------------------------------------------- the handle
def _fingerprint(store: StoreReader, var: Variable, local: bool) -> tuple[Any, ...]:
    """Identity of the committed bytes: each shard file's inode, size and mtime (local), or
    the remote store's commit (URL, manifest generation and bytes)."""
    if not local:
        return (store.fingerprint(),)
    out = []
    for s in var.shards:
        try:
            st = os.stat(os.path.join(store.path, s.path))
            out.append((s.path, st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append((s.path, -1, -1, -1))
    return tuple(out)


def _sample_crc(opened: _Opened, rows: int) -> int:
    """crc32 of the first and last few KiB of the committed rows: they never change on
    append, and almost surely change when the store is replaced by another one."""
    import zlib

    if not opened.local or rows == 0 or opened.var.row_nbytes == 0:
        return 0
    k = max(1, 4096 // opened.var.row_nbytes)
    head = np.ascontiguousarray(opened.read(0, min(rows, k)))
    tail = np.ascontiguousarray(opened.read(max(0, rows - k), rows))
    return zlib.crc32(tail.view(np.uint8).tobytes(), zlib.crc32(head.view(np.uint8).tobytes()))


class LazyArray:
    """A read-only, array-like view of one committed variable; holds no data.

    Build it with :func:`open_array` (or ``bigarray.open``, ``PointerArray.lazy``).

    Attributes
    ----------
    shape, dtype, ndim, size, nbytes
        As for numpy.
    chunks
        Segment-aligned chunk sizes (dask's ``chunks`` format) at dask's configured
        ``array.chunk-size``: ``da.from_array(handle)`` follows segments.
    url, variable
        Where the data lives and which variable this is.
    """

    __slots__ = (
        "_cache_key",
        "_chunk_cache",
        "_fp",
        "_generation",
        "_options",
        "_var",
        "url",
    )

    def __init__(
        self,
        url: str,
        var: Variable,
        generation: int,
        fingerprint: tuple[Any, ...],
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self._var = var
        self._generation = generation
        self._fp = fingerprint
        self._options = dict(storage_options or {})
        self._chunk_cache: dict[Any, tuple[int, ...]] = {}
        self._cache_key: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ array protocol
    @property
    def variable(self) -> str:
        return self._var.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._var.shape

    @property
    def dtype(self) -> np.dtype:
        return self._var.dtype

    @property
    def ndim(self) -> int:
        return len(self._var.shape)

    @property
    def size(self) -> int:
        return math.prod(self._var.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self._var.dtype.itemsize

    @property
    def dims(self) -> tuple[str, ...]:
        return self._var.dims

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._var.attrs)

    @property
    def generation(self) -> int:
        """Manifest generation this handle reads (its committed snapshot)."""
        return self._generation

    @property
    def commit(self) -> tuple[Any, ...]:
        """An opaque, hashable identity of the commit this handle reads (the key under
        which readers opened for it are cached)."""
        return (self._generation, self._fp)

    @property
    def storage_options(self) -> dict[str, Any]:
        return dict(self._options)

    def __len__(self) -> int:
        return self._var.shape[0]

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """Segment-aligned chunks at dask's ``array.chunk-size`` (rows only; rows whole)."""
        return (self.row_chunks("auto"), *((s,) for s in self.shape[1:]))

    def row_chunks(self, chunks: Any = "auto", *, split: bool = True) -> tuple[int, ...]:
        """Chunk sizes along rows on segment boundaries.

        Parameters
        ----------
        chunks
            ``"auto"`` (dask's ``array.chunk-size``), ``"segments"`` (one chunk per
            segment), an int (about this many rows), a byte size string (``"64 MiB"``),
            or a tuple of row counts (checked against the segments).
        split
            Whether a single segment longer than the target may be split.
        """
        if isinstance(chunks, dict):
            chunks = chunks.get(0, "auto")
        if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], tuple):
            chunks = chunks[0]
        if isinstance(chunks, (tuple, list)):
            return check_row_chunks(
                tuple(int(c) for c in chunks), len(self), self.segment_bounds(), repr(self)
            )
        row_nbytes = self._var.row_nbytes
        if chunks == "segments":
            key: Any = ("segments",)
            target = None
        else:
            target = chunk_bytes(chunks, row_nbytes)
            key = (rows_per_chunk(target, row_nbytes), split)
        hit = self._chunk_cache.get(key)
        if hit is None:
            forced = [s.start for s in self._var.shards[1:]]
            # a target of every row cuts only at shard starts whatever the segments: the
            # plan of a store that fits one chunk never reads its (maybe huge) index
            whole = target is not None and rows_per_chunk(target, row_nbytes) >= len(self)
            bounds = None if whole else self.segment_bounds()
            hit = segment_chunks(bounds, len(self), row_nbytes, target, forced=forced, split=split)
            self._chunk_cache[key] = hit
        return hit

    def segment_bounds(self) -> np.ndarray | None:
        """``(n, 2)`` int64 ``[start, stop)`` of every segment in row order (within this
        snapshot's rows), or ``None`` when the store has no segment index."""
        idx = self._opened().store.index
        if idx is None:
            return None
        b = idx.bounds
        if len(b) and int(b[-1, 1]) > len(self):  # segments committed after this snapshot
            b = b[: int(np.searchsorted(b[:, 1], len(self), "right"))]
        return b

    @property
    def indices(self) -> Any:
        """The store's segment index: a read-only mapping ``name -> (start, stop)``."""
        idx = self._opened().store.index
        if idx is None:
            return EMPTY_INDEX
        return idx

    def segment(self, name: str) -> np.ndarray:
        """Rows of segment ``name``."""
        start, stop = self.indices[name]
        return self[start:stop]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as numpy (a read-only view of the memory map, locally)."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        return self._opened().read(start, max(start, stop))

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, str):
            return self.segment(key)
        opened = self._opened()
        if opened.local and len(opened.views) == 1:
            # numpy does every kind of indexing on the map; basic slices stay views
            return np.asarray(opened.views[0][key])
        return self._getitem_rows(key, opened)

    def _getitem_rows(self, key: Any, opened: _Opened) -> np.ndarray:
        """Indexing for several shards or a remote store: read the bounding row range once,
        then let numpy index it."""
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is None for k in key):  # new axes: rare, read everything then index
            return np.asarray(opened.read(0, len(self)))[key]
        if key and key[0] is Ellipsis:
            # the Ellipsis covers axis 0 unless the key indexes every axis after it
            key = key[1:] if len(key) - 1 >= self.ndim else (slice(None), *key)
        if not key:
            key = (slice(None),)
        k0, rest = key[0], key[1:]
        n = len(self)
        if isinstance(k0, (int, np.integer)) and not isinstance(k0, bool):
            r = int(k0) + n if k0 < 0 else int(k0)
            if not 0 <= r < n:
                raise IndexError(f"index {int(k0)} is out of bounds for axis 0 with size {n}")
            return np.asarray(opened.read(r, r + 1)[(0, *rest)])
        if isinstance(k0, slice):
            start, stop, step = k0.indices(n)
            if step == 1:
                return np.asarray(opened.read(start, max(start, stop))[(slice(None), *rest)])
            idx = np.arange(start, stop, step)
        else:
            idx = np.asarray(k0)
            if idx.dtype == bool:
                if idx.shape[0] != n:
                    raise IndexError(f"boolean index of length {idx.shape[0]} for {n} rows")
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"row index out of bounds for axis 0 with size {n}")
        if idx.size == 0:
            return np.zeros((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        return np.asarray(opened.read(lo, hi)[(idx - lo, *rest)])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[...]
        if dtype is not None and np.dtype(dtype) != out.dtype:
            return out.astype(dtype)
        if copy:
            return np.array(out, copy=True)
        return out

    def copy(self) -> LazyArray:
        """Another handle on the same committed rows (the data is immutable: nothing is
        copied; ``dask.array.from_array`` calls this)."""
        return LazyArray(self.url, self._var, self._generation, self._fp, self._options)

    def __reduce__(self) -> Any:
        return (
            _rebuild,
            (self.url, _var_state(self._var), self._generation, self._fp, self._options),
        )

    def __dask_tokenize__(self) -> Any:
        return (
            "bigarray.LazyArray",
            self.url,
            self._var.name,
            self._generation,
            self._fp,
            self._var.shape,
            self._var.dtype.str,
            freeze_options(self._options),
        )

    def __repr__(self) -> str:
        return (
            f"<bigarray.LazyArray {self.url!r} variable={self._var.name!r} shape={self.shape} "
            f"dtype={self.dtype} generation={self._generation}>"
        )

    # ------------------------------------------------------------------ opening
    def _key(self) -> tuple[Any, ...]:
        # what the handle saw is the commit: a rewritten store is reopened, never served
        # from a stale map. Built once: every read looks it up.
        key = self._cache_key
        if key is None:
            key = store_key(self.url, self._options, self.commit, "lazy", self._var.name)
            self._cache_key = key
        return key

    def _opened(self) -> _Opened:
        key = self._key()
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        store = open_store(self.url, self._options)
        try:
            local = is_local(self.url)
            self._check_same(store, local)
            opened = _Opened(store, self._var, local)
            if local and _sample_crc(opened, len(self)) != self._fp[-1]:
                raise StoreChangedError(
                    f"the store {self.url!r} changed after this array was opened: its first "
                    "and last rows hold other bytes now (the store was replaced). The rows "
                    "this array (or dask graph) refers to are gone; open the store again "
                    "and rebuild the computation."
                )
        except BaseException:
            store.close()
            raise
        return _CACHE.put(key, opened)

    def _check_same(self, store: StoreReader, local: bool) -> None:
        """Refuse to read a store that was replaced since this handle was made (the rows it
        names may hold other data now); appends are fine, committed rows never change."""
        now = store.manifest
        var = store.variable(self._var.name)
        why = ""
        if now.generation < self._generation:
            why = f"its manifest generation went back from {self._generation} to {now.generation}"
        elif var.dtype != self._var.dtype or var.shape[1:] != self._var.shape[1:]:
            why = f"it now holds {var.dtype} rows of shape {var.shape[1:]}"
        elif var.rows < self._var.rows:
            why = f"it now holds {var.rows} rows, fewer than the {self._var.rows} expected"
        elif local:
            now_fp = _fingerprint(store, self._var, local)
            for (path, ino, _, _), (_, ino_now, _, _) in zip(self._fp[:-1], now_fp):
                if ino != ino_now:
                    why = f"its data file {path!r} was replaced"
                    break
        elif self._fp != _fingerprint(store, self._var, local):
            # Remote objects are never rewritten (every commit names new ones): the rows are
            # the same only if every shard this handle read is still committed, unchanged.
            now_shards = {(s.path, s.offset, s.start): s.stop for s in var.shards}
            for s in self._var.shards:
                if now_shards.get((s.path, s.offset, s.start), -1) < s.stop:
                    why = (
                        f"it was committed again (generation {self._generation} -> "
                        f"{now.generation}) and no longer holds the objects this array read"
                    )
                    break
        if why:
            raise StoreChangedError(
                f"the store {self.url!r} changed after this array was opened: {why}. The "
                "rows this array (or dask graph) refers to are gone; open the store again "
                "and rebuild the computation."
            )


@runtime_checkable
class SupportsLazyArray(Protocol):
    """An object that can give the :class:`LazyArray` of the store it reads (an open
    ``MmapArray``/``PointerArray``): how the dask face takes one without importing it."""

    def __bigarray_lazy__(self, variable: str | None = None) -> LazyArray: ...


def _var_state(var: Variable) -> tuple[Any, ...]:
    return (
        var.name,
        var.dtype.str,
        var.shape,
        var.dims,
        tuple((s.path, s.offset, s.start, s.stop) for s in var.shards),
        var.attrs,
    )


def _rebuild(
    url: str,
    state: tuple[Any, ...],
    generation: int,
    fingerprint: tuple[Any, ...],
    options: dict[str, Any],
) -> LazyArray:
    name, dtype, shape, dims, shards, attrs = state
    var = Variable(
        name,
        normalize_dtype(dtype),
        tuple(shape),
        tuple(dims),
        tuple(Shard(*s) for s in shards),
        dict(attrs),
    )
    return LazyArray(url, var, generation, fingerprint, options)


def open_array(
    path_or_url: str | os.PathLike[str],
    variable: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> LazyArray:
    """Open a committed variable as a :class:`LazyArray` (no data is read).

    Parameters
    ----------
    path_or_url
        A store directory, or an fsspec URL (``s3://bucket/x.bigarray``, ``memory://...``).
    variable
        Which variable (default ``"data"`` or the only one).
    storage_options
        fsspec options for remote URLs (ignored for local paths).

    Returns
    -------
    LazyArray

    Raises
    ------
    StoreNotFoundError
        No store at ``path_or_url``.
    VariableNotFoundError
        The store has no such variable.

    Examples
    --------
    >>> h = open_array("features.bigarray")        # doctest: +SKIP
    >>> h.shape, h.chunks[0][:3]                  # doctest: +SKIP
    """
    if not isinstance(path_or_url, (str, os.PathLike)):
        raise StoreNotFoundError(
            f"open_array takes a store path or URL, not {type(path_or_url).__name__} "
            f"({path_or_url!r}); for an open PointerArray use x.lazy"
        )
    url = os.fspath(path_or_url)
    local = is_local(url)
    if local:
        url = local_path(url)
    store = open_store(url, storage_options)
    try:
        var = store.variable(variable)
        generation = store.manifest.generation
        opened = _Opened(store, var, local)
        fp = _fingerprint(store, var, local)
        if local:
            fp = (*fp, _sample_crc(opened, var.rows))
        handle = LazyArray(url, var, generation, fp, storage_options)
    except BaseException:
        store.close()
        raise
    _CACHE.put(handle._key(), opened)
    return handle
