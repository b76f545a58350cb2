"""The seed API: ``MmapArray``/``PointerArray`` (numpy memmaps) and their writers.

These keep the names, arguments and behaviour of the original 2020 library on top of
the v1 store. ``PointerArray`` *is* a ``numpy.memmap``: everything numpy does works,
and ``x['name']`` returns one segment. Arrays pickle by reference (path, variable, rows),
never by value, so sending one to a pool or a dask worker costs a few hundred bytes.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .core.members import join_parent_session
from .core.store import SegmentLookup, StoreReader, open_local
from .core.writer import StoreWriter
from .errors import (
    BigArrayError,
    BigArrayWarning,
    NotAStoreError,
    ReadOnlyError,
    SchemaError,
    StoreExistsError,
)
from .lazy import EMPTY_INDEX, LazyArray, open_array

__all__ = ["MmapArray", "MmapArrayWriter", "PointerArray", "PointerArrayWriter"]

_SESSION_ENV = "BIGARRAY_WRITER_SESSION_"


#: Largest remote store PointerArray(url) copies into memory (see ``max_bytes``).
REMOTE_MAX_BYTES = 1 << 30


def _reopen(
    cls: type,
    path: str,
    variable: str | None,
    start: int,
    stop: int,
    rows: int,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    if storage_options is None:
        arr = cls(path, variable=variable)
    else:
        arr = cls(path, variable=variable, storage_options=storage_options)
    if (start, stop) == (0, rows) and len(arr) == rows:
        return arr
    return arr[start:stop]


class MmapArray(np.memmap):
    """A committed variable of a store as a read-only ``numpy.memmap``.

    Parameters
    ----------
    path
        Store directory, or a file written by the 2020 library (``MmapArrayWriter`` or
        ``PointerArrayWriter``), which opens read-only in place: its data is mapped where it
        lies and its index read without ``pickle.load``.
    mode
        ``'r'`` (default). Stores are changed through writers only, so that every change
        is a commit; ``'r+'`` is refused with a :class:`~bigarray.errors.ReadOnlyError`.
    variable
        Which variable to map (default ``"data"`` or the only one).
    storage_options
        Options of the fsspec filesystem when ``path`` is a URL (refused for local paths).
    max_bytes
        A store at a non-local URL (``s3://``, ``memory://``, ``https://``, ...) cannot be
        memory-mapped: it is copied into an in-memory read-only array of this class (same
        ``.indices``, same ``x['name']``) when it holds at most this many bytes (1 GiB),
        otherwise a :class:`~bigarray.errors.RemoteStoreError` points to
        ``bigarray.dask_backend.from_bigarray(url)`` for lazy reads.
    verify
        Check every byte against the checksums recorded at the last commit first
        (:func:`bigarray.core.verify.verify_store`; about one second per 3 GB) and raise
        :class:`~bigarray.errors.IntegrityError` if anything is damaged.

    Examples
    --------
    >>> x = MmapArray("/tmp/array")          # doctest: +SKIP
    >>> x[:10].sum()                         # doctest: +SKIP
    """

    # Class-level defaults: a view (a slice) sets only what differs from them, which keeps
    # x[i:i + 256] as cheap as the same slice of a numpy memmap.
    _bigarray_root: tuple[str, str | None, int] | None = None
    _bigarray_store: StoreReader | None = None  # the root array's reader; None on views
    _bigarray_plain: np.ndarray | None = None
    _bigarray_base: Any = None  # the root array a view was sliced from
    _bigarray_options: dict[str, Any] | None = None  # set on arrays of remote stores
    _mmap: Any = None  # numpy.memmap's attributes, None where the memory is not the map's
    filename: str | None = None
    offset: int = None  # type: ignore[assignment]
    mode: str = None  # type: ignore[assignment]

    def __new__(
        cls,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        variable: str | None = None,
        verify: bool = False,
        storage_options: dict[str, Any] | None = None,
        max_bytes: int = REMOTE_MAX_BYTES,
    ) -> Any:
        if mode != "r":
            if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
                _refuse_legacy(os.fspath(path))
            raise ReadOnlyError(
                f"{cls.__name__} opens stores read-only (mode='r'), got mode={mode!r}; write "
                "with MmapArrayWriter/PointerArrayWriter, which commit atomically"
            )
        from .core.filesystem import check_local_options, is_local, local_path

        if not is_local(path):
            return cls._open_remote(os.fspath(path), variable, storage_options, max_bytes)
        check_local_options(path, storage_options)
        path = local_path(path)
        if verify:
            _verify_local(path)
        store = open_local(path, with_index=issubclass(cls, PointerArray), cached=True)
        var = store.variable(variable)
        if len(var.shards) > 1:
            raise SchemaError(
                f"{path!r} variable {var.name!r} is stored in {len(var.shards)} shards, which one "
                "memory map cannot span; read it with bigarray.open(path) or "
                "bigarray.dask_backend.from_bigarray(path)"
            )
        (view,) = store.shard_views(var) if var.shards else (np.zeros(var.shape, var.dtype),)
        obj = view.view(cls)
        obj._bigarray_root = (path, var.name, var.rows)
        obj._bigarray_store = store
        # Segment reads slice this plain ndarray view: no memmap subclass to finalise, so a
        # lookup by name costs about as much as a dict lookup plus a numpy slice.
        obj._bigarray_plain = np.asarray(view)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        # numpy.memmap's own version, with a cheap test first: a view whose base is ``obj``
        # (or ``obj``'s base, numpy collapses chains) was cut from ``obj``'s memory, which
        # np.may_share_memory would only confirm at a cost larger than the slice itself.
        mm = getattr(obj, "_mmap", None)
        if mm is not None:
            b = self.base
            if b is obj or (b is not None and b is obj.base) or np.may_share_memory(self, obj):
                self._mmap = mm
                self.filename = obj.filename
                self.offset = obj.offset
                self.mode = obj.mode
        # Views keep a pointer to the root so they can pickle as a row range by reference.
        base = getattr(obj, "_bigarray_base", None)
        if base is None and getattr(obj, "_bigarray_root", None) is not None:
            base = obj
        if base is not None:
            self._bigarray_base = base

    # numpy's memmap reductions would return memmaps; plain results are what users expect
    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        if arr.shape == () or not np.may_share_memory(arr, self):
            return arr[()] if arr.shape == () else np.asarray(arr)
        return super().__array_wrap__(arr, context, return_scalar)

    def __getitem__(self, key: Any) -> Any:
        # numpy.memmap.__getitem__ only turns exact memmaps that are not views of the map into
        # ndarrays: never one of these subclasses, so ndarray's (in C) gives the same results.
        res = np.ndarray.__getitem__(self, key)
        if type(key) is slice or type(key) is int:  # always views: the common case first
            return res
        # Fancy and boolean indexing copy: the result maps no file, so it is a plain,
        # writable ndarray (as np.memmap gives), not a read-only array of this class.
        if isinstance(res, MmapArray) and not np.may_share_memory(res, self):
            return res.view(np.ndarray)
        return res

    def copy(self, order: Any = "C") -> Any:
        """A copy in memory, as a plain writable ``numpy.ndarray``; warns when
        ``dask.array.from_array`` asks, since that copies the whole store into the client
        and ships it with the graph."""
        caller = sys._getframe(1)
        if caller.f_code.co_name == "from_array" and caller.f_globals.get(
            "__name__", ""
        ).startswith("dask."):
            warnings.warn(
                f"dask.array.from_array on a {type(self).__name__} copies the whole array "
                f"({self.nbytes:,} bytes) into memory and into the graph; use x.to_dask() or "
                "dask.array.from_array(x.lazy), which read the store in the workers",
                BigArrayWarning,
                stacklevel=3,
            )
        return np.asarray(super().copy(order))

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:
        """numpy's ``astype``; a converted copy is a plain writable ``numpy.ndarray``."""
        res = super().astype(dtype, *args, **kwargs)
        return res if res is self else np.asarray(res)

    def take(self, *args: Any, **kwargs: Any) -> Any:
        """numpy's ``take``, as a plain writable ``numpy.ndarray`` (it copies)."""
        return np.asarray(super().take(*args, **kwargs))

    def flatten(self, order: Any = "C") -> Any:
        """numpy's ``flatten``, as a plain writable ``numpy.ndarray`` (it copies)."""
        return np.asarray(super().flatten(order))

    def __setitem__(self, key: Any, value: Any) -> None:
        try:
            store = self._root_array()._bigarray_store
        except BigArrayError:
            store = None
        if store is not None and store.is_legacy:
            from .core.legacy import convert_hint

            raise ReadOnlyError(
                f"{self.path!r} is a file of the 2020 bigarray, opened read-only in place. To "
                f"write to it, convert it to a store first (`{convert_hint(self.path)}`) and "
                "write there; to modify rows in memory, copy them (np.array(x))."
            )
        raise ReadOnlyError(
            f"{type(self).__name__} is read-only: committed data is changed only through a "
            "writer. Copy it (np.array(x)) to modify it in memory, or write a new store."
        )

    # ------------------------------------------------------------------ info
    @property
    def path(self) -> str:
        root = self._root_array()
        return root._bigarray_root[0]  # type: ignore[index]

    @property
    def variable_name(self) -> str:
        return self._root_array()._bigarray_root[1]  # type: ignore[index,return-value]

    @classmethod
    def _open_remote(
        cls,
        url: str,
        variable: str | None,
        storage_options: dict[str, Any] | None,
        max_bytes: int,
    ) -> Any:
        """A remote store (any fsspec URL) copied into memory: an object store cannot be
        memory-mapped, so the data is fetched once (by concurrent byte ranges) into an
        anonymous read-only array of this class, up to ``max_bytes``."""
        from .core.store import RemoteStore
        from .errors import RemoteStoreError

        store = RemoteStore(url, storage_options)
        var = store.variable(variable)
        nbytes = var.rows * var.row_nbytes
        if nbytes > max_bytes:
            raise RemoteStoreError(
                f"{url!r} variable {var.name!r} holds {nbytes:,} bytes, more than "
                f"max_bytes={max_bytes:,} that {cls.__name__}(url) copies into memory (a remote "
                "store cannot be memory-mapped). Read it lazily with "
                "bigarray.dask_backend.from_bigarray(url, storage_options=...), or raise "
                "max_bytes if it fits in memory."
            )
        if issubclass(cls, PointerArray):
            store.index  # noqa: B018 - fetch the index with the data: one consistent commit
        data = store.read_rows(var.name, 0, var.rows)
        data.flags.writeable = False
        obj = data.view(cls)
        obj._bigarray_root = (store.url, var.name, var.rows)
        obj._bigarray_store = store
        obj._bigarray_options = dict(storage_options or {})
        obj._bigarray_plain = data
        return obj

    def _root_array(self) -> MmapArray:
        if self._bigarray_root is not None:
            return self
        base = self._bigarray_base
        if base is None:
            raise BigArrayError("this array is not backed by a bigarray store")
        return base

    # ------------------------------------------------------------------ other faces
    @property
    def lazy(self) -> LazyArray:
        """A read-only array-like handle (not an ndarray) for ``dask.array.from_array``:
        it pickles by reference and never copies the data (see :mod:`bigarray.lazy`)."""
        options = self._root_array()._bigarray_options
        if options is not None:  # a remote store
            return open_array(self.path, variable=self.variable_name, storage_options=options)
        return open_array(self.path, variable=self.variable_name)

    def __bigarray_lazy__(self, variable: str | None = None) -> LazyArray:
        """The :class:`~bigarray.lazy.LazyArray` of this whole array (the protocol by which
        :func:`bigarray.dask_backend.from_bigarray` takes an open array without importing
        this module); a slice of the store's rows is refused."""
        root = self._root_array()
        options = root._bigarray_options
        handle = open_array(
            self.path, variable=variable or self.variable_name, storage_options=options
        )
        if self.shape != handle.shape:
            raise SchemaError(
                f"this {type(self).__name__} is a slice {self.shape} of the store's "
                f"{handle.shape} array; build the dask array from the whole store "
                "(bigarray.dask_backend.from_bigarray(path)) and slice that"
            )
        return handle

    # ------------------------------------------------------------------ pickling
    def __reduce__(self) -> Any:
        """Pickle as (path, variable, row range) when this is the whole array or a range of
        whole rows of it; any other view (strided, reordered, a copy) pickles by value."""
        try:
            root = self._root_array()
        except BigArrayError:
            return np.asarray(self).__reduce__()
        path, variable, rows = root._bigarray_root  # type: ignore[misc]
        # A view that reinterprets the dtype (x.view("uint32")) is no row range of the root.
        if (
            self.dtype == root.dtype
            and self.ndim == root.ndim
            and self.shape[1:] == root.shape[1:]
            and self.flags.c_contiguous
        ):
            offset = self.ctypes.data - root.ctypes.data
            row_bytes = max(root.strides[0], 1) if root.ndim else 1
            if root.size == 0 or self.size == 0:
                start = 0
            elif offset % row_bytes == 0 and 0 <= offset < root.nbytes:
                start = offset // row_bytes
            else:
                return np.asarray(self).__reduce__()
            stop = start + len(self)
            options = getattr(root, "_bigarray_options", None)
            args = (type(root), path, variable, start, stop, rows)
            return (_reopen, args if options is None else (*args, options))
        return np.array(self).__reduce__()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({np.asarray(self)!r})"
            if self.size <= 1000
            else (f"<{type(self).__name__} shape={self.shape} dtype={self.dtype}>")
        )


