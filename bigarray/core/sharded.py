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
so far are deleted (:func:`cleanup_session`). Shard boundaries fall on segment
boundaries (the array is rechunked first), so no segment and no dask chunk read later
ever spans two shards.

Checksums: every task sums its shard's blocks (CRC-32C over blocks of
``block_rows_for(row_nbytes)`` rows, counted from the shard's first row) from the bytes it
holds in memory and returns the sums with its shard; the commit records them shard after
shard, with the sums of the index files it wrote, in the variable's ``checksums``
(:mod:`bigarray.core.integrity`), so ``bigarray verify`` checks a sharded store like any.

This module is the storage part: it imports no dask. The dask graph that calls
:func:`write_shard` per block and :func:`commit_shards` at the end is built by
:func:`bigarray.dask_backend.to_bigarray_sharded`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import (
    NotAStoreError,
    SchemaError,
    StoreCorruptedError,
    StoreExistsError,
)
from .crash import remote_crash_point
from .filesystem import FileAccess, check_local_options, is_local, local_path, translate_error
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
    manifest_objects,
    normalize_dtype,
    npy_header,
)
from .index import SegmentArrays, index_arrays, merge
from .integrity import DataChecksums, block_rows_for, extend_crc, layout_crc, spec_crc

__all__ = [
    "SHARD_DIR",
    "ShardedWrite",
    "cleanup_session",
    "commit_shards",
    "plan_sharded_write",
    "shard_bounds",
    "write_index_files",
    "write_shard",
]

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


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, eq=False)
class ShardedWrite:
    """Everything a sharded write needs besides the data: where, what, and its session.

    Built by :func:`plan_sharded_write` (which only reads the target); every shard task
    carries its :meth:`for_tasks` copy, the commit the whole plan. ``bounds`` are the shard boundaries (rows); shard ``i`` holds rows
    ``[bounds[i], bounds[i + 1])`` and is written as :meth:`shard_path` ``(i)``.
    """

    access: FileAccess
    variable: str
    dtype: str
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    attrs: dict[str, Any]
    seg: SegmentArrays | None
    overwrite: bool
    session: str
    bounds: tuple[int, ...]

    @property
    def prefix(self) -> str:
        """``<variable>-<session>``: the stem of every shard object of this write."""
        stem = self.variable if _SAFE_NAME.match(self.variable) else "var"
        return f"{stem}-{self.session}"

    @property
    def row_nbytes(self) -> int:
        return np.dtype(self.dtype).itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    @property
    def nshards(self) -> int:
        return max(0, len(self.bounds) - 1)

    def shard_path(self, i: int) -> str:
        return f"{SHARD_DIR}/{self.prefix}-{i:06d}.npy"

    def for_tasks(self) -> ShardedWrite:
        """This plan without the segment index and attributes, which only the commit needs:
        what every :func:`write_shard` task carries (a table of a million names must not
        travel with each task)."""
        return dataclasses.replace(self, seg=None, attrs={})

    def renewed(self) -> ShardedWrite:
        """The same write under a new session: each run of a write (a ``compute=False``
        Delayed computed twice) names its own objects, so a failed run cleans up only its
        own and never the objects of a run that committed."""
        return dataclasses.replace(self, session=uuid.uuid4().hex[:12])


