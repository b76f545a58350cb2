"""Sharded writes: many writers, no shared file, one commit (object stores, any fsspec URL).

Object stores take no partial writes and no appends, and workers of a cluster share no
disk, so :class:`bigarray.core.writer.StoreWriter` (``pwrite`` into one data file under a
lock) cannot work there. Here every dask task writes its block as its own **shard**
object, a standard ``.npy`` file (``numpy.load`` reads it), in one ``PUT``::

    store.bigarray/
      shards/data-<session>-000000.npy     rows [0, 5120) of variable "data"
      shards/data-<session>-000001.npy     rows [5120, 9800)
      index/g1-<session>-bounds.npy ...    the segment index (same files as a local store)
      manifest.json                        written last, conditionally: the commit

The client gathers every task's shard description, checks that they tile the rows and
that every object has the size it should, writes the index files and finally the
manifest, with a conditional ``PUT`` (:mod:`bigarray.core.commit`): two writers racing
on one URL never mix (every object name carries its session), and exactly one of them
commits where the store supports conditional writes (S3). A failed task (or a failed
check, or a lost race) means no manifest: nothing is committed and the objects written
so far are deleted (best effort; with ``compute=False`` a failed *block* never reaches
this code, and its sibling shards stay until removed by hand). Shard boundaries fall on segment
boundaries (the array is rechunked first), so no segment and no dask chunk read later
ever spans two shards.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import (
    SchemaError,
    StoreCorruptedError,
    StoreExistsError,
)
from .crash import remote_crash_point
from .filesystem import FileAccess, check_local_options, is_local, local_path
from .format import (
    DEFAULT_ROW_DIM,
    INDEX_DIR,
    INDEX_ROLES,
    MANIFEST_NAME,
    IndexFiles,
    Manifest,
    Shard,
    Variable,
    as_bytes,
    normalize_dtype,
    npy_header,
)
from .index import SegmentArrays, index_arrays, merge

__all__ = ["SHARD_DIR", "shard_bounds", "to_bigarray_sharded", "write_index_files"]

SHARD_DIR = "shards"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


# --------------------------------------------------------------------------- planning


def segment_arrays(segments: Any, rows: int) -> SegmentArrays | None:
    """Normalise the ``segments`` argument into sorted, checked :class:`SegmentArrays`.

    Accepted forms (rows, half-open):

    - ``None``: no segment index (an unnamed store);
    - a mapping ``name -> (start, stop)`` (a :class:`~bigarray.core.index.SegmentIndex`,
      ``PointerArray.indices``, a dict);
    - a mapping ``name -> length``: segments back to back from row 0, in mapping order;
    - a sequence of ``(name, length)`` or ``(name, start, stop)`` tuples.
    """
    if segments is None:
        return None
    names: list[str] = []
    starts: list[int] = []
    stops: list[int] = []
    items: Any
    if isinstance(segments, Mapping):
        items = segments.items()
    elif isinstance(segments, Sequence) and not isinstance(segments, (str, bytes)):
        items = segments
    else:
        raise SchemaError(
            f"segments={type(segments).__name__} is not understood; give a mapping "
            "{name: (start, stop)} or {name: length}, or a list of (name, length) or "
            "(name, start, stop) tuples"
        )
    pos = 0
    for item in items:
        if isinstance(segments, Mapping):
            name, spec = item
        else:
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise SchemaError(
                    f"segment entry {item!r} must be (name, length) or (name, start, stop)"
                )
            name, spec = item[0], (item[1] if len(item) == 2 else tuple(item[1:]))
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            a, b = pos, pos + int(spec)
        elif isinstance(spec, (tuple, list, np.ndarray)) and len(spec) == 2:
            a, b = int(spec[0]), int(spec[1])
        else:
            raise SchemaError(
                f"segment {name!r}: {spec!r} is neither a length nor a (start, stop) pair"
            )
        if a < 0 or b < a:
            raise SchemaError(f"segment {name!r} has rows [{a}, {b}); need 0 <= start <= stop")
        if b > rows:
            raise SchemaError(
                f"segment {name!r} ends at row {b} but the array has {rows} rows; the "
                "segments must lie inside the array"
            )
        names.append(name)
        starts.append(a)
        stops.append(b)
        pos = b
    seg = SegmentArrays.from_names(names, np.asarray(starts, np.int64), np.asarray(stops, np.int64))
    return merge(SegmentArrays.empty(), seg)


def shard_bounds(chunk_rows: Sequence[int], seg: SegmentArrays | None) -> list[int]:
    """Row boundaries of the shards: the chunk boundaries, moved so no segment is cut.

    A boundary that falls strictly inside a segment moves down to that segment's start
    (so a segment larger than a chunk becomes one larger shard). Returns the sorted
    boundaries ``[0, ..., rows]`` (empty shards removed).
    """
    cuts = np.cumsum(np.asarray(chunk_rows, np.int64))
    rows = int(cuts[-1]) if len(cuts) else 0
    inner = cuts[:-1]
    if seg is not None and seg.count and len(inner):
        starts, stops = seg.bounds[:, 0], seg.bounds[:, 1]
        i = np.searchsorted(starts, inner, side="right") - 1
        ok = i >= 0
        j = np.where(ok, i, 0)
        inside = ok & (starts[j] < inner) & (stops[j] > inner)
        inner = np.where(inside, starts[j], inner)
    bounds = np.unique(np.concatenate([[0], inner, [rows]]))
    return [int(b) for b in bounds]


# --------------------------------------------------------------------------- tasks


def _write_shard(
    block: Any, access: FileAccess, rel: str, start: int, stop: int, dtype: str
) -> dict[str, Any]:
    """Write one block as a standard ``.npy`` object in one call; describe it."""
    dt = np.dtype(dtype)
    arr = np.ascontiguousarray(np.asarray(block).astype(dt, copy=False))
    if arr.shape[0] != stop - start:
        raise SchemaError(
            f"block for rows [{start}, {stop}) of {access.url!r} has {arr.shape[0]} rows; the "
            "dask array's chunks do not match its shape (compute its chunk sizes first)"
        )
    header = npy_header(dt, arr.shape)
    nbytes = access.pipe(rel, [header, as_bytes(arr)])
    # A sibling task may have failed while this one ran: the client then marks the session
    # aborted *before* listing and deleting its shards, so a shard finished after that
    # listing sees the mark here and removes itself. Nothing of a failed write survives.
    access.invalidate()
    if access.exists(_abort_mark(rel)):
        access.remove([rel])
        raise RuntimeError(f"write session of {rel!r} was aborted by a failed sibling task")
    return {"path": rel, "offset": len(header), "start": start, "stop": stop, "nbytes": nbytes}


def _abort_mark(shard_rel: str) -> str:
    """``shards/<prefix>.aborted`` for a shard ``shards/<prefix>-000007.npy``."""
    return shard_rel.rsplit("-", 1)[0] + ".aborted"


def write_index_files(
    access: FileAccess, generation: int, seg: SegmentArrays, tag: str = ""
) -> IndexFiles:
    """Write one generation of the segment index as ``.npy`` objects (same roles and
    layout as :func:`bigarray.core.index.write_index`, through fsspec).

    ``tag`` (the write session) goes into every name, so the index of a commit never
    replaces an object another commit (a racing writer, the version being replaced) names.
    """
    arrays = index_arrays(seg)
    files, offsets = {}, {}
    stem = f"g{generation}-{tag}" if tag else f"g{generation}"
    for role in INDEX_ROLES:
        arr = arrays[role]
        header = npy_header(arr.dtype, arr.shape)
        rel = f"{INDEX_DIR}/{stem}-{role}.npy"
        access.pipe(rel, [header, as_bytes(arr)])
        files[role], offsets[role] = rel, len(header)
    return IndexFiles(seg.count, generation, len(arrays["table"]), files, offsets)


def _commit(
    results: Sequence[dict[str, Any]],
    access: FileAccess,
    variable: str,
    dtype: str,
    shape: tuple[int, ...],
    dims: tuple[str, ...],
    attrs: dict[str, Any],
    seg: SegmentArrays | None,
    overwrite: bool,
    session: str = "",
    prefix: str = "",
) -> Manifest:
    """Check every shard, write the index, then the manifest (the commit).

    The manifest goes last, with a conditional ``PUT`` (see :mod:`bigarray.core.commit`):
    if another writer committed meanwhile, this write is not committed, everything it
    wrote is deleted and the error says so. A replaced version's objects are deleted after
    the new manifest landed, never before.
    """
    index_written: list[str] = []
    try:
        return _check_and_commit(
            results,
            access,
            variable,
            dtype,
            shape,
            dims,
            attrs,
            seg,
            overwrite,
            session,
            index_written,
        )
    except BaseException:
        if prefix:
            _cleanup(access, prefix, extra=index_written)
        raise


def _check_and_commit(
    results: Sequence[dict[str, Any]],
    access: FileAccess,
    variable: str,
    dtype: str,
    shape: tuple[int, ...],
    dims: tuple[str, ...],
    attrs: dict[str, Any],
    seg: SegmentArrays | None,
    overwrite: bool,
    session: str,
    index_written: list[str],
) -> Manifest:
    from .commit import put_manifest, remove_replaced, snapshot

    dt = np.dtype(dtype)
    rows = shape[0]
    row_nbytes = dt.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    results = sorted(results, key=lambda r: r["start"])
    pos = 0
    for r in results:
        if r["start"] != pos:
            raise StoreCorruptedError(
                f"{access.url!r}: the written shards do not tile the rows (a gap or overlap at row "
                f"{pos}); nothing was committed"
            )
        pos = r["stop"]
    if pos != rows:
        raise StoreCorruptedError(
            f"{access.url!r}: the written shards cover {pos} rows, not {rows}; nothing was committed"
        )
    # Verify every object is there with its full size before anything can point at it.
    sizes = access.sizes([r["path"] for r in results])
    for r in results:
        need = r["offset"] + (r["stop"] - r["start"]) * row_nbytes
        got = sizes.get(r["path"])
        if got is None or 0 <= got < need:
            raise StoreCorruptedError(
                f"shard {access.where(r['path'])!r} holds {got} bytes after its write but needs "
                f"{need:,}; the write was lost or cut short. Nothing was committed: run the "
                "write again."
            )
    base = snapshot(access)
    old = base.manifest
    if old is not None and not overwrite:
        raise StoreExistsError(
            f"another writer committed a store at {access.url!r} while this one was writing; "
            "nothing was committed and this write's objects were removed. Write elsewhere, "
            "or pass remove_exist=True."
        )
    generation = old.generation + 1 if old is not None else 1
    index = None
    if seg is not None:
        index = write_index_files(access, generation, seg, session)
        index_written.extend(index.files.values())
    shards = tuple(Shard(r["path"], r["offset"], r["start"], r["stop"]) for r in results)
    var = Variable(variable, dt, shape, dims, shards, dict(attrs))
    manifest = Manifest(generation, {variable: var}, index, dims[0])
    remote_crash_point("remote-before-manifest")
    put_manifest(access, manifest.dumps(), base)
    index_written.clear()  # committed: nothing of it may be cleaned up now
    if old is not None:
        remove_replaced(access, old, manifest)
    return manifest


def _cleanup(access: FileAccess, prefix: str, extra: Sequence[str] = ()) -> None:
    """Delete the objects of a write session that will never be committed (best effort).

    The abort mark goes first (see :func:`_write_shard`), so that a task of this session
    still running when the error reached the client deletes its own shard. The listing is
    repeated a few times to catch tasks finishing right now; then the mark goes too, so a
    URL where only a failed write ran reads as "not found", not as a damaged store.
    """
    mark = f"{SHARD_DIR}/{prefix}.aborted"
    with contextlib.suppress(Exception):
        access.pipe(mark, b"")
    if extra:
        with contextlib.suppress(Exception):
            access.remove(list(extra))
    for attempt in range(4):
        with contextlib.suppress(Exception):
            access.invalidate()
            deadline = access.write_deadline(0)  # a hung server must not hang the cleanup
            found = access.fs.glob(access.full(f"{SHARD_DIR}/{prefix}-*.npy"), **deadline)
            if found:
                access.fs.rm(list(found), **deadline)
            elif attempt:
                break
        time.sleep(0.25)
    with contextlib.suppress(Exception):
        access.remove([mark])


# --------------------------------------------------------------------------- entry point


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

    Every dask task writes its block of rows as its own ``.npy`` object (no two tasks
    touch one object, so workers need nothing but the object store in common); the client
    then writes the segment index and, last, the manifest. Works on every dask scheduler
    (threads, processes, ``dask.distributed``) and every fsspec filesystem whose objects
    the workers can reach (``memory://`` is per-process: use threads there).

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
        ``False`` return a ``dask.delayed`` object whose computation writes and commits
        (nothing at ``url`` is touched before it runs). If a *block* of that computation
        fails, the commit task never runs: the shards its sibling tasks wrote stay,
        named by no manifest (never read), until deleted by hand; with ``compute=True``
        they are deleted here.
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

    if is_local(url):
        check_local_options(url, storage_options)
        url = local_path(url)
    access = FileAccess(url, storage_options)
    arr = dask_array if isinstance(dask_array, da.Array) else da.from_array(np.asarray(dask_array))
    if arr.ndim == 0:
        raise SchemaError("a 0-d array has no rows to store; give an array with ndim >= 1")
    if any(np.isnan(c) for c in arr.chunks[0]):
        raise SchemaError(
            "the dask array has unknown chunk sizes along axis 0; call "
            "x.compute_chunk_sizes() first"
        )
    dt = normalize_dtype(arr.dtype)
    rows = int(arr.shape[0])
    dims_t = (
        tuple(dims)
        if dims is not None
        else (DEFAULT_ROW_DIM, *[f"dim_{i}" for i in range(1, arr.ndim)])
    )
    if len(dims_t) != arr.ndim or not all(isinstance(d, str) for d in dims_t):
        raise SchemaError(f"dims {dims!r} must name the {arr.ndim} dimensions as strings")
    if not isinstance(variable, str) or not variable:
        raise SchemaError(f"variable name {variable!r} must be a non-empty str")
    seg = segment_arrays(segments, rows)

    # Only read here: nothing at the URL is touched before the write runs (compute=False
    # may never run), and an existing store is replaced at the commit, never deleted first.
    if not remove_exist and access.exists(MANIFEST_NAME):
        raise StoreExistsError(
            f"a bigarray store already exists at {access.url!r}; pass remove_exist=True to "
            "replace it, or write to another URL"
        )

    bounds = shard_bounds(arr.chunks[0], seg) if rows else [0]
    sizes = tuple(b - a for a, b in itertools.pairwise(bounds))
    if rows:
        arr = arr.rechunk({0: sizes, **{i: -1 for i in range(1, arr.ndim)}})
    session = uuid.uuid4().hex[:12]
    stem = variable if _SAFE_NAME.match(variable) else "var"
    prefix = f"{stem}-{session}"
    blocks = arr.to_delayed().reshape(-1) if rows else []
    writes = [
        dask.delayed(_write_shard, pure=False)(
            blk, access, f"{SHARD_DIR}/{prefix}-{i:06d}.npy", bounds[i], bounds[i + 1], dt.str
        )
        for i, blk in enumerate(blocks)
    ]
    args = (access, variable, dt.str, (rows, *arr.shape[1:]), dims_t, dict(attrs or {}), seg)
    if not compute:
        return dask.delayed(_commit, pure=False)(writes, *args, remove_exist, session, prefix)
    try:
        results = list(dask.compute(*writes)) if writes else []
    except BaseException:
        _cleanup(access, prefix)
        raise
    return _commit(results, *args, remove_exist, session, prefix)