class PointerArray(MmapArray):
    """A store's data as a read-only ``numpy.memmap`` plus its segment index.

    ``x['name']`` returns segment ``name`` (a view); ``x.indices`` is a read-only mapping
    ``name -> (start, stop)`` in row order. Everything else is ``numpy.memmap``.

    Examples
    --------
    >>> x = PointerArray("/tmp/array")      # doctest: +SKIP
    >>> x["name0"]                          # doctest: +SKIP
    PointerArray([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=int32)
    """

    @property
    def indices(self) -> SegmentLookup:
        """Read-only mapping ``name -> (start, stop)`` (rows, half-open), in row order."""
        root = self._root_array()
        store = root._bigarray_store
        assert store is not None
        idx = store.index
        if idx is None:
            idx = EMPTY_INDEX
        return idx

    def __getitem__(self, key: Any) -> Any:
        # numpy.str_ (names from np.array, pandas, xarray) and other str subclasses too
        if type(key) is str or isinstance(key, str):
            plain = self._bigarray_plain
            if plain is None:
                raise SchemaError(
                    f"segment {key!r} asked of a slice of a PointerArray; look segments up on "
                    "the array returned by PointerArray(path)"
                )
            start, stop = self.indices[key]
            if not 0 <= start <= stop <= len(plain):
                from .errors import StoreCorruptedError

                raise StoreCorruptedError(
                    f"segment {key!r} of {self.path!r} has rows [{start}, {stop}), outside the "
                    f"{len(plain):,} rows of the data; the index is damaged. Run "
                    f"`bigarray verify {self.path}` for details."
                )
            return plain[start:stop]
        return MmapArray.__getitem__(self, key)

    def segment(self, name: str) -> np.ndarray:
        """Rows of segment ``name`` (same as ``x[name]``)."""
        return self[name]

    def to_dask(self, chunks: Any = "auto") -> Any:
        """This store as a ``dask.array.Array`` with segment-aligned chunks (see
        :func:`bigarray.dask_backend.from_bigarray`)."""
        from .dask_backend import from_bigarray

        options = getattr(self._root_array(), "_bigarray_options", None)
        if options is not None:  # a remote store: the dask graph reads it by URL
            return from_bigarray(
                self.path, chunks=chunks, variable=self.variable_name, storage_options=options
            )
        return from_bigarray(self.path, chunks=chunks, variable=self.variable_name)