def plan_sharded_write(
    url: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    chunk_rows: Sequence[int],
    segments: Any = None,
    variable: str = "data",
    storage_options: dict[str, Any] | None = None,
    *,
    remove_exist: bool = False,
    dims: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> ShardedWrite:
    """Check the arguments of a sharded write and plan it; nothing at ``url`` is written.

    ``chunk_rows`` are the rows of the blocks the data comes in; the shards follow them,
    moved so that no segment is cut (:func:`shard_bounds`). The target is only *read*
    here (a write that may never run must leave it as it is); an existing store is replaced
    at the commit, never deleted first.

    Raises
    ------
    SchemaError
        Bad segments, dims, variable name or dtype.
    StoreExistsError
        A store is at ``url`` and ``remove_exist`` is false.
    """
    if is_local(url):
        check_local_options(url, storage_options)
        url = local_path(url)
    access = FileAccess(url, storage_options)
    shape_t = tuple(int(s) for s in shape)
    if not shape_t:
        raise SchemaError("a 0-d array has no rows to store; give an array with ndim >= 1")
    dt = normalize_dtype(dtype)
    rows = shape_t[0]
    dims_t = (
        tuple(dims)
        if dims is not None
        else (DEFAULT_ROW_DIM, *[f"dim_{i}" for i in range(1, len(shape_t))])
    )
    if len(dims_t) != len(shape_t) or not all(isinstance(d, str) for d in dims_t):
        raise SchemaError(f"dims {dims!r} must name the {len(shape_t)} dimensions as strings")
    if not isinstance(variable, str) or not variable:
        raise SchemaError(f"variable name {variable!r} must be a non-empty str")
    seg = segment_arrays(segments, rows)
    if access.exists(MANIFEST_NAME):
        if not remove_exist:
            raise StoreExistsError(
                f"a bigarray store already exists at {access.url!r}; pass remove_exist=True "
                "to replace it, or write to another URL"
            )
    else:
        _refuse_foreign_objects(access)
    bounds = shard_bounds(chunk_rows, seg) if rows else [0]
    return ShardedWrite(
        access,
        variable,
        dt.str,
        shape_t,
        dims_t,
        dict(attrs or {}),
        seg,
        bool(remove_exist),
        uuid.uuid4().hex[:12],
        tuple(bounds),
    )


#: What a store (or a failed write of one) keeps directly under its prefix
_STORE_ENTRIES = frozenset({MANIFEST_NAME, "shards", "index"})


def _refuse_foreign_objects(access: FileAccess) -> None:
    """A prefix holding objects that no bigarray write put there is someone else's: a new
    store there is refused (as a local directory that is not a store is), with or without
    ``remove_exist``, which replaces stores only."""
    if access.local or not access.listable:
        return  # local destinations are checked by prepare_destination
    try:
        entries = access.fs.ls(access.root, detail=False)
    except FileNotFoundError:
        return
    except Exception as exc:
        raise translate_error(exc, access.url, action="list") from exc
    foreign = sorted(
        e
        for e in (str(x).rstrip("/").rsplit("/", 1)[-1] for x in entries)
        if e not in _STORE_ENTRIES
    )
    if foreign:
        shown = ", ".join(repr(f) for f in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise NotAStoreError(
            f"{access.url!r} holds objects that are not a bigarray store ({shown}) and no "
            "manifest.json; refusing to write a store among them (remove_exist=True replaces "
            "stores only). Write to another prefix, or remove those objects yourself."
        )


# --------------------------------------------------------------------------- tasks


def shard_block_sums(data: Any, rows: int, row_nbytes: int) -> list[int]:
    """CRC-32C of each block of ``block_rows_for(row_nbytes)`` rows of ``data`` (the C-order
    bytes of ``rows`` rows), from the shard's first row: the per-shard block grid that
    :mod:`bigarray.core.integrity` describes."""
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    br = block_rows_for(row_nbytes)
    # by rows, not bytes: rows of zero bytes still make blocks (of empty sums)
    return [
        int(extend_crc(0, raw[a * row_nbytes : (a + br) * row_nbytes])) for a in range(0, rows, br)
    ]


def write_shard(block: Any, plan: ShardedWrite, i: int) -> dict[str, Any]:
    """Task body: write shard ``i`` of ``plan`` (one block of rows) as a standard ``.npy``
    object in one call; return its description with the CRC-32C of its blocks (summed
    from the bytes in memory, before the write: no second read)."""
    access = plan.access
    rel = plan.shard_path(i)
    start, stop = plan.bounds[i], plan.bounds[i + 1]
    dt = np.dtype(plan.dtype)
    arr = np.ascontiguousarray(np.asarray(block).astype(dt, copy=False))
    if arr.shape[0] != stop - start:
        raise SchemaError(
            f"block for rows [{start}, {stop}) of {access.url!r} has {arr.shape[0]} rows; the "
            "dask array's chunks do not match its shape (compute its chunk sizes first)"
        )
    crcs = shard_block_sums(arr, stop - start, plan.row_nbytes)
    header = npy_header(dt, arr.shape)
    nbytes = access.pipe(rel, [header, as_bytes(arr)])
    # A sibling task may have failed while this one ran: the client then marks the session
    # aborted *before* listing and deleting its shards, so a shard finished after that
    # listing sees the mark here and removes itself. Nothing of a failed write survives.
    access.invalidate()
    if access.exists(_abort_mark(rel)):
        access.remove([rel])
        raise RuntimeError(f"write session of {rel!r} was aborted by a failed sibling task")
    return {
        "path": rel,
        "offset": len(header),
        "start": start,
        "stop": stop,
        "nbytes": nbytes,
        "crcs": crcs,
    }


def _abort_mark(shard_rel: str) -> str:
    """``shards/<prefix>.aborted`` for a shard ``shards/<prefix>-000007.npy``."""
    return shard_rel.rsplit("-", 1)[0] + ".aborted"


def write_index_files(
    access: FileAccess,
    generation: int,
    seg: SegmentArrays,
    tag: str = "",
    crcs: dict[str, int] | None = None,
) -> IndexFiles:
    """Write one generation of the segment index as ``.npy`` objects (same roles and
    layout as :func:`bigarray.core.index.write_index`, through fsspec).

    ``tag`` (the write session) goes into every name, so the index of a commit never
    replaces an object another commit (a racing writer, the version being replaced) names.
    ``crcs``, when given, receives the CRC-32C of each file's bytes, by role.
    """
    arrays = index_arrays(seg)
    files, offsets = {}, {}
    stem = f"g{generation}-{tag}" if tag else f"g{generation}"
    for role in INDEX_ROLES:
        arr = np.ascontiguousarray(arrays[role])
        header = npy_header(arr.dtype, arr.shape)
        rel = f"{INDEX_DIR}/{stem}-{role}.npy"
        body = as_bytes(arr)
        access.pipe(rel, [header, body])
        if crcs is not None:
            crcs[role] = int(extend_crc(extend_crc(0, header), bytes(body)))
        files[role], offsets[role] = rel, len(header)
    return IndexFiles(seg.count, generation, len(arrays["table"]), files, offsets)


# --------------------------------------------------------------------------- the commit


def commit_shards(results: Sequence[dict[str, Any]], plan: ShardedWrite) -> Manifest:
    """Check every shard, write the index, then the manifest (the commit); run by the
    client (or the final task) once every :func:`write_shard` returned.

    The manifest goes last, with a conditional ``PUT`` (see :mod:`bigarray.core.commit`):
    if another writer committed meanwhile, this write is not committed, everything it
    wrote is deleted and the error says so. A replaced version's objects are deleted after
    the new manifest landed, never before. On any failure the session's objects are
    deleted (:func:`cleanup_session`).
    """
    index_written: list[str] = []
    try:
        return _check_and_commit(results, plan, index_written)
    except BaseException:
        cleanup_session(plan, extra=index_written)
        raise


def _check_and_commit(
    results: Sequence[dict[str, Any]], plan: ShardedWrite, index_written: list[str]
) -> Manifest:
    from .commit import put_manifest, remove_replaced, snapshot

    access = plan.access
    dt = np.dtype(plan.dtype)
    rows = plan.shape[0]
    row_nbytes = plan.row_nbytes
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
    shards = tuple(Shard(r["path"], r["offset"], r["start"], r["stop"]) for r in results)
    blocks = shard_sums_of(results, shards, block_rows_for(row_nbytes))
    base = snapshot(access)
    old = base.manifest
    if old is not None and not plan.overwrite:
        raise StoreExistsError(
            f"another writer committed a store at {access.url!r} while this one was writing; "
            "nothing was committed and this write's objects were removed. Write elsewhere, "
            "or pass remove_exist=True."
        )
    generation = old.generation + 1 if old is not None else 1
    index = None
    index_sums: dict[str, Any] | None = None
    if plan.seg is not None:
        crcs: dict[str, int] = {}
        index = write_index_files(access, generation, plan.seg, plan.session, crcs)
        index_written.extend(index.files.values())
        index_sums = {"generation": generation, "spec": spec_crc(index), "files": crcs}
    var = Variable(plan.variable, dt, plan.shape, plan.dims, shards, dict(plan.attrs))
    var = dataclasses.replace(var, checksums=sharded_checksums(var, blocks, index_sums))
    manifest = Manifest(generation, {plan.variable: var}, index, plan.dims[0])
    remote_crash_point("remote-before-manifest")
    put_manifest(access, manifest.dumps(), base)
    index_written.clear()  # committed: nothing of it may be cleaned up now
    if old is not None:
        remove_replaced(access, old, manifest)
    return manifest


def shard_sums_of(
    results: Sequence[dict[str, Any]], shards: Sequence[Shard], block_rows: int
) -> np.ndarray:
    """The block sums the tasks returned, shard after shard (checked against the grid)."""
    parts = []
    for r, s in zip(results, shards, strict=True):
        crcs = r.get("crcs")
        want = -(-(s.stop - s.start) // block_rows)
        if not isinstance(crcs, list) or len(crcs) != want:
            raise StoreCorruptedError(
                f"shard {s.path!r} came back with {len(crcs) if isinstance(crcs, list) else 0} "
                f"block checksums, not {want}; nothing was committed"
            )
        parts.append(np.asarray(crcs, np.uint32))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


def sharded_checksums(
    var: Variable, blocks: np.ndarray, index: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest ``checksums`` object of a variable written shard by shard."""
    return DataChecksums(
        block_rows_for(var.row_nbytes), var.rows, layout_crc(var), blocks, index
    ).to_json()


def cleanup_session(plan: ShardedWrite, extra: Sequence[str] = ()) -> None:
    """Delete the objects of a write session that will never be committed (best effort).

    The abort mark goes first (see :func:`write_shard`), so that a task of this session
    still running when the error reached the client deletes its own shard. The listing is
    repeated a few times to catch tasks finishing right now; then the mark goes too, so a
    URL where only a failed write ran reads as "not found", not as a damaged store.
    """
    access, prefix = plan.access, plan.prefix
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
                # never an object a committed manifest names (whoever committed it)
                named = {access.full(r) for r in _committed_objects(access)}
                found = [f for f in found if f not in named]
            if found:
                access.fs.rm(list(found), **deadline)
            elif attempt:
                break
        time.sleep(0.25)
    with contextlib.suppress(Exception):
        access.remove([mark])
    if access.local:  # the directories the write made, when nothing else is in them
        for rel in (SHARD_DIR, INDEX_DIR, ""):
            with contextlib.suppress(OSError):
                os.rmdir(access.full(rel))


def _committed_objects(access: FileAccess) -> set[str]:
    """The objects the store's current manifest names (none when it has none)."""
    from .commit import snapshot

    return manifest_objects(snapshot(access).manifest)
