"""The xarray face: ``xr.open_dataset(path, engine="bigarray")``, ``to_bigarray`` and accessors.

Mapping between a store and a :class:`xarray.Dataset`
----------------------------------------------------

Every variable of the store's manifest becomes one xarray variable of the same name, dims,
dtype and attributes. Variables whose first dim is the store's row dim (``manifest.row_dim``,
``"row"`` unless written otherwise) share that dim; other variables (coordinates along
other dims, small arrays, scalars) come back with their own dims. A variable is a
coordinate if it was one when written (``"role": "coordinate"`` in its manifest encoding)
or if it is a dimension coordinate.

The segment index becomes a ``segment`` dimension with three coordinates:

``segment``        the names (``<U`` strings), the dimension coordinate: ``ds.sel(segment=...)``
``segment_start``  int64, first row of each segment (coordinate along ``segment``)
``segment_stop``   int64, one past the last row (half-open ``[start, stop)``)

Segments are in row order. Per-segment variables written along ``segment`` (labels, speaker
ids) come back along the same dimension. ``open_dataset(..., segments=False)`` leaves the
segment table out, ``segments="lazy"`` makes its three variables lazy (read from the on-disk
index on first use); add ``create_default_indexes=False`` so that xarray does not build a
pandas index of the names either: opening then costs the same for 20 k or 1 M segments.

Stores written by the seed API (``PointerArrayWriter``/``MmapArrayWriter``: one unnamed
variable) open as a data variable ``data`` with dims ``("row", "dim_1", ...)``.

Reading
-------
Opening reads the manifest and (for ``segments=True``) the segment index; no data. Each
variable is a :class:`xarray.core.indexing.LazilyIndexedArray` over a
:class:`BigArrayBackendArray`, which pickles as (file paths, byte offsets, dtype, shape)
or (URL, storage options) and holds no descriptor. A local read maps exactly the rows asked
for privately (``MAP_PRIVATE``): no copy, the pages come from the page cache, and the array
handed out is writable without ever changing the file. Remote stores (any fsspec URL) read
by byte ranges through :func:`bigarray.core.store.open_store`.

``encoding["preferred_chunks"]`` of row variables holds chunks whose boundaries fall on
segment boundaries (about ``dask.config["array.chunk-size"]`` bytes each; a single segment
larger than that is split), so ``chunks={}`` and ``chunks="auto"`` give segment-aligned
dask chunks.

Writing
-------
:func:`to_bigarray` (and ``ds.bigarray.to_bigarray(path)``) writes through
:class:`BigArrayStore` (:mod:`bigarray.xarray_store`), an xarray writable store: xarray's own
CF coders encode every variable, as for its zarr and netCDF engines (``encoding=`` packing,
``_FillValue``, ``scale_factor``, ``units``, the ``coordinates`` attribute); bools and
datetime64/timedelta64 without a CF encoding are stored natively. Attributes are JSON in the
manifest (numpy arrays, non-finite floats and bytes in tagged JSON objects, never pickles). A
``segment`` table (the three variables above) becomes the store's segment index. A Dataset
write (every variable, the segments, the attributes) is one commit. Reopening gives
``xr.testing.assert_identical`` equality; ``decode_cf=False`` shows the stored values. How a
Dataset maps onto a store (names, scalars, the segment table, attributes as JSON) is
:mod:`bigarray.xarray_schema`, shared by this engine and the writer.

Several stores concatenate along rows with
``xr.open_mfdataset(paths, engine="bigarray", combine="nested", concat_dim="row",
segments=False)``: xarray cannot join the stores' segment tables (each counts rows from its
own start, and concatenation runs along one dim), so leave them out, or use
:func:`open_mfdataset` here, which shifts and joins them.
"""

from __future__ import annotations

import asyncio
import math
import mmap
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.backends.common import AbstractDataStore
from xarray.backends.store import StoreBackendEntrypoint
from xarray.core import indexing

from .core.cache import OPEN_STORES
from .core.chunks import segment_chunks
from .core.filesystem import is_local
from .core.format import DEFAULT_ROW_DIM, Manifest, Variable
from .core.store import open_cached
from .errors import (
    BigArrayError,
    SchemaError,
    SegmentNotFoundError,
    StoreChangedError,
    StoreCorruptedError,
)
from .lazy import chunk_bytes
from .xarray_schema import (
    SEGMENT_DIM,
    SEGMENT_START,
    SEGMENT_STOP,
    SEGMENT_VARS,
    EncodingError,
    InvalidNameError,
    decode_json,
    decode_variable,
    is_coordinate,
)
from .xarray_schema import (
    encode_json as encode_json,  # offered here since the first release
)
from .xarray_store import BigArrayStore, to_bigarray

__all__ = [
    "BigArrayBackendArray",
    "BigArrayBackendEntrypoint",
    "BigArrayDataArrayAccessor",
    "BigArrayDataStore",
    "BigArrayDatasetAccessor",
    "BigArrayStore",
    "EncodingError",
    "InvalidNameError",
    "open_mfdataset",
    "segment_chunks",
    "to_bigarray",
]