class _Writer:
    """Shared body of the seed writers (context manager, flush, close, pickling)."""

    _named = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: Sequence[int] | int | None = None,
        dtype: Any = None,
        remove_exist: bool = False,
        **kwargs: Any,
    ) -> None:
        path = _local_target(path, type(self).__name__)
        env = _SESSION_ENV + _path_key(path)
        joined = join_parent_session(env)
        if joined is not None:
            # A spawned/forkserver child re-importing the parent's main module: attach to the
            # parent's writer instead of re-creating (and with remove_exist, replacing) the store.
            self._w = joined
            return
        if not remove_exist and os.path.isfile(path):
            _refuse_legacy(path)
        try:
            self._w = StoreWriter(
                path,
                shape=shape,
                dtype=dtype,
                remove_exist=remove_exist,
                named=self._named,
                **kwargs,
            )
        except StoreExistsError:
            why = _foreign(path)
            if why is None:
                raise
            raise why from None
        os.environ[env] = json.dumps(self._w.handoff())

    @property
    def path(self) -> str:
        """Where the store is (with ``remove_exist=True``: where it lands at ``close``)."""
        return self._w.target

    @property
    def dtype(self) -> np.dtype | None:
        return self._w.dtype

    @property
    def writer(self) -> StoreWriter:
        return self._w

    def flush(self) -> None:
        """Commit everything every process of this writer has written (owner process);
        in a child process, make its own rows durable."""
        self._w.flush()

    def close(self) -> None:
        """Commit and release the writer."""
        # The session stays in the environment on purpose: pool children spawned later
        # re-import __main__, and must attach to this (closed) writer rather than
        # re-create the store with remove_exist=True.
        self._w.close()

    @property
    def closed(self) -> bool:
        return self._w.closed

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        # the writer's own rule: commit, except a replacement given up when the block raised
        self._w.__exit__(exc_type, *exc)

    def __setitem__(self, key: Any, value: Any) -> None:
        """``w[a:b] = rows`` writes whole rows at ``a`` (a ``dask.array.store`` target)."""
        from .dask_backend import write_region

        write_region(self._w, key, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._w!r})"


