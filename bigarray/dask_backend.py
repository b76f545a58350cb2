"""The dask face: segment-aligned dask arrays over stores, per-segment maps, parallel writes.

Reading
    :func:`from_bigarray` builds a ``dask.array.Array`` whose chunk boundaries along rows fall
    on segment boundaries. The graph is ``dask.array.from_array`` over a
    :class:`~bigarray.lazy.LazyArray` handle, so it holds only the URL, the options, the dtype,
    the shards and one int per chunk, never data or per-segment objects; tasks reopen the
    store in the worker through a small per-process cache, return views of the memory map,
    and dask fuses the read with the reduction that follows.

Per segment
    :func:`map_segments` applies a function to every named segment, chunk by chunk.

Writing
    :func:`to_bigarray` writes a dask array into a store in parallel on any scheduler:
    every task ``pwrite``\\ s its own rows through a pickled (non-owner) writer, the segment
    names stay in the client, and the client commits once after every task finished.
    :class:`BigArrayTarget` is the same writer as a ``dask.array.store`` target.
    :func:`to_bigarray_sharded` (every URL that is not local) writes one ``.npy`` object
    per block instead and commits them (:mod:`bigarray.core.sharded`: the storage part).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .core.destination import Destination, prepare_destination
from .core.filesystem import is_local, local_path
from .core.members import OWNERS, writer_here
from .errors import BigArrayError, SchemaError, StoreExistsError
from .lazy import LazyArray, SupportsLazyArray, open_array

__all__ = [
    "BigArrayTarget",
    "from_bigarray",
    "map_segments",
    "to_bigarray",
    "to_bigarray_sharded",
    "write_region",
]


# ============================================================================== reading
def as_handle(
    x: Any, variable: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> LazyArray:
    """A :class:`LazyArray` for a path/URL, a handle, or a whole ``MmapArray``/``PointerArray``."""
    if isinstance(x, LazyArray):
        return x
    if isinstance(x, SupportsLazyArray):  # an open MmapArray/PointerArray
        return x.__bigarray_lazy__(variable)
    if isinstance(x, np.ndarray):
        raise SchemaError(
            f"a plain {type(x).__name__} {x.shape} is not a store; use dask.array.from_array "
            "for in-memory arrays, or write it first with to_bigarray / PointerArrayWriter"
        )
    if isinstance(x, (str, os.PathLike)):
        return open_array(x, variable=variable, storage_options=storage_options)
    raise SchemaError(
        f"expected a store path or URL, a PointerArray or a LazyArray, not "
        f"{type(x).__name__} ({x!r})"
    )


def from_bigarray(
    path_or_url: Any,
    chunks: Any = "auto",
    variable: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
) -> Any:
    """A store's variable as a ``dask.array.Array`` with segment-aligned row chunks.

    Parameters
    ----------
    path_or_url
        Store directory, fsspec URL, :class:`~bigarray.lazy.LazyArray`, or an open
        ``MmapArray``/``PointerArray``.
    chunks
        ``"auto"`` groups consecutive segments up to dask's ``array.chunk-size``;
        ``"segments"`` gives one chunk per segment; an int means about that many rows; a
        size such as ``"64 MiB"``; or explicit row chunk sizes (checked). Chunk boundaries
        fall on segment boundaries (and shard boundaries); only a single segment larger than
        the target is split. Rows are never split across columns.
    variable
        Variable to read (default ``"data"`` or the only one).
    storage_options
        fsspec options for remote URLs.
    name
        Dask key prefix (default: ``bigarray-`` plus a token that changes whenever the
        store is rewritten or appended to).

    Returns
    -------
    dask.array.Array

    Raises
    ------
    SchemaError
        Bad ``chunks`` (or explicit chunks that cut a segment).

    Examples
    --------
    >>> x = from_bigarray("features.bigarray")            # doctest: +SKIP
    >>> x.mean(axis=0).compute()                           # doctest: +SKIP
    """
    import dask.array as da
    from dask.base import tokenize

    handle = as_handle(path_or_url, variable, storage_options)
    rows = handle.row_chunks(chunks)
    full = (rows, *((s,) for s in handle.shape[1:]))
    if name is None:
        # the chunk spec, not the (possibly 1M-long) tuple: tokenizing stays O(1)
        spec = chunks if not isinstance(chunks, (tuple, list)) else ("explicit", len(rows))
        name = f"bigarray-{tokenize(handle, spec, rows[:4], len(rows))}"
    meta = np.empty((0,) * handle.ndim, handle.dtype)
    return da.from_array(
        handle, chunks=full, name=name, asarray=False, fancy=False, meta=meta, inline_array=False
    )


# ============================================================================== per segment
def _segment_plan(handle: LazyArray, chunks: Any) -> np.ndarray:
    """``(k, 2)`` int64: the first and stop segment number of each chunk (never split)."""
    bounds = handle.segment_bounds()
    if bounds is None or not len(bounds):
        raise SchemaError(
            f"{handle.url!r} has no named segments; map_segments needs a store written with "
            "names (PointerArrayWriter, or to_bigarray(..., segments=...)). Use "
            "from_bigarray(...).map_blocks for unnamed arrays."
        )
    rows = handle.row_chunks(chunks, split=False)
    cuts = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
    first = np.searchsorted(bounds[:, 0], cuts, "left")
    first[-1] = len(bounds)
    plan = np.stack([first[:-1], first[1:]], 1)
    return plan[plan[:, 1] > plan[:, 0]]


def _segments_of(handle: LazyArray, lo: int, hi: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names and rows ``[a, b)`` (relative to the block) of segments ``lo..hi``, plus the
    block of rows holding them all."""
    arrays = handle.indices.arrays
    bounds = np.asarray(arrays.bounds[lo:hi])
    a, b = int(bounds[0, 0]), int(bounds[:, 1].max())
    offs = np.asarray(arrays.name_offsets[lo : hi + 1])
    raw = arrays.names[int(offs[0]) : int(offs[-1])].tobytes()
    rel = (offs - offs[0]).tolist()
    names = [raw[rel[i] : rel[i + 1]].decode("utf-8", "surrogatepass") for i in range(hi - lo)]
    block = handle.read_rows(a, b)
    return names, bounds - a, block