_GRANULARITY = mmap.ALLOCATIONGRANULARITY

SegmentsOption = bool | Literal["lazy"]


# =============================================================================== readers
# The seam between xarray and the storage core: a picklable object with read(start, stop)
# and take(rows). Local stores map rows privately; URLs go through open_store's RemoteStore.


class _LocalRows:
    """Rows of one variable of a local store, read through private memory maps.

    Pickles as its file list; opens (and closes) a descriptor per read, so it never holds
    one, and is safe to call from many threads at once.
    """

    __slots__ = ("dtype", "file_ids", "files", "row_shape", "rows", "store_id", "where")

    def __init__(
        self,
        files: Sequence[tuple[str, int, int, int]],
        dtype: np.dtype,
        row_shape: tuple[int, ...],
        rows: int,
        where: str,
    ) -> None:
        self.files = tuple(files)  # (full path, byte offset, first row, stop row)
        self.dtype = dtype
        self.row_shape = row_shape
        self.rows = rows
        self.where = where
        self.store_id = _dir_id(where)  # a replaced store is another directory
        # ... and other data files: checked at every read (the descriptor's fstat, which
        # the size check makes anyway), so a replaced store is never read as this one
        self.file_ids = tuple(_dir_id(f[0]) for f in self.files)

    def __getstate__(self) -> tuple[Any, ...]:
        return (
            self.files,
            self.dtype.str,
            self.row_shape,
            self.rows,
            self.where,
            self.store_id,
            self.file_ids,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        files, dtype, self.row_shape, self.rows, self.where, self.store_id, ids = state
        self.files = files
        self.file_ids = ids
        self.dtype = np.dtype(dtype)

    def _replaced(self) -> StoreChangedError:
        return StoreChangedError(
            f"{self.where!r}: the store was replaced after it was opened (a rewrite with "
            "remove_exist=True, mode='w' or `bigarray cp --overwrite`); reopen it"
        )

    def _check_replaced(self) -> None:
        if _dir_id(self.where) != self.store_id:
            raise self._replaced()

    @property
    def row_nbytes(self) -> int:
        return int(self.dtype.itemsize * math.prod(self.row_shape))

    def _map(
        self, path: str, offset: int, start: int, stop: int, file_id: tuple[int, int]
    ) -> np.ndarray:
        n = stop - start
        shape = (n, *self.row_shape)
        nbytes = n * self.row_nbytes
        if nbytes == 0:
            return np.zeros(shape, self.dtype)
        lo = offset + start * self.row_nbytes
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self._check_replaced()
            raise StoreCorruptedError(
                f"{self.where}: data file {path!r} listed in the manifest is missing; the store "
                "was damaged after it was opened. Restore the file, or reopen the store."
            ) from None
        try:
            st = os.fstat(fd)
            size = st.st_size
            if (st.st_dev, st.st_ino) != file_id:
                raise self._replaced()
            if size < lo + nbytes:  # mapping past the end would SIGBUS on access
                self._check_replaced()
                raise StoreCorruptedError(
                    f"data file {path!r} holds {size:,} bytes but rows [{start}, {stop}) need "
                    f"{lo + nbytes:,}; it was truncated or replaced after the store was opened. "
                    f"Restore it, or run `bigarray verify {self.where}` for details."
                )
            base = lo - lo % _GRANULARITY
            # No MAP_POPULATE: on a writable private map it pre-faults every page for
            # writing, i.e. copies the whole range (measured 13x slower than faulting in).
            m = mmap.mmap(
                fd,
                lo - base + nbytes,
                flags=mmap.MAP_PRIVATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
                offset=base,
            )
        finally:
            os.close(fd)
        # A private map: writable for the caller, never written back, unmapped when the
        # last array using it is garbage-collected.
        return np.frombuffer(m, self.dtype, n * math.prod(self.row_shape), lo - base).reshape(shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` (clipped to the variable) as a writable private map."""
        start, stop = max(0, start), min(stop, self.rows)
        stop = max(start, stop)
        parts = []
        for (path, offset, a, b), file_id in zip(self.files, self.file_ids, strict=True):
            lo, hi = max(start, a), min(stop, b)
            if lo < hi:
                parts.append(self._map(path, offset, lo - a, hi - a, file_id))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return np.zeros((stop - start, *self.row_shape), self.dtype)
        return np.concatenate(parts)


class _RemoteRows:
    """Rows of one variable of a store at an fsspec URL (pickles as URL and options)."""

    __slots__ = ("commit", "storage_options", "url", "variable")

    def __init__(
        self,
        url: str,
        variable: str,
        storage_options: Mapping[str, Any] | None,
        commit: Any = None,
    ) -> None:
        self.url = url
        self.variable = variable
        self.storage_options = dict(storage_options or {})
        self.commit = commit  # the fingerprint of the commit the Dataset was opened on

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.url, self.variable, self.storage_options, self.commit)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.url, self.variable, self.storage_options, self.commit = state

    def _store(self) -> Any:
        # One RemoteStore per process, URL and commit, in the core's cache of open stores:
        # it caches the fsspec filesystem and the shard size checks; it holds no
        # descriptor. A store committed again is a new key (never served from the old
        # one), and one that no longer holds the commit the Dataset was opened on is
        # refused.
        store = open_cached(self.url, self.storage_options or None, commit=self.commit)
        if self.commit is not None and store.fingerprint() != self.commit:
            raise StoreChangedError(
                f"the store {self.url!r} changed after this Dataset was opened (it was "
                "committed again); the rows it refers to are gone. Open it again."
            )
        return store

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._store().read_rows(self.variable, start, stop))


def _open_store(path: str, storage_options: Mapping[str, Any] | None) -> Any:
    """Open a store for reading by path or URL (the one place the core is called)."""
    from .core.store import open_store

    return open_store(path, dict(storage_options) if storage_options else None)


def _dir_id(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_dev, st.st_ino)


def _reader_for(store: Any, var: Variable, storage_options: Mapping[str, Any] | None) -> Any:
    if store.is_remote:
        return _RemoteRows(store.url, var.name, storage_options, store.fingerprint())
    from .core.fileutil import resolve_inside

    files = [(resolve_inside(store.path, s.path), s.offset, s.start, s.stop) for s in var.shards]
    return _LocalRows(files, var.dtype, tuple(var.shape[1:]), var.rows, store.path)


# =============================================================================== backend array


class BigArrayBackendArray(BackendArray):
    """A lazily read variable of a store (thread-safe, picklable, holds no file).

    Supports outer indexing (``IndexingSupport.OUTER``): the row key picks the rows to map
    (a slice maps exactly those rows; an integer array maps the span between its smallest
    and largest row, and only the pages of the rows taken are read); keys on the other
    dims index the mapped rows with numpy.
    """

    __slots__ = ("dtype", "reader", "shape", "squeeze")

    def __init__(
        self, reader: Any, shape: tuple[int, ...], dtype: np.dtype, squeeze: bool = False
    ) -> None:
        self.reader = reader
        self.shape = shape  # the xarray shape (() for a scalar stored as one row)
        self.dtype = dtype
        self.squeeze = squeeze

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._getitem
        )

    async def async_getitem(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        """:meth:`__getitem__` in a worker thread (``Dataset.load_async``): local reads
        fault pages in, remote reads wait on byte ranges; neither blocks the event loop."""
        return await asyncio.to_thread(self.__getitem__, key)

    def _getitem(self, key: tuple[Any, ...]) -> np.ndarray:
        out = self._select(key)
        # numpy hands out scalars for integer keys; a '<U3' scalar would come back as '<U2'
        if not isinstance(out, np.ndarray) or out.dtype != self.dtype:
            out = np.asarray(out, self.dtype)
        return out

    def _select(self, key: tuple[Any, ...]) -> Any:
        if self.squeeze:
            return self.reader.read(0, 1).reshape(())[key]
        rows = self.shape[0]
        k0, rest = key[0], key[1:]
        if isinstance(k0, slice):
            start, stop, step = k0.indices(rows)
            if step < 0:
                lo, hi = stop + 1, start + 1
                block = self.reader.read(lo, hi) if lo < hi else self.reader.read(0, 0)
                local: Any = slice(hi - lo - 1, None, step) if lo < hi else slice(0, 0)
            else:
                block = self.reader.read(start, max(start, stop))
                local = slice(None, None, step) if step != 1 else slice(None)
        elif isinstance(k0, np.ndarray):
            if k0.size == 0:
                block, local = self.reader.read(0, 0), k0
            else:
                lo, hi = int(k0.min()), int(k0.max()) + 1
                block, local = self.reader.read(lo, hi), k0 - lo
        else:  # an integer
            i = int(k0)
            i = i + rows if i < 0 else i
            block, local = self.reader.read(i, i + 1), 0
        if (
            isinstance(local, slice)
            and local == slice(None)
            and all(isinstance(k, slice) and k == slice(None) for k in rest)
        ):
            return block
        return indexing.NumpyIndexingAdapter(block).oindex[indexing.OuterIndexer((local, *rest))]

    def __repr__(self) -> str:
        return f"BigArrayBackendArray(shape={self.shape}, dtype={self.dtype})"


class _SegmentTableArray(BackendArray):
    """One column of the segment table (names, starts or stops), read from the index on use."""

    __slots__ = ("column", "dtype", "index_files", "path", "shape", "storage_options")

    def __init__(
        self,
        path: str,
        column: str,
        n: int,
        dtype: np.dtype,
        storage_options: Mapping[str, Any] | None,
        index_files: Any,
    ) -> None:
        self.path, self.column, self.index_files = path, column, index_files
        self.shape, self.dtype = (n,), dtype
        self.storage_options = dict(storage_options or {})

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._getitem
        )

    def _getitem(self, key: tuple[Any, ...]) -> np.ndarray:
        (k,) = key
        if not isinstance(k, slice) and k < 0:
            k += self.shape[0]
        start, stop, step = k.indices(self.shape[0]) if isinstance(k, slice) else (k, k + 1, 1)
        with _StoreCache.get(self.path, self.storage_options, self.index_files) as store:
            arrays = store.index.arrays
            if self.column == SEGMENT_DIM:
                a, b = (start, stop) if step > 0 else (stop + 1, start + 1)
                out = decode_names(arrays, max(a, 0), max(a, b), self.dtype)
                out = out[::step] if step > 0 else out[::-1][::-step]
            else:
                col = 0 if self.column == SEGMENT_START else 1
                out = np.array(
                    arrays.bounds[k, col] if isinstance(k, slice) else arrays.bounds[k : k + 1, col]
                )
        return out if isinstance(k, slice) else out[0]


class _StoreCache:
    """A store opened by accessors and lazy segment tables, from the core's per-process
    cache of open stores (:data:`bigarray.core.cache.OPEN_STORES`); released by close."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __enter__(self) -> Any:
        return self.store

    def __exit__(self, *exc: object) -> None:
        pass

    @classmethod
    def get(
        cls, path: str, storage_options: Mapping[str, Any] | None, index_files: Any = None
    ) -> _StoreCache:
        """The cached store at ``path``; with ``index_files``, one whose segment index is
        still that one (a store opened before a later commit is reopened; if the index
        changed since the Dataset was opened, its lazy segment table cannot be read)."""
        options = dict(storage_options) if storage_options else None
        store = open_cached(path, options)
        if index_files is not None and store.manifest.segments != index_files:
            OPEN_STORES.release(path)
            store = open_cached(path, options)
        if index_files is not None and store.manifest.segments != index_files:
            raise BigArrayError(
                f"the segment index of {path!r} changed after this Dataset was opened (a later "
                "commit); its lazy segment table is gone. Reopen the Dataset."
            )
        return cls(store)


# =============================================================================== segments


def decode_names(arrays: Any, start: int, stop: int, dtype: np.dtype | None = None) -> np.ndarray:
    """Names of segments ``[start, stop)`` (row order) as a numpy ``<U`` array, vectorised.

    ASCII names are decoded by numpy in bulk; others (or names with NUL bytes, which the
    fixed-width ``S`` type would drop) fall back to Python decoding.
    """
    noff = np.asarray(arrays.name_offsets[start : stop + 1], np.int64)
    n = len(noff) - 1
    if n <= 0:
        return np.zeros(0, dtype or "<U1")
    lens = noff[1:] - noff[:-1]
    raw = np.asarray(arrays.names[int(noff[0]) : int(noff[-1])], np.uint8)
    width = max(int(lens.max()), 1)
    if raw.size and (raw.max() >= 0x80 or not raw.all()):
        base = int(noff[0])
        buf = raw.tobytes()
        text = [
            buf[a - base : b - base].decode("utf-8", "surrogatepass")
            for a, b in zip(noff[:-1].tolist(), noff[1:].tolist())
        ]
        return np.array(text, dtype=dtype or None) if text else np.zeros(0, "<U1")
    if bool(np.all(lens == width)):
        grid = raw
    else:
        grid = np.zeros(n * width, np.uint8)
        pos = np.arange(raw.size, dtype=np.int64) + np.repeat(
            np.arange(n, dtype=np.int64) * width - (noff[:-1] - noff[0]), lens
        )
        grid[pos] = raw
    # '<U' is UCS-4: ASCII bytes widened to uint32 *are* the decoded text (numpy's own
    # S -> U conversion is ~20x slower); trailing NULs pad, as numpy strips them anyway
    out = grid.astype("<u4").view(f"<U{width}").reshape(n)
    return out if dtype is None or out.dtype == dtype else out.astype(dtype)


# =============================================================================== the store layer


class BigArrayDataStore(AbstractDataStore):
    """A store opened for xarray: variables, attributes and the segment table.

    Parameters
    ----------
    path
        Store directory or URL.
    storage_options
        fsspec options for a URL.
    segments
        ``True`` (segment table read at open), ``"lazy"`` (read on first use) or
        ``False`` (no segment table).
    drop_variables
        Names not to build at all.
    """

    def __init__(
        self,
        path: str,
        storage_options: Mapping[str, Any] | None = None,
        segments: SegmentsOption = True,
        drop_variables: Iterable[str] = (),
    ) -> None:
        if segments not in (True, False, "lazy"):
            raise BigArrayError(
                f"segments={segments!r}; expected True (segment table read at open), 'lazy' "
                "(read on first use) or False (no segment table)"
            )
        self.path = path
        self.storage_options = dict(storage_options or {})
        self.segments = segments
        self.drop = set(drop_variables)
        store = _open_store(path, self.storage_options)
        try:
            self.manifest: Manifest = store.manifest
            self.path = store.path
            self._variables = self._build(store)
        finally:
            store.close()

    # the data store pickles with the Dataset (it is its close callback): keep it small
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._variables = {}

    def _build(self, store: Any) -> dict[str, xr.Variable]:
        m = store.manifest
        clash = [n for n in SEGMENT_VARS if n in m.variables]
        want_table = m.segments is not None and self.segments is not False
        if want_table and clash:
            raise SchemaError(
                f"{self.path!r} holds a variable named {clash[0]!r} and a segment index; both "
                f"would be called {clash[0]!r}. Open with segments=False to leave the segment "
                "table out."
            )
        out: dict[str, xr.Variable] = {}
        row_vars = [v for v in m.variables.values() if v.dims and v.dims[0] == m.row_dim]
        bounds = None
        if want_table or row_vars:
            idx = store.index if m.segments is not None else None
            bounds = idx.arrays.bounds if idx is not None else np.zeros((0, 2), np.int64)
        target = chunk_bytes("auto", 0)
        row_nbytes = max([v.row_nbytes for v in row_vars] or [1])
        row_chunks: dict[int, tuple[int, ...]] = {}
        for name, var in m.variables.items():
            if name in self.drop:
                continue
            out[name] = self._variable(store, var, m, bounds, target, row_nbytes, row_chunks)
        if want_table:
            out.update(self._segment_table(store, bounds))
        return out

    def _variable(
        self,
        store: Any,
        var: Variable,
        m: Manifest,
        bounds: np.ndarray | None,
        target: int,
        row_nbytes: int,
        row_chunks: dict[int, tuple[int, ...]],
    ) -> xr.Variable:
        attrs, encoding, meta = decode_variable(var)
        reader = _reader_for(store, var, self.storage_options)
        encoding.update(source=store.path, bigarray_variable=var.name)
        if self.storage_options:
            encoding["storage_options"] = self.storage_options
        if meta.get("scalar"):
            arr = BigArrayBackendArray(reader, (), var.dtype, squeeze=True)
            return xr.Variable((), np.asarray(arr[indexing.BasicIndexer(())]), attrs, encoding)
        data = indexing.LazilyIndexedArray(BigArrayBackendArray(reader, var.shape, var.dtype))
        if var.dims[0] == m.row_dim:
            rows = var.rows
            if rows not in row_chunks:
                b = bounds if bounds is not None else np.zeros((0, 2), np.int64)
                row_chunks[rows] = segment_chunks(b, rows, row_nbytes, target)
            first = row_chunks[rows]
        else:
            first = segment_chunks(np.zeros((0, 2), np.int64), var.rows, var.row_nbytes, target)
        encoding["preferred_chunks"] = {
            var.dims[0]: first,
            **dict(zip(var.dims[1:], var.shape[1:])),
        }
        encoding["bigarray_rows"] = var.rows
        return xr.Variable(var.dims, data, attrs, encoding)

    def _segment_table(self, store: Any, bounds: np.ndarray | None) -> dict[str, xr.Variable]:
        idx = store.index
        n = len(idx)
        if self.segments == "lazy":
            width = 1
            if n:
                noff = idx.arrays.name_offsets
                width = max(int(np.max(np.diff(np.asarray(noff)))), 1)
            cols: dict[str, Any] = {}
            for col, dt in (
                (SEGMENT_DIM, np.dtype(f"<U{width}")),
                (SEGMENT_START, np.dtype("<i8")),
                (SEGMENT_STOP, np.dtype("<i8")),
            ):
                if col in self.drop:
                    continue
                arr = _SegmentTableArray(
                    store.path, col, n, dt, self.storage_options, store.manifest.segments
                )
                cols[col] = indexing.LazilyIndexedArray(arr)
        else:
            assert bounds is not None
            cols = {SEGMENT_START: bounds[:, 0].copy(), SEGMENT_STOP: bounds[:, 1].copy()}
            if SEGMENT_DIM not in self.drop:
                cols[SEGMENT_DIM] = decode_names(idx.arrays, 0, n)
        return {
            k: xr.Variable((SEGMENT_DIM,), v, encoding={"source": store.path})
            for k, v in cols.items()
            if k not in self.drop
        }

    # ------------------------------------------------------------------ AbstractDataStore
    def get_variables(self) -> dict[str, xr.Variable]:
        return dict(self._variables)

    def get_attrs(self) -> dict[str, Any]:
        return {k: decode_json(v) for k, v in self.manifest.attrs.items()}

    def get_dimensions(self) -> dict[Hashable, int]:
        dims: dict[Hashable, int] = {}
        for v in self._variables.values():
            dims.update(zip(v.dims, v.shape))
        return dims

    def get_encoding(self) -> dict[str, Any]:
        out = {"source": self.path, "bigarray_generation": self.manifest.generation}
        if self.storage_options:
            out["storage_options"] = self.storage_options
        return out

    def coord_names(self) -> set[str]:
        """Variables that are coordinates (recorded at write time, plus the segment table)."""
        out = {n for n in SEGMENT_VARS if n in self._variables}
        out.update(n for n, var in self.manifest.variables.items() if is_coordinate(var))
        return out & set(self._variables)

    def close(self) -> None:
        """Release every store opened for lazy segment tables or accessors of this path."""
        OPEN_STORES.release(self.path)


# =============================================================================== entry point


class BigArrayBackendEntrypoint(BackendEntrypoint):
    """``xr.open_dataset(path, engine="bigarray")``: open a bigarray store as a Dataset.

    Examples
    --------
    >>> ds = xr.open_dataset("audio.bigarray", engine="bigarray", chunks={})  # doctest: +SKIP
    >>> ds.sel(segment="utt1")                                                 # doctest: +SKIP
    """

    description = "Open bigarray stores (ragged arrays with a segment index) in xarray"
    url = "https://github.com/bigarray/bigarray#xarray"
    open_dataset_parameters = (
        "filename_or_obj",
        "drop_variables",
        "mask_and_scale",
        "decode_times",
        "concat_characters",
        "decode_coords",
        "use_cftime",
        "decode_timedelta",
        "segments",
        "storage_options",
    )

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """True for a local store directory (or its manifest.json), a local file written by
        the 2020 library (recognised by its header), or a ``*.bigarray`` URL.

        Never raises; never touches the network (a URL is judged by its name).
        """
        try:
            if isinstance(filename_or_obj, os.PathLike):
                filename_or_obj = os.fspath(filename_or_obj)
            if not isinstance(filename_or_obj, str):
                return False
            text = filename_or_obj.rstrip("/")
            if not is_local(text):
                return text.endswith(".bigarray") or text.endswith(".bigarray/manifest.json")
            from .core.filesystem import local_path
            from .core.store import is_store

            path = local_path(text)
            if os.path.basename(path) == "manifest.json":
                path = os.path.dirname(path)
            if os.path.isfile(path):  # a 2020 file: its magic bytes, never its index
                from .core.legacy import is_legacy_file

                return is_legacy_file(path)
            return is_store(path)
        except Exception:
            return False

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        mask_and_scale: bool = True,
        decode_times: bool = True,
        concat_characters: bool = True,
        decode_coords: bool = True,
        use_cftime: bool | None = None,
        decode_timedelta: bool | None = None,
        segments: SegmentsOption = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> xr.Dataset:
        """Open the store at ``filename_or_obj`` (path, ``file://`` or fsspec URL) lazily.

        Parameters
        ----------
        segments
            ``True``: the segment table (``segment``, ``segment_start``, ``segment_stop``)
            is read at open. ``"lazy"``: read on first use (pair it with
            ``create_default_indexes=False`` for an open cost independent of the number of
            segments). ``False``: no segment table.
        storage_options
            fsspec options for a URL (credentials, endpoint); refused for a local path.

        The other parameters are xarray's CF decoders (see :func:`xarray.open_dataset`).
        """
        if isinstance(filename_or_obj, os.PathLike):
            filename_or_obj = os.fspath(filename_or_obj)
        if not isinstance(filename_or_obj, str):
            raise BigArrayError(
                f"engine='bigarray' opens a store by path or URL, not {type(filename_or_obj).__name__}"
                f" {filename_or_obj!r}; pass the store directory or its URL"
            )
        path = filename_or_obj
        if is_local(path) and os.path.basename(path.rstrip("/")) == "manifest.json":
            path = os.path.dirname(path.rstrip("/"))
        if isinstance(drop_variables, str):
            drop_variables = [drop_variables]
        drop = list(drop_variables or [])
        store = BigArrayDataStore(path, storage_options, segments, drop)
        try:
            try:
                ds = StoreBackendEntrypoint().open_dataset(
                    store,
                    mask_and_scale=mask_and_scale,
                    decode_times=decode_times,
                    concat_characters=concat_characters,
                    decode_coords=decode_coords,
                    drop_variables=drop,
                    use_cftime=use_cftime,
                    decode_timedelta=decode_timedelta,
                )
            except ValueError as exc:
                if isinstance(exc, BigArrayError) or "conflicting sizes" not in str(exc):
                    raise
                # variables of one store that disagree on a dimension's length: not one
                # Dataset; say which and how to open the others
                raise SchemaError(
                    f"{path!r} cannot be opened as one Dataset: {exc}. Open the variables "
                    "that agree (drop_variables=[...]) or read each with bigarray.open(path, variable=...)"
                ) from None
            # roles recorded by older writers; CF `coordinates` attributes are xarray's
            coords = [n for n in store.coord_names() if n in ds.variables and n not in ds.coords]
            if coords and decode_coords:
                ds = ds.set_coords(coords)
        except BaseException:
            store.close()
            raise
        ds.set_close(store.close)
        return ds


def open_mfdataset(
    paths: Sequence[str | os.PathLike[str]],
    *,
    chunks: Any = None,
    row_dim: str = DEFAULT_ROW_DIM,
    **kwargs: Any,
) -> xr.Dataset:
    """Open several stores as one Dataset, rows concatenated in order, segment tables joined.

    ``xr.open_mfdataset`` cannot join segment tables (each store's ``segment_start`` and
    ``segment_stop`` count from its own first row, and xarray concatenates along one dim
    only); here every store's table is shifted by the rows before it and the tables are
    concatenated along ``segment``. Variables along neither dim come from the first store.

    Parameters
    ----------
    paths
        Store paths or URLs, in row order.
    chunks
        As for :func:`xarray.open_dataset` (``{}`` for segment-aligned dask chunks).
    row_dim
        The row dimension the stores share.
    **kwargs
        Passed to ``xr.open_dataset(..., engine="bigarray")`` for every store.

    Returns
    -------
    xarray.Dataset
        Closing it closes every store.

    Examples
    --------
    >>> ds = open_mfdataset(["a.bigarray", "b.bigarray"], chunks={})   # doctest: +SKIP
    """
    if not paths:
        raise BigArrayError("open_mfdataset needs at least one store path; got none")
    parts = [xr.open_dataset(p, engine="bigarray", chunks=chunks, **kwargs) for p in paths]
    try:
        offset = 0
        row_parts, seg_parts = [], []
        for ds in parts:
            rows = ds.sizes.get(row_dim, 0)
            seg = ds[[v for v in ds.variables if SEGMENT_DIM in ds[v].dims]]
            if SEGMENT_START in seg and SEGMENT_STOP in seg:
                seg = seg.assign_coords(
                    {
                        SEGMENT_START: seg[SEGMENT_START] + offset,
                        SEGMENT_STOP: seg[SEGMENT_STOP] + offset,
                    }
                )
            seg_parts.append(seg)
            row_parts.append(ds[[v for v in ds.variables if row_dim in ds[v].dims]])
            offset += rows
        rest = parts[0].drop_vars(
            [v for v in parts[0].variables if {row_dim, SEGMENT_DIM} & set(parts[0][v].dims)]
        )
        pieces = [
            xr.concat(
                row_parts,
                row_dim,
                data_vars="minimal",
                coords="minimal",
                compat="override",
                join="override",
            )
        ]
        if any(SEGMENT_DIM in p.dims for p in seg_parts):
            pieces.append(
                xr.concat(
                    seg_parts,
                    SEGMENT_DIM,
                    data_vars="minimal",
                    coords="minimal",
                    compat="override",
                    join="override",
                )
            )
        out = xr.merge([*pieces, rest], compat="override", join="outer", combine_attrs="override")
    except BaseException:
        for ds in parts:
            ds.close()
        raise

    def close() -> None:
        for ds in parts:
            ds.close()

    out.set_close(close)
    return out


# =============================================================================== accessors


def _segment_bounds(obj: xr.Dataset | xr.DataArray, name: str) -> tuple[int, int, int | None]:
    """``(start, stop, position in the segment table or None)`` of segment ``name``."""
    if not isinstance(name, str):
        raise SegmentNotFoundError(
            f"segment names are str; got {name!r} of type {type(name).__name__}"
        )
    if (
        SEGMENT_DIM in obj.coords
        and SEGMENT_START in obj.coords
        and SEGMENT_STOP in obj.coords
        and SEGMENT_DIM in obj.indexes
    ):
        index = obj.indexes[SEGMENT_DIM]
        try:
            pos = index.get_loc(name)
        except KeyError:
            raise SegmentNotFoundError(
                f"no segment named {name!r} among {len(index):,} segments"
            ) from None
        if not isinstance(pos, (int, np.integer)):
            raise SegmentNotFoundError(f"segment name {name!r} is not unique in the segment table")
        start = int(obj[SEGMENT_START].values[pos])
        stop = int(obj[SEGMENT_STOP].values[pos])
        return start, stop, int(pos)
    source = obj.encoding.get("source")
    if source is None:
        raise SegmentNotFoundError(
            f"cannot find segment {name!r}: this object has no indexed '{SEGMENT_DIM}' coordinate "
            "with segment_start/segment_stop and was not opened from a store (no "
            "encoding['source']). Open it with xr.open_dataset(path, engine='bigarray')."
        )
    with _StoreCache.get(source, obj.encoding.get("storage_options")) as store:
        if store.index is None:
            raise SegmentNotFoundError(f"the store {source!r} has no segment index")
        start, stop = store.index[name]
        # the segment table is in row order, like the index: the position is the same
        pos = store.index.find(name)
        if SEGMENT_DIM not in obj.dims or obj.sizes[SEGMENT_DIM] != len(store.index):
            pos = None
    return int(start), int(stop), pos


def _row_dim_of(obj: xr.Dataset | xr.DataArray) -> str:
    if DEFAULT_ROW_DIM in obj.dims:
        return DEFAULT_ROW_DIM
    dims = [d for d in obj.dims if d != SEGMENT_DIM]
    if isinstance(obj, xr.Dataset):
        firsts = [v.dims[0] for v in obj.data_vars.values() if v.dims and v.dims[0] != SEGMENT_DIM]
        dims = firsts or dims
    if not dims:
        raise SchemaError("this object has no row dimension to select segment rows from")
    return str(dims[0])


@xr.register_dataset_accessor("bigarray")
class BigArrayDatasetAccessor:
    """``ds.bigarray``: segments by name and writing to a store.

    Examples
    --------
    >>> ds = xr.open_dataset("audio.bigarray", engine="bigarray")   # doctest: +SKIP
    >>> ds.bigarray.segment("utt1")                                  # doctest: +SKIP
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def segment(self, name: str) -> xr.Dataset:
        """The rows of segment ``name`` as a Dataset.

        Row variables are cut to the segment's rows; the segment table (and any variable
        along ``segment``) is reduced to this segment (scalar coordinates), so the result
        carries its name.

        Raises
        ------
        SegmentNotFoundError
            No segment of that name (also a ``KeyError``).
        """
        ds = self._ds
        start, stop, pos = _segment_bounds(ds, name)
        row_dim = _row_dim_of(ds)
        sel: dict[Hashable, Any] = {}
        if row_dim in ds.dims:
            if stop > ds.sizes[row_dim]:
                raise SegmentNotFoundError(
                    f"segment {name!r} covers rows [{start}, {stop}) but this Dataset has "
                    f"{ds.sizes[row_dim]} rows; the store grew since it was opened, or the "
                    "Dataset was cut. Reopen it."
                )
            sel[row_dim] = slice(start, stop)
        if pos is not None and SEGMENT_DIM in ds.dims:
            sel[SEGMENT_DIM] = pos
        return ds.isel(sel)

    @property
    def segment_names(self) -> list[str]:
        """Names of all segments in row order."""
        if SEGMENT_DIM in self._ds.coords:
            return [str(x) for x in self._ds[SEGMENT_DIM].values.tolist()]
        source = self._ds.encoding.get("source")
        if source is None:
            return []
        with _StoreCache.get(source, self._ds.encoding.get("storage_options")) as store:
            return [] if store.index is None else store.index.names_list()

    def to_bigarray(
        self,
        path: str | os.PathLike[str],
        *,
        encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
        mode: Literal["w-", "w", "a"] = "w-",
        append_dim: str | None = None,
        row_dim: str | None = None,
        segments: Mapping[str, tuple[int, int]] | bool | None = None,
        fsync: bool = True,
    ) -> None:
        """Write this Dataset to a store; see :func:`to_bigarray` (same keywords)."""
        to_bigarray(
            self._ds,
            path,
            encoding=encoding,
            mode=mode,
            append_dim=append_dim,
            row_dim=row_dim,
            segments=segments,
            fsync=fsync,
        )


@xr.register_dataarray_accessor("bigarray")
class BigArrayDataArrayAccessor:
    """``da.bigarray``: the rows of one segment of a row variable, and writing it."""

    def __init__(self, da: xr.DataArray) -> None:
        self._da = da

    def segment(self, name: str) -> xr.DataArray:
        """The rows of segment ``name``.

        Uses the segment table coordinates if the DataArray carries them, else the index of
        the store it was read from (``encoding["source"]``); refuses a DataArray cut since.

        Raises
        ------
        SegmentNotFoundError
            No segment of that name, or the rows cannot be located.
        """
        da = self._da
        start, stop, _ = _segment_bounds(da, name)
        row_dim = _row_dim_of(da)
        expected = da.encoding.get("bigarray_rows")
        if expected is not None and da.sizes[row_dim] != expected:
            raise SegmentNotFoundError(
                f"this DataArray has {da.sizes[row_dim]} rows along {row_dim!r} but the store "
                f"variable has {expected}; segment rows would be wrong. Select segments before "
                "cutting rows."
            )
        return da.isel({row_dim: slice(start, stop)})

    def to_bigarray(
        self,
        path: str | os.PathLike[str],
        *,
        encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
        mode: Literal["w-", "w", "a"] = "w-",
        append_dim: str | None = None,
        row_dim: str | None = None,
        segments: Mapping[str, tuple[int, int]] | bool | None = None,
        fsync: bool = True,
    ) -> None:
        """Write this DataArray to a store; see :func:`to_bigarray` (same keywords)."""
        to_bigarray(
            self._da,
            path,
            encoding=encoding,
            mode=mode,
            append_dim=append_dim,
            row_dim=row_dim,
            segments=segments,
            fsync=fsync,
        )