def _local_target(path: str | os.PathLike[str], who: str) -> str:
    """The absolute local path a seed writer writes to (``file://``/``local://`` URLs
    taken as their path); any other URL is refused: these writers ``pwrite`` into a
    memory-mappable file, which an object store is not."""
    from .core.filesystem import is_local, local_path

    if not is_local(path):
        raise NotAStoreError(
            f"{who} writes local stores only, not {os.fspath(path)!r}. Write to a local path "
            "and copy the store with `bigarray cp`, or write a remote (sharded) store with "
            "bigarray.dask_backend.to_bigarray(array, url, ...)."
        )
    return local_path(path)


_MANIFEST_PEEK = 1 << 20  # bytes of a foreign manifest.json read to see what it claims


def _foreign(path: str) -> BigArrayError | None:
    """Why a writer may not create a store at ``path`` when what stands there is the user's
    (a file, a directory that is not a store); None when it is a store or free (the
    writer's own error then stands). ``remove_exist=True`` would not help (it replaces
    stores only, see :func:`~bigarray.core.location.remove_store`), so the error must not
    suggest it."""
    from .core.format import FORMAT_NAME, MANIFEST_NAME
    from .core.store import interrupted_creation, is_store, read_manifest

    try:
        if not os.path.lexists(path) or is_store(path):
            return None
        if os.path.isdir(path) and (not os.listdir(path) or interrupted_creation(path)):
            return None
    except OSError:  # unreadable: the writer's own error stands
        return None
    if os.path.isdir(path):
        try:  # a store of a newer bigarray (or a damaged one): the parser says why
            # O_NONBLOCK: a FIFO planted as the manifest must not hang the writer
            fd = os.open(os.path.join(path, MANIFEST_NAME), os.O_RDONLY | os.O_NONBLOCK)
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
                doc = json.loads(os.read(fd, _MANIFEST_PEEK)) if regular else None
            finally:
                os.close(fd)
            if isinstance(doc, dict) and doc.get("format") == FORMAT_NAME:
                read_manifest(path)
        except BigArrayError as exc:
            return exc
        except (OSError, ValueError):
            pass
        kind = "a non-empty directory that is not a bigarray store (no valid manifest.json)"
    else:
        kind = "a file that is not a bigarray store"
    # the writer's class (FileExistsError, as before): only its advice was wrong
    return StoreExistsError(
        f"{path!r} is {kind}; a writer creates a store only where nothing is (or an empty "
        "directory or file), and remove_exist=True replaces only a bigarray store, never "
        "anything else. Remove it yourself, or choose another path."
    )