def _map_partition(
    part: list[tuple[int, int]],
    handle: LazyArray,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for lo, hi in part:
        names, rel, block = _segments_of(handle, int(lo), int(hi))
        for name, (a, b) in zip(names, rel.tolist()):
            out.append((name, func(block[a:b], *args, **kwargs)))
    return out


def _stack_partition(
    part: list[tuple[str, Any]], dtype: np.dtype, shape: tuple[int, ...]
) -> np.ndarray:
    out = np.empty((len(part), *shape), dtype)
    for i, (name, value) in enumerate(part):
        v = np.asarray(value)
        if v.shape != shape:
            raise SchemaError(
                f"map_segments: the function returned shape {v.shape} for segment {name!r} "
                f"but shape={shape} was declared; return arrays of that shape or leave "
                "dtype/shape unset to get a bag of (name, result) pairs"
            )
        out[i] = v
    return out


def map_segments(
    func: Callable[..., Any],
    x: Any,
    *args: Any,
    chunks: Any = "auto",
    variable: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dtype: Any = None,
    shape: Sequence[int] | None = None,
    **kwargs: Any,
) -> Any:
    """Apply ``func(segment, *args, **kwargs)`` to every named segment, in parallel by chunk.

    Each task reads one segment-aligned chunk of rows (the store is opened in the worker)
    and calls ``func`` on each segment in it; no segment is ever split.

    Parameters
    ----------
    func
        Called with one segment (a read-only ndarray view) and ``args``/``kwargs``.
    x
        Store path or URL, :class:`~bigarray.lazy.LazyArray` or ``PointerArray``.
    chunks
        How many rows each task handles (see :func:`from_bigarray`).
    dtype, shape
        When given, ``func`` returns arrays of this dtype and ``shape`` (default ``()``) and
        the result is one ``dask.array.Array`` of shape ``(n_segments, *shape)`` in row order
        (the order of ``x.indices``), for per-segment features.

    Returns
    -------
    dask.bag.Bag or dask.array.Array
        Without ``dtype``: a bag of ``(name, result)`` pairs in row order, one partition per
        chunk (``dict(bag.compute())`` gives a mapping; ``bag.fold`` reduces). With
        ``dtype``: the stacked results.

    Raises
    ------
    SchemaError
        The store has no segment names, or a result does not have the declared shape.

    Examples
    --------
    >>> lengths = dict(map_segments(len, "f.bigarray").compute())        # doctest: +SKIP
    >>> means = map_segments(lambda s: s.mean(0), "f.bigarray",
    ...                      dtype="f8", shape=(128,)).compute()           # doctest: +SKIP
    """
    import dask.bag as db

    handle = as_handle(x, variable, storage_options)
    plan = _segment_plan(handle, chunks)
    ranges = [(int(a), int(b)) for a, b in plan.tolist()]
    bag = db.from_sequence(ranges, partition_size=1).map_partitions(
        _map_partition, handle, func, args, kwargs
    )
    if dtype is None:
        return bag
    import dask
    import dask.array as da

    dt = np.dtype(dtype)
    shp = tuple(int(s) for s in (shape or ()))
    parts = bag.to_delayed()
    blocks = [
        da.from_delayed(
            dask.delayed(_stack_partition, pure=True)(p, dt, shp), (b - a, *shp), dtype=dt
        )
        for p, (a, b) in zip(parts, ranges)
    ]
    return da.concatenate(blocks, axis=0)


# ============================================================================== writing
def write_region(writer: Any, key: Any, value: Any, shape: Sequence[int] | None = None) -> None:
    """``target[key] = value`` for a store writer: write whole rows ``key[0]``.

    ``key`` is what ``dask.array.store`` passes: a tuple of slices, the first selecting
    rows (step 1) and the others whole rows. The rows are ``pwrite``\\ n at their position
    (no allocation), journaled in a worker process and committed by the owner's
    ``close()``.

    Raises
    ------
    SchemaError
        A key that is not a row range of whole rows.
    """
    if not isinstance(key, tuple):
        key = (key,)
    value = np.asarray(value)
    k0 = key[0] if key else slice(None)
    if not isinstance(k0, slice) or k0.step not in (None, 1):
        raise SchemaError(
            f"a store writer takes whole row ranges (target[a:b] = rows), not {k0!r}; "
            "write rows in order"
        )
    start = 0 if k0.start is None else int(k0.start)
    if start < 0:
        raise SchemaError(f"row range {k0!r} must start at a row >= 0")
    trailing = tuple(shape[1:]) if shape is not None else value.shape[1:]
    for i, k in enumerate(key[1:], 1):
        if k == slice(None):
            continue
        full = (
            isinstance(k, slice)
            and k.step in (None, 1)
            and (k.start or 0) == 0
            and (k.stop is None or (i - 1 < len(trailing) and k.stop >= trailing[i - 1]))
        )
        if not full:
            raise SchemaError(
                f"a store writer writes whole rows, but axis {i} is indexed with {k!r}; "
                f"rechunk the dask array so rows are whole: x.rechunk({{{i}: -1}})"
            )
    if k0.stop is not None and int(k0.stop) - start != len(value):
        raise SchemaError(
            f"rows {k0!r} hold {int(k0.stop) - start} rows but the value has {len(value)}"
        )
    if value.ndim == 0:
        raise SchemaError("a store writer writes rows; got a scalar value")
    if not len(value):
        return
    writer_here(writer).write_rows([value], None, start_position=start)


def _segment_table(segments: Any, rows: int) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """Normalise ``segments`` to (names, starts, stops) in row order, validated."""
    if segments is None:
        return None
    if isinstance(segments, Mapping):
        names = list(segments.keys())
        try:
            b = np.asarray(list(segments.values()), np.int64).reshape(len(names), 2)
        except (ValueError, TypeError):
            raise SchemaError(
                "segments as a mapping must be {name: (start, stop)} with int rows; "
                f"got values like {next(iter(segments.values()))!r}"
            ) from None
        starts, stops = b[:, 0].copy(), b[:, 1].copy()
    elif isinstance(segments, Sequence) and not isinstance(segments, (str, bytes)):
        pairs = list(segments)
        bad = [p for p in pairs[:1] if not (isinstance(p, Sequence) and len(p) == 2)]
        if bad:
            raise SchemaError(
                f"segments as a sequence must hold (name, length) pairs; got {bad[0]!r}"
            )
        names = [p[0] for p in pairs]
        try:
            lengths = np.asarray([p[1] for p in pairs], np.int64)
        except (ValueError, TypeError):
            raise SchemaError("segment lengths must be ints (rows)") from None
        if (lengths < 0).any():
            i = int(np.flatnonzero(lengths < 0)[0])
            raise SchemaError(f"segment {names[i]!r} has length {int(lengths[i])}; need >= 0")
        stops = np.cumsum(lengths)
        starts = stops - lengths
        if int(stops[-1] if len(stops) else 0) != rows:
            raise SchemaError(
                f"segment lengths sum to {int(stops[-1]) if len(stops) else 0} rows but the "
                f"array has {rows}; (name, length) pairs must cover every row in order. Pass "
                "a mapping name -> (start, stop) to leave rows unnamed."
            )
    else:
        raise SchemaError(
            f"segments must be a mapping name -> (start, stop), a sequence of (name, length) "
            f"pairs, or None; got {type(segments).__name__}"
        )
    if not names:
        return names, starts, stops
    bad_len = np.flatnonzero((starts < 0) | (stops < starts) | (stops > rows))
    if len(bad_len):
        i = int(bad_len[0])
        raise SchemaError(
            f"segment {names[i]!r} rows [{int(starts[i])}, {int(stops[i])}) do not fit the "
            f"array's {rows} rows (need 0 <= start <= stop <= {rows})"
        )
    order = np.argsort(starts, kind="stable")
    if (order != np.arange(len(order))).any():
        names = [names[i] for i in order.tolist()]
        starts, stops = starts[order], stops[order]
    # Duplicate names and overlapping rows are refused here, before anything is removed
    # or written (the commit would refuse them only after every task wrote its rows).
    from .core.index import SegmentArrays, merge

    merge(SegmentArrays.empty(), SegmentArrays.from_names(names, starts, stops))
    return names, starts, stops


def _check_target(
    path: str,
    shape: tuple[int, ...],
    variable: str,
    segments: Any,
    remove_exist: bool,
    check_only: bool = False,
) -> tuple[tuple[list[str], np.ndarray, np.ndarray] | None, Destination | None, bool]:
    """What :class:`BigArrayTarget` checks before it writes anything (it only *reads* the
    path): returns the segment table, where the new store is written beside the path (a
    replacement or a creation; :func:`~bigarray.core.destination.prepare_destination`)
    and whether it is."""
    from .core.store import is_store, read_manifest

    if not shape:
        raise SchemaError("a store holds arrays with at least one dimension (rows); got ()")
    if not remove_exist and is_store(path):
        manifest = read_manifest(path)
        if variable in manifest.variables:
            raise StoreExistsError(
                f"{path!r} already holds variable {variable!r}; pass remove_exist=True to "
                "replace the store, or write to another path or variable"
            )
        if manifest.segments is not None and manifest.rows:
            # Refused before anything is written or committed: this writer gives the new
            # variable rows (and names) of its own, which the store's named segments
            # already hold; sharing them is the xarray writer's append.
            raise SchemaError(
                f"{path!r} has named segments over its rows; dask to_bigarray cannot add "
                f"variable {variable!r} along them. Add it with the xarray writer "
                "(bigarray.xarray_backend.to_bigarray(ds, path, mode='a') adds variables "
                "along the store's rows), write it to another store, or pass "
                "remove_exist=True to replace the store"
            )
    table = _segment_table(segments, shape[0])
    if remove_exist or not is_store(path):
        return table, prepare_destination(path, remove_exist, check_only=check_only), True
    return table, None, False


class BigArrayTarget:
    """A ``dask.array.store`` target that writes a new variable of a store in parallel.

    ``target[a:b] = rows`` writes rows ``[a, b)``; it works on threads, processes and
    ``dask.distributed`` (the target pickles as a reference to the writer session). Commit
    with :meth:`close` in the creating process after the store finished (or use it as a
    context manager).

    Parameters
    ----------
    path
        Store directory (created if missing).
    shape, dtype
        Shape and dtype of the array to write.
    variable
        Variable name (must not exist yet unless ``remove_exist``).
    segments
        Segment names: a mapping ``name -> (start, stop)``, a sequence of ``(name, length)``
        pairs covering all rows, or None. They stay in this process and are committed by
        :meth:`close`.
    remove_exist
        Replace an existing store at ``path``: the new one is written beside it and takes
        its place at :meth:`close` (readers see the old store until then; :meth:`abort`
        leaves it as it was).

    Examples
    --------
    >>> with BigArrayTarget("out.bigarray", x.shape, x.dtype) as t:    # doctest: +SKIP
    ...     da.store(x, t, lock=False)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        dtype: Any,
        *,
        variable: str = "data",
        segments: Any = None,
        remove_exist: bool = False,
        fsync: bool = True,
        dims: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        from .core.writer import StoreWriter

        path = os.path.abspath(os.fspath(path))
        shape = tuple(int(s) for s in shape)
        self._table, self._dest, beside = _check_target(
            path, shape, variable, segments, remove_exist
        )
        self._recorded = False
        # Replacing a store, or creating one: write the new one beside the path and move it
        # there at the commit, so readers see the old store (or none), whole, until the new
        # one is committed, and a write that fails or is killed leaves no store behind.
        if beside:
            assert self._dest is not None
            path, remove_exist = self._dest.staging, False
        # declared rows stay 0: if the write fails, closing commits nothing
        self._writer: Any = StoreWriter(
            path,
            variable=variable,
            shape=(0, *shape[1:]),
            dtype=dtype,
            remove_exist=remove_exist,
            named=self._table is not None,
            dims=dims,
            attrs=attrs,
            fsync=fsync,
        )
        self._handoff = self._writer.handoff()
        OWNERS[str(self._handoff["session"])] = self._writer
        self.path = path
        self.variable = variable
        self.shape = shape
        self.dtype = self._writer.dtype
        self.ndim = len(shape)

    @property
    def writer(self) -> Any:
        """The underlying :class:`~bigarray.core.writer.StoreWriter` (None in other processes)."""
        return self._owner_writer()

    def _owner_writer(self) -> Any:
        if self._writer is not None:
            return self._writer
        if int(self._handoff["owner_pid"]) == os.getpid():
            return OWNERS.get(str(self._handoff["session"]))
        return None

    @property
    def is_owner(self) -> bool:
        """True in the process that created the target (the one that commits)."""
        return int(self._handoff["owner_pid"]) == os.getpid()

    def __setitem__(self, key: Any, value: Any) -> None:
        write_region(
            self._writer if self._writer is not None else self._handoff, key, value, self.shape
        )

    def close(self) -> None:
        """Record the segment names and commit everything every process wrote."""
        w = self._owner_writer()
        if w is None:
            raise BigArrayError(
                f"BigArrayTarget({self.path!r}).close() ran in process {os.getpid()}, not in "
                f"the process that created it ({self._handoff['owner_pid']}): only that one "
                "can commit. Call close() in the creating process (to_bigarray(..., "
                "compute=False) results commit wherever they are computed)."
            )
        if w.closed:
            return
        self.record_segments()
        w.close()
        self._switch()

    def _switch(self) -> None:
        """Put a store written beside its path in its place (see __init__)."""
        if self._dest is not None and os.path.isdir(self.path):
            self._dest.commit()

    def abort(self) -> None:
        """Forget what was written (nothing is committed) and release the writer."""
        w = self._owner_writer()
        if w is None or w.closed:
            return
        w.abort()
        if not w.is_owner:
            w.close()
            return
        # End the session without a commit: close() would commit, and tasks still running
        # when a sibling failed may journal rows after this.
        w.discard()
        if self._dest is not None:  # a replacement that never committed: the old store stays
            self._dest.abandon()

    def record_segments(self) -> None:
        """Publish the segment names (and the row count) in the writer session's journal,
        once; the commit merges them with what the workers wrote. Called by :meth:`close`,
        or early by :func:`to_bigarray` so that the names never travel with the graph."""
        if self._recorded:
            return
        from .core.index import SegmentArrays
        from .core.journal import Journal, Record

        rows = self.shape[0]
        empty = np.zeros(0, np.int64)
        names, starts, stops = self._table if self._table is not None else ([], empty, empty)
        if names:
            seg = SegmentArrays.from_names(names, starts, stops)
            record = Record(self.variable, seg, rows, data=False)
        else:
            starts = stops = empty
            record = Record(self.variable, None, rows, data=False)
        Journal(self.path, str(self._handoff["session"])).append(record, starts, stops)
        self._recorded = True

    def commit_anywhere(self) -> None:
        """Commit from whichever process runs this (the final task of a delayed write).

        In the creating process this is :meth:`close`. Elsewhere (dask runs the final step
        of ``compute`` as a task, on a worker for processes and ``distributed``) the segment
        names were journaled when the write was built, so this process joins the writer
        session and commits it: everything it needs is in the store's journal.
        """
        if self._owner_writer() is not None:
            self.close()
            return
        from .core.writer import StoreWriter

        heir = StoreWriter.attach(self._handoff)
        # Hand the commit over to this process: the journal holds every record of the
        # session, and the commit runs under the store lock like any other.
        heir.take_ownership()
        heir.close()
        self._switch()

    def __enter__(self) -> BigArrayTarget:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __reduce__(self) -> Any:
        # by reference: the writer session, never the segment table
        return (
            _target_ref,
            (
                self._handoff,
                self.path,
                self.variable,
                self.shape,
                str(self.dtype),
                self._dest,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"<BigArrayTarget {self.path!r} variable={self.variable!r} shape={self.shape} "
            f"dtype={self.dtype}>"
        )


def _target_ref(
    handoff: dict[str, Any],
    path: str,
    variable: str,
    shape: tuple[int, ...],
    dtype: str,
    dest: Destination | None = None,
) -> BigArrayTarget:
    t = BigArrayTarget.__new__(BigArrayTarget)
    t._writer = None
    t._dest = dest
    t._handoff = handoff
    t._table = None
    t._recorded = True  # the names stay with the creating process
    t.path, t.variable, t.shape = path, variable, shape
    t.dtype = np.dtype(dtype)
    t.ndim = len(shape)
    return t


def to_bigarray(
    x: Any,
    path: str | os.PathLike[str],
    segments: Any = None,
    variable: str = "data",
    compute: bool = True,
    *,
    storage_options: Mapping[str, Any] | None = None,
    remove_exist: bool = False,
    fsync: bool = True,
    dims: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Write a dask array into a new store (or a new variable of one) in parallel.

    Every task writes its own block of rows at its final position with ``pwrite`` (threads,
    processes or ``dask.distributed`` workers; retried tasks rewrite the same bytes), the
    names of the segments stay in the client, and the store is committed once, by this
    process, after every task finished. Until then readers see the previous commit.

    Parameters
    ----------
    x
        A ``dask.array.Array`` (a numpy array is wrapped). Blocks that split a row across
        columns are rechunked to whole rows first.
    path
        Store directory, or an fsspec URL (``s3://``, ``memory://``: a sharded store is
        written through :mod:`bigarray.core.sharded`).
    segments
        A mapping ``name -> (start, stop)`` over the rows, a sequence of ``(name, length)``
        pairs covering every row in order, or ``None`` for an array without names.
    variable
        Variable name.
    compute
        ``False`` returns a ``dask.delayed.Delayed`` whose computation (on any scheduler,
        ``client.compute`` included) writes and then commits. It is one task that creates
        the writer when it runs and runs the write tasks itself (on ``dask.distributed``
        through the worker's client): building it touches nothing on disk, and a failed
        block leaves nothing behind (the previous commit stays as it was).
    storage_options
        fsspec options for remote URLs.
    remove_exist
        Replace an existing store at ``path``.

    Returns
    -------
    None, or a ``Delayed`` when ``compute=False``.

    Raises
    ------
    SchemaError
        Bad ``segments`` (out of range, wrong lengths, overlaps found at commit), unknown
        chunk sizes, or a target that is not a path.
    StoreExistsError
        The variable exists already and ``remove_exist`` is False.

    Examples
    --------
    >>> to_bigarray(x, "out.bigarray", segments=[("a", 3), ("b", 5)])   # doctest: +SKIP
    """
    import dask.array as da

    if isinstance(path, np.ndarray):
        raise SchemaError(
            f"to_bigarray writes to a store path, not into a {type(path).__name__}: a numpy "
            "memmap pickled to another process is a copy, and writes there are lost. Pass a "
            "directory path; read it back with bigarray.open(path)."
        )
    target_url = os.fspath(path)
    if not is_local(target_url):
        return to_bigarray_sharded(
            x,
            target_url,
            segments=segments,
            variable=variable,
            compute=compute,
            storage_options=dict(storage_options or {}),
            remove_exist=remove_exist,
            dims=dims,
            attrs=attrs,
        )
    target_url = local_path(target_url)
    if not isinstance(x, da.Array):
        if isinstance(x, LazyArray) or not hasattr(x, "shape"):
            raise SchemaError(
                f"to_bigarray takes a dask array, not {type(x).__name__}; wrap it with "
                "dask.array.from_array(...) first"
            )
        x = da.asarray(x)
    if x.ndim == 0:
        raise SchemaError("to_bigarray needs an array with rows (ndim >= 1), got a scalar")
    if any(np.isnan(c) for cs in x.chunks for c in cs):
        raise SchemaError(
            "the dask array has unknown chunk sizes (nan); call x.compute_chunk_sizes() "
            "before to_bigarray so every block knows its rows"
        )
    if any(len(c) > 1 for c in x.chunks[1:]):
        x = x.rechunk({i: -1 for i in range(1, x.ndim)})
    job = _LocalWrite(
        x,
        os.path.abspath(target_url),
        dict(
            variable=variable,
            segments=segments,
            remove_exist=remove_exist,
            fsync=fsync,
            dims=dims,
            attrs=attrs,
        ),
    )
    if not compute:
        import dask

        # Checked now (reads only), written when computed: building the Delayed touches
        # nothing on disk, and a Delayed that is never computed leaves nothing behind.
        _check_target(job.path, tuple(x.shape), variable, segments, remove_exist, True)
        return dask.delayed(_run_local_write, pure=False)(job, True)
    _run_local_write(job, False)
    return None


class _LocalWrite:
    """A local :func:`to_bigarray` to run: the array, the path and the target's options.

    A plain class (not a dataclass, list or dict), so ``dask.delayed`` passes it to its
    task as it is instead of computing the array inside it first."""

    def __init__(self, x: Any, path: str, options: dict[str, Any]) -> None:
        self.x, self.path, self.options = x, path, options


def _run_local_write(job: _LocalWrite, nested: bool) -> None:
    """Write and commit ``job``: in the client (``compute=True``) or as the one task of a
    ``compute=False`` Delayed, which creates the writer only when it runs and computes the
    write tasks from there; on any failure the session ends with nothing committed and
    nothing left beside the path."""
    x = job.x
    target = BigArrayTarget(job.path, x.shape, x.dtype, **job.options)
    try:
        starts = np.concatenate([[0], np.cumsum(x.chunks[0], dtype=np.int64)[:-1]])
        written = x.map_blocks(
            _write_block,
            target=target,
            starts=starts,
            dtype=np.int64,
            chunks=tuple((1,) * len(c) for c in x.chunks),
            meta=np.empty((0,) * x.ndim, np.int64),
        )
        total = written.sum()
        # the names go to the journal, never into the graph of the write tasks (with
        # compute=False they travel once, in ``job``, to the task running this)
        target.record_segments()
        _compute_here([total], nested)
        target.close()
    except BaseException:
        # a refused commit leaves the writer open (for a user to recover); here nothing
        # is left to recover, so the session ends without committing
        target.abort()
        raise


def _compute_here(tasks: Sequence[Any], nested: bool) -> list[Any]:
    """Compute dask collections from wherever this runs, waiting for all of them.

    In the client that is ``dask.compute``. Inside a task of a ``compute=False`` Delayed:
    on a ``dask.distributed`` worker through the worker's client, after seceding from the
    worker's thread pool (a worker of one thread would otherwise wait for itself); on a
    process pool with threads (a pool worker cannot start a pool of its own).
    """
    import dask

    if not tasks:
        return []
    if nested:
        worker = None
        with contextlib.suppress(ImportError, ValueError):
            from distributed import get_worker

            worker = get_worker()
        if worker is not None:
            from distributed import worker_client

            with worker_client() as c:
                return _gather_all(c, tasks)
        if dask.config.get("scheduler", None) in ("processes", "multiprocessing"):
            return list(dask.compute(*tasks, scheduler="threads"))
    client = None
    with contextlib.suppress(ImportError, ValueError):
        from distributed import default_client

        client = default_client()
    if client is not None and dask.config.get("scheduler", None) in (None, "dask.distributed"):
        return _gather_all(client, tasks)
    return list(dask.compute(*tasks))


def _gather_all(client: Any, tasks: Sequence[Any]) -> list[Any]:
    """Compute ``tasks`` on a distributed ``client``; on a failure, cancel the rest and
    wait until none is running any more: a task still writing when the caller cleans up
    would leave its object behind the cleanup."""
    from distributed import wait

    futures = client.compute(list(tasks))
    try:
        return list(client.gather(futures))
    except BaseException:
        client.cancel(futures)
        with contextlib.suppress(Exception):
            wait(futures, timeout=120)
        raise


# ------------------------------------------------------------------- sharded (object stores)


def to_bigarray_sharded(
    dask_array: Any,
    url: str | os.PathLike[str],
    segments: Any = None,
    variable: str = "data",
    compute: bool = True,
    storage_options: dict[str, Any] | None = None,
    *,
    remove_exist: bool = False,
    dims: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Write a dask array to a new store at any URL, one shard object per block.

    Every dask task writes its block of rows as its own ``.npy`` object with the CRC-32C
    of its blocks (:func:`bigarray.core.sharded.write_shard`: no two tasks touch one
    object, so workers need nothing but the object store in common); then the segment
    index and, last, the manifest are written (:func:`bigarray.core.sharded.commit_shards`).
    Works on every dask scheduler (threads, processes, ``dask.distributed``) and every
    fsspec filesystem whose objects the workers can reach (``memory://`` is per-process:
    use threads there). :func:`to_bigarray` calls this for every URL that is not local.

    Parameters
    ----------
    dask_array
        The data (a ``dask.array.Array``; a numpy array is wrapped in one chunk). Rows
        are axis 0; each block along axis 0 becomes one shard (after the rechunk below).
    url
        Where the store goes: ``s3://bucket/name.bigarray``, ``memory://...``, a local path.
    segments
        The segment index: ``None`` (no names), a mapping ``name -> (start, stop)`` or
        ``name -> length``, or a list of ``(name, length)`` / ``(name, start, stop)``.
        Chunk boundaries that cut a segment move to its start, so segments never cross
        shards.
    variable
        Name of the variable.
    compute
        Write now and return the committed :class:`~bigarray.core.format.Manifest`; with
        ``False`` return a ``dask.delayed`` object whose one task, when computed, runs
        the write tasks and commits (nothing at ``url`` is written before it runs). If any
        block fails, in either mode, nothing is committed and every object the write
        stored is deleted.
    storage_options
        Options for the fsspec filesystem (refused for a local path).
    remove_exist
        Replace an existing store at ``url`` (otherwise that is an error). The new version
        is written beside the old one and replaces it at the commit: readers see the old
        version, whole, until then; its objects are deleted after the commit.
    dims, attrs
        Dimension names (default ``("row", "dim_1", ...)``) and attributes of the variable.

    Returns
    -------
    Manifest or dask.delayed.Delayed

    Raises
    ------
    StoreExistsError
        A store is already at ``url`` and ``remove_exist`` is false.
    SchemaError
        Bad segments (overlaps, duplicates, outside the array) or an unstorable dtype.
    StoreAccessError, RemoteStoreError
        The object store refused or failed a write; nothing is committed.

    Examples
    --------
    >>> import dask.array as da                                           # doctest: +SKIP
    >>> x = da.random.random((10_000, 64), chunks=(2_500, 64))            # doctest: +SKIP
    >>> to_bigarray_sharded(x, "s3://bucket/x.bigarray",                  # doctest: +SKIP
    ...                     segments={f"s{i}": 100 for i in range(100)})
    """
    import dask
    import dask.array as da

    from .core.sharded import plan_sharded_write

    arr = dask_array if isinstance(dask_array, da.Array) else da.from_array(np.asarray(dask_array))
    if arr.ndim == 0:
        raise SchemaError("a 0-d array has no rows to store; give an array with ndim >= 1")
    if any(np.isnan(c) for c in arr.chunks[0]):
        raise SchemaError(
            "the dask array has unknown chunk sizes along axis 0; call "
            "x.compute_chunk_sizes() first"
        )
    plan = plan_sharded_write(
        url,
        arr.shape,
        arr.dtype,
        arr.chunks[0],
        segments,
        variable,
        storage_options,
        remove_exist=remove_exist,
        dims=dims,
        attrs=attrs,
    )
    if arr.shape[0]:
        sizes = tuple(b - a for a, b in zip(plan.bounds[:-1], plan.bounds[1:]))
        arr = arr.rechunk({0: sizes, **{i: -1 for i in range(1, arr.ndim)}})
    job = _ShardedJob(arr, plan)
    if not compute:
        return dask.delayed(_run_sharded, pure=False)(job, True)
    return _run_sharded(job, False)


class _ShardedJob:
    """A sharded write to run (a plain class: ``dask.delayed`` passes it as it is)."""

    def __init__(self, arr: Any, plan: Any) -> None:
        self.arr, self.plan = arr, plan


def _run_sharded(job: _ShardedJob, nested: bool) -> Any:
    """Run the shard tasks of ``job``, then commit; on any failure delete what was written.

    Run by the client (``compute=True``) or as the one task of the ``compute=False``
    Delayed. Dask never runs a task whose input failed, so a commit task downstream of the
    shard tasks could not clean up after a failed block; this task waits for the shard
    tasks itself and sees every failure.
    """
    import dask

    from .core.sharded import cleanup_session, commit_shards, write_shard

    plan = job.plan.renewed()  # a Delayed computed twice: two runs, two sessions
    blocks = job.arr.to_delayed().reshape(-1) if plan.nshards else []
    light = plan.for_tasks()
    writes = [dask.delayed(write_shard, pure=False)(blk, light, i) for i, blk in enumerate(blocks)]
    try:
        results = _compute_here(writes, nested)
    except BaseException:
        cleanup_session(plan)
        raise
    return commit_shards(results, plan)


def _write_block(
    block: np.ndarray,
    target: BigArrayTarget,
    starts: np.ndarray,
    block_id: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Task body of :func:`to_bigarray`: write one block of whole rows at its position."""
    assert block_id is not None
    start = int(starts[block_id[0]])
    target[start : start + len(block)] = block
    return np.full((1,) * block.ndim, len(block), np.int64)