def _refuse_legacy(path: str) -> None:
    """Writers never append to a file of the 2020 library: say how to convert it."""
    from .core.legacy import convert_hint, is_legacy_file

    if is_legacy_file(path):
        raise ReadOnlyError(
            f"{path!r} is a file of the 2020 bigarray, which this version reads in place "
            f"(PointerArray(path)) but never writes. Convert it to a store first "
            f"(`{convert_hint(path)}`) and write to the new store, or delete it with "
            "bigarray.remove(path) first (remove_exist=True never deletes one)."
        )


def _verify_local(path: str) -> None:
    """``verify=True``: the checksums of a store; what a 2020 file allows (it has none)."""
    from .core.legacy import check_legacy, is_legacy_file

    if os.path.isfile(path) and is_legacy_file(path):
        ok, lines = check_legacy(path)
        if not ok:
            from .errors import IntegrityError

            raise IntegrityError("\n".join(lines))
        return
    from .core.verify import verify_store

    verify_store(path).raise_if_bad()


def _path_key(path: str) -> str:
    import zlib

    return f"{zlib.crc32(path.encode()):08x}"


class MmapArrayWriter(_Writer):
    """Write one unnamed array (``MmapArray``) from one or many processes.

    Parameters
    ----------
    path
        Store directory (created, or opened for appending).
    shape
        ``shape[0]`` is the minimum number of rows; ``shape[1:]`` the row shape.
    dtype
        Element type (default: the first array written).
    remove_exist
        Replace an existing store at ``path``: the new one is written beside it and takes
        its place at ``close()``; readers see the old one until then (see
        :class:`~bigarray.core.writer.StoreWriter`).
    """

    def write(self, arrays: Any, start_position: int | None = None) -> tuple[int, int]:
        """Write an array (or a list of arrays, back to back) at ``start_position``, or
        appended after everything written so far when it is ``None``. Returns the rows
        ``(start, stop)`` written."""
        if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
            arrays = [arrays]
        return self._w.write_rows(arrays, None, start_position)


class PointerArrayWriter(_Writer):
    """Write named segments (``PointerArray``) from one or many processes.

    A writer created in a parent process can be used from ``multiprocessing.Pool`` children
    (fork, spawn, forkserver) or pickled to dask workers: each process records the segments
    it wrote in a journal file, and the parent's ``flush()``/``close()`` commits them all.

    Parameters
    ----------
    path
        Store directory (created, or opened for appending).
    shape
        ``shape[0]`` is the minimum number of rows; ``shape[1:]`` the row shape.
    dtype
        Element type (default: the first array written).
    remove_exist
        Replace an existing store at ``path``: the new one is written beside it and takes
        its place at ``close()``; readers see the old one until then (see
        :class:`~bigarray.core.writer.StoreWriter`).

    Examples
    --------
    >>> with PointerArrayWriter("/tmp/a", dtype="float32") as w:     # doctest: +SKIP
    ...     w.write({"utt1": np.zeros((3, 4)), "utt2": np.ones((5, 4))})
    """

    _named = True

    def write(
        self, arrays: Mapping[str, Any], start_position: int | None = None
    ) -> tuple[int, int]:
        """Write ``{name: array}``: the arrays go back to back from ``start_position`` (or
        appended when ``None``), each becoming the segment ``name``. Returns the rows
        ``(start, stop)`` written."""
        if not isinstance(arrays, Mapping):
            raise SchemaError(
                f"PointerArrayWriter.write takes a mapping {{name: array}}, got "
                f"{type(arrays).__name__}; use MmapArrayWriter for unnamed arrays"
            )
        # the keys view tells the writer the names are unique (no check needed)
        return self._w.write_rows(list(arrays.values()), arrays.keys(), start_position)
