"""The segment index: ``name -> [start, stop)`` rows, memory-mapped, in immutable runs.

One **run** is five standard ``.npy`` arrays, all in row order (sorted by ``start``), so a
run doubles as a chunk plan for dask:

``names``         uint8, the UTF-8 bytes of every name, concatenated
``name_offsets``  int64 (n + 1), where each name starts in ``names``
``bounds``        int64 (n, 2), ``[start, stop)`` rows of each segment
``hashes``        uint32 (n), ``zlib.crc32`` of each name (kept so merges never rehash)
``table``         int64 (2**k >= 2 n), open addressing with linear probing; -1 is empty

The index is one run or several (the manifest's ``segments`` entry lists them, oldest
first, under ``runs``; a one-run index keeps the entry form of the first format version).
Every name lives in exactly one run: a commit probes each run's table for its new names
(vectorised, no committed name is decoded) and binary-searches each run's bounds for its
rows, refuses duplicates and overlaps, then writes **one** new run holding its segments
merged with the newest runs while the next older run holds at most ``MERGE_FACTOR`` times
what was gathered. Runs therefore shrink by more than that factor from oldest to newest:
about ``log4(N / c) + 1`` runs for N segments committed c at a time, and each segment is
rewritten O(log N) times in all. Files of a run never change once written; a run is named
by the generation of the commit that wrote it (``index/g<generation>-<role>.npy``), the
same names a single-generation index always had.

Why crc32 and not a 64-bit hash: the table's slot is the hash modulo a power of two of at
least twice the run's size, so 32 bits spread a run of up to 2**31 names evenly (a longer
run would need a wider hash, recorded in the run's ``hash`` field); a hash match is always
confirmed by comparing the name's bytes, so collisions cost one comparison, never a wrong
answer, and keeping crc32 keeps every store written before runs existed readable as is.

Opening maps the files and builds nothing: a lookup hashes the name, probes the largest
run's table first (one or two slots at a load factor of 1/2), then the others, comparing
the bytes of one name per candidate; the cost of open and of a lookup does not depend on
the number of segments. Code that wants every segment in row order (``arrays``,
``bounds``: dask chunk plans, xarray tables, ``verify``) gets the run's own memory map when
there is one run, and a merge made once on first use otherwise (a concatenation when the
runs follow each other in rows, the usual case of appends). ``bigarray compact`` merges
all runs into one.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Callable, ItemsView, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import (
    DuplicateSegmentError,
    OverlapError,
    SchemaError,
    SegmentNotFoundError,
    StoreCorruptedError,
)
from .crash import crash_point
from .format import INDEX_DIR, INDEX_ROLES, IndexFiles, byte_view, index_of_runs

_CHECK_OFFSETS_MAX = 1 << 16  # runs up to this size have every name offset checked at open

_ROLE_DTYPES: dict[str, np.dtype] = {
    "names": np.dtype(np.uint8),
    "name_offsets": np.dtype("<i8"),
    "bounds": np.dtype("<i8"),
    "hashes": np.dtype("<u4"),
    "table": np.dtype("<i8"),
}


@dataclass
class SegmentArrays:
    """The index as plain numpy arrays (row order), before it is written or after it is read."""

    names: np.ndarray  # uint8
    name_offsets: np.ndarray  # int64 (n + 1)
    bounds: np.ndarray  # int64 (n, 2)
    hashes: np.ndarray  # uint32 (n)

    @property
    def count(self) -> int:
        return len(self.bounds)

    @classmethod
    def empty(cls) -> SegmentArrays:
        return cls(
            np.zeros(0, np.uint8),
            np.zeros(1, np.int64),
            np.zeros((0, 2), np.int64),
            np.zeros(0, np.uint32),
        )

    @classmethod
    def from_names(
        cls, names: Sequence[str], starts: np.ndarray, stops: np.ndarray
    ) -> SegmentArrays:
        """Encode ``names`` (not yet sorted; :func:`merge` sorts)."""
        bad = [n for n in names if type(n) is not str and not isinstance(n, str)]
        if bad:
            raise SchemaError(
                f"segment name {bad[0]!r} has type {type(bad[0]).__name__}; names must be str "
                "(use str(name) or f'{name}')"
            )
        encoded = [n.encode("utf-8", "surrogatepass") for n in names]
        return cls.from_encoded(encoded, starts, stops)

    @classmethod
    def from_encoded(
        cls, encoded: Sequence[bytes], starts: np.ndarray, stops: np.ndarray
    ) -> SegmentArrays:
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        names = np.frombuffer(b"".join(encoded), np.uint8)
        hashes = np.fromiter(map(zlib.crc32, encoded), np.uint32, len(encoded))
        bounds = np.stack([np.asarray(starts, np.int64), np.asarray(stops, np.int64)], axis=1)
        return cls(names, offsets, bounds.reshape(-1, 2), hashes)

    def name(self, i: int) -> str:
        a, b = int(self.name_offsets[i]), int(self.name_offsets[i + 1])
        return _decode_name(self.names[a:b].tobytes(), i)

    def take(self, order: np.ndarray) -> SegmentArrays:
        """Reorder (or subset) the segments, gathering the variable-length names vectorised."""
        order = np.asarray(order, np.int64)
        lengths = (self.name_offsets[1:] - self.name_offsets[:-1])[order]
        offsets = np.zeros(len(order) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # index of every output byte: its segment's old start plus its position within the name
        gather = np.repeat(self.name_offsets[:-1][order] - offsets[:-1], lengths)
        gather += np.arange(offsets[-1], dtype=np.int64)
        return SegmentArrays(self.names[gather], offsets, self.bounds[order], self.hashes[order])


def _decode_name(raw: bytes, i: int) -> str:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # only a damaged names file holds bytes no writer encodes
        raise StoreCorruptedError(
            f"segment #{i} has a name that is not UTF-8 ({raw[:40]!r}); the index files were "
            "damaged after the last commit. Run `bigarray verify` on the store for details."
        ) from None


def concat(parts: Sequence[SegmentArrays]) -> SegmentArrays:
    parts = [p for p in parts if p.count] or [SegmentArrays.empty()]
    if len(parts) == 1:
        return parts[0]
    shifts = np.cumsum([0] + [len(p.names) for p in parts[:-1]])
    offsets = np.concatenate(
        [parts[0].name_offsets[:1]] + [p.name_offsets[1:] + s for p, s in zip(parts, shifts)]
    )
    return SegmentArrays(
        np.concatenate([p.names for p in parts]),
        offsets,
        np.concatenate([p.bounds for p in parts]),
        np.concatenate([p.hashes for p in parts]),
    )


def merge(committed: SegmentArrays, new: SegmentArrays, rows_hint: str = "") -> SegmentArrays:
    """Merge new segments into the committed ones; return the result in row order.

    A new segment equal to a committed one (same name, same rows) is dropped, which makes
    commits idempotent: a retried task or a journal replayed after a crash adds nothing.
    The same name with other rows raises :class:`DuplicateSegmentError`; segments sharing
    rows raise :class:`OverlapError`.
    """
    both = concat([committed, new])
    n = both.count
    if n == 0:
        return both
    bounds = both.bounds
    bad = np.flatnonzero(bounds[:, 1] < bounds[:, 0])
    if bad.size:
        i = int(bad[0])
        raise SchemaError(
            f"segment {both.name(i)!r} has stop {bounds[i, 1]} < start {bounds[i, 0]}"
        )
    # Only names whose crc32 collides can be equal: compare those few by their bytes.
    order = np.argsort(both.hashes, kind="stable")
    h = both.hashes[order]
    same = np.flatnonzero(h[1:] == h[:-1])
    drop: set[int] = set()
    if same.size:
        groups: dict[int, list[int]] = {}
        for k in same.tolist():
            groups.setdefault(int(h[k]), []).extend((int(order[k]), int(order[k + 1])))
        for members in groups.values():
            seen: dict[bytes, int] = {}
            for i in sorted(set(members)):
                key = both.names[both.name_offsets[i] : both.name_offsets[i + 1]].tobytes()
                if key not in seen:
                    seen[key] = i
                    continue
                first = seen[key]
                if np.array_equal(bounds[first], bounds[i]):
                    drop.add(i)
                    continue
                raise DuplicateSegmentError(
                    f"segment name {key.decode('utf-8', 'replace')!r} is used twice: rows "
                    f"[{bounds[first, 0]}, {bounds[first, 1]}) and [{bounds[i, 0]}, {bounds[i, 1]})"
                    f"{rows_hint}. Give every segment a unique name."
                )
    keep = np.ones(n, bool)
    if drop:
        keep[list(drop)] = False
    idx = np.flatnonzero(keep)
    kept = bounds[idx]
    # appends arrive in row order: skip the sort and the gather when nothing moves
    sorted_already = bool(
        np.all(
            (kept[1:, 0] > kept[:-1, 0])
            | ((kept[1:, 0] == kept[:-1, 0]) & (kept[1:, 1] >= kept[:-1, 1]))
        )
    )
    if not sorted_already:
        idx = idx[np.lexsort((kept[:, 1], kept[:, 0]))]
    in_order = len(idx) == n and (sorted_already or bool(np.all(idx == np.arange(n))))
    merged = both if in_order else both.take(idx)
    b = merged.bounds
    nonempty = np.flatnonzero(b[:, 1] > b[:, 0])
    if nonempty.size > 1:
        nb = b[nonempty]
        clash = np.flatnonzero(nb[1:, 0] < nb[:-1, 1])
        if clash.size:
            p, q = int(nonempty[int(clash[0])]), int(nonempty[int(clash[0]) + 1])
            raise OverlapError(
                f"segments {merged.name(p)!r} rows [{b[p, 0]}, {b[p, 1]}) and {merged.name(q)!r} "
                f"rows [{b[q, 0]}, {b[q, 1]}) overlap{rows_hint}. Each segment needs its own rows: "
                "write at disjoint start_position values, or append with start_position=None."
            )
    return merged


def build_table(hashes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Open-addressing table (linear probing) of size 2**k >= 2 n, built vectorised in rounds.

    Each round places, for every free slot some pending segment hashes (or has probed) to,
    one of them (a scatter then a check of who stayed: no sort); the others move one slot
    on. Every segment then sits after an unbroken run of taken slots from its home slot,
    which is all a lookup needs. Index arithmetic stays in 32 bits below 2**31 segments.
    """
    n = len(hashes)
    size = table_size(n)
    mask = size - 1
    if out is None:
        table = np.full(size, -1, np.int64)
    else:  # a memory-mapped file: the table of a big run need not sit in anonymous memory
        table = out
        table[:] = -1
    itype = np.int32 if size <= 1 << 31 else np.int64
    pending = np.arange(n, dtype=itype)
    slots = (np.asarray(hashes, np.uint32) & np.uint32(min(mask, 0xFFFFFFFF))).astype(itype)
    while pending.size:
        free = np.flatnonzero(table[slots] == -1)
        cand, cs = pending[free], slots[free]
        table[cs] = cand  # one of several segments aiming at a slot stays there
        stayed = table[cs] == cand
        keep = np.ones(len(pending), bool)
        keep[free[stayed]] = False
        del cand, cs, free, stayed
        pending = pending[keep]
        slots = slots[keep]
        np.add(slots, 1, out=slots)
        np.bitwise_and(slots, mask, out=slots)
    return table


def index_arrays(seg: SegmentArrays) -> dict[str, np.ndarray]:
    """The five arrays of one index generation, by role, in their on-disk dtypes."""
    arrays = {
        "names": seg.names,
        "name_offsets": seg.name_offsets,
        "bounds": seg.bounds,
        "hashes": seg.hashes,
        "table": build_table(seg.hashes),
    }
    return {r: np.ascontiguousarray(a, _ROLE_DTYPES[r]) for r, a in arrays.items()}


def write_index(
    store_dir: str,
    generation: int,
    seg: SegmentArrays,
    *,
    fsync: bool,
    written: Callable[[str], None] | None = None,
) -> IndexFiles:
    """Write one run of the index (``seg``, in row order) as ``index/g<generation>-*.npy``;
    return its manifest entry. ``written(role)`` is called after each file."""
    from .format import save_npy

    os.makedirs(os.path.join(store_dir, INDEX_DIR), exist_ok=True)
    arrays = index_arrays(seg)
    files, offsets = {}, {}
    for role in INDEX_ROLES:
        rel = f"{INDEX_DIR}/g{generation}-{role}.npy"
        offsets[role] = save_npy(os.path.join(store_dir, rel), arrays[role], fsync=fsync)
        files[role] = rel
        crash_point("mid-index")
        if written is not None:
            written(role)
    return IndexFiles(seg.count, generation, len(arrays["table"]), files, offsets)


def table_size(n: int) -> int:
    """Slots of the hash table of a run of ``n`` segments (a power of two >= 2 n, >= 8)."""
    size = 8
    while size < 2 * n:
        size *= 2
    return size


def follow_in_rows(parts: Sequence[SegmentArrays]) -> bool:
    """True when the parts, each in row order, are in row order one after the other, so
    their concatenation is (the usual case: every commit appended after the last)."""
    last = None
    for p in parts:
        if not p.count:
            continue
        first = p.bounds[0]
        if last is not None and not (
            first[0] > last[0] or (first[0] == last[0] and first[1] >= last[1])
        ):
            return False
        last = p.bounds[-1]
    return True


def write_concat(
    store_dir: str,
    generation: int,
    parts: Sequence[SegmentArrays],
    *,
    fsync: bool,
    written: Callable[[str], None] | None = None,
    block: int = 1 << 22,
) -> IndexFiles:
    """Write the concatenation of ``parts`` (see :func:`follow_in_rows`) as one run,
    through memory-mapped output files, ``block`` segments at a time: merging runs of
    hundreds of millions of segments needs no more anonymous memory than the hash table's
    build (two 32-bit arrays of the run's size), not a copy of every run."""

    os.makedirs(os.path.join(store_dir, INDEX_DIR), exist_ok=True)
    n = sum(p.count for p in parts)
    names_len = sum(int(p.name_offsets[-1]) for p in parts)
    rel = {r: f"{INDEX_DIR}/g{generation}-{r}.npy" for r in INDEX_ROLES}
    full = {r: os.path.join(store_dir, rel[r]) for r in INDEX_ROLES}
    shapes = {
        "names": (names_len,),
        "name_offsets": (n + 1,),
        "bounds": (n, 2),
        "hashes": (n,),
        "table": (table_size(n),),
    }
    offsets: dict[str, int] = {}

    def done(role: str, arr: Any) -> None:
        offsets[role] = int(arr.offset)
        if fsync:  # (msync only then: the shared map's pages are the page cache already)
            arr.flush()
            fd = os.open(full[role], os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        crash_point("mid-index")
        if written is not None:
            written(role)

    def create(role: str) -> Any:
        return np.lib.format.open_memmap(full[role], "w+", _ROLE_DTYPES[role], shapes[role])

    for role in ("names", "name_offsets", "bounds", "hashes"):
        out = create(role)
        pos = shift = 0
        for p in parts:
            src = {"names": p.names, "bounds": p.bounds, "hashes": p.hashes}.get(role)
            count = int(p.name_offsets[-1]) if role == "names" else p.count
            for a in range(0, count, block):
                b = min(count, a + block)
                if role == "name_offsets":
                    out[pos + a : pos + b] = np.asarray(p.name_offsets[a:b]) + shift
                else:
                    assert src is not None
                    out[pos + a : pos + b] = src[a:b]
            pos += count
            shift += int(p.name_offsets[-1])
        if role == "name_offsets":
            out[n] = names_len
        done(role, out)
        del out
    hashes = np.load(full["hashes"], mmap_mode="r")
    table = create("table")
    build_table(hashes, out=table)
    del hashes
    done("table", table)
    del table
    return IndexFiles(n, generation, shapes["table"][0], rel, offsets)


def index_nbytes(spec: IndexFiles, role: str, names_len: int | None = None) -> int:
    """Bytes the array of ``role`` must hold (used to check file sizes before mapping)."""
    n = spec.count
    if role == "names":
        return int(names_len or 0)
    return {
        "name_offsets": (n + 1) * 8,
        "bounds": n * 16,
        "hashes": n * 4,
        "table": spec.table_size * 8,
    }[role]


class IndexRun:
    """One immutable run of the segment index, memory-mapped (or in memory).

    Its segments are in row order; a lookup hashes the name, probes the run's table and
    compares the bytes of one name, touching a handful of bytes whatever the run's size.
    """

    __slots__ = (
        "_bounds",
        "_count",
        "_maps",
        "_mask",
        "_names",
        "_noff",
        "_table",
        "arrays",
        "spec",
        "table",
    )

    def __init__(self, buffers: Mapping[str, Any], spec: IndexFiles, where: str) -> None:
        self.spec = spec
        self._maps = [b for b in buffers.values() if isinstance(b, mmap.mmap)]
        self._count = spec.count
        n = spec.count
        try:
            noff = np.frombuffer(
                buffers["name_offsets"], "<i8", n + 1, spec.offsets["name_offsets"]
            )
            names_len = int(noff[-1])
            arrays = SegmentArrays(
                np.frombuffer(buffers["names"], np.uint8, names_len, spec.offsets["names"]),
                noff,
                np.frombuffer(buffers["bounds"], "<i8", 2 * n, spec.offsets["bounds"]).reshape(
                    n, 2
                ),
                np.frombuffer(buffers["hashes"], "<u4", n, spec.offsets["hashes"]),
            )
            table = np.frombuffer(buffers["table"], "<i8", spec.table_size, spec.offsets["table"])
        except (ValueError, TypeError) as exc:
            raise StoreCorruptedError(
                f"{where}: the segment index files are shorter than the manifest says ({exc}); "
                "they were truncated or replaced after the last commit"
            ) from None
        # The full check reads every offset: only for small runs, so that opening a big
        # one stays O(1) (a damaged big run shows in lookups and in `bigarray verify`).
        if int(noff[0]) != 0 or (
            0 < n <= _CHECK_OFFSETS_MAX and bool(np.any(noff[1:] < noff[:-1]))
        ):
            raise StoreCorruptedError(f"{where}: segment name offsets are not increasing")
        self.arrays = arrays
        self.table = table
        # memoryviews give Python ints in ~30 ns, far cheaper than numpy scalar indexing
        self._noff = byte_view(noff).cast("B").cast("q")
        self._bounds = byte_view(arrays.bounds.reshape(-1)).cast("B").cast("q")
        self._table = byte_view(table).cast("B").cast("q")
        self._names = byte_view(arrays.names)
        self._mask = spec.table_size - 1

    @classmethod
    def from_arrays(cls, seg: SegmentArrays) -> IndexRun:
        """An in-memory index (used by writers and by remote stores)."""
        table = build_table(seg.hashes)
        spec = IndexFiles(seg.count, 0, len(table), {}, dict.fromkeys(INDEX_ROLES, 0))
        buffers = {
            "names": np.ascontiguousarray(seg.names, np.uint8),
            "name_offsets": np.ascontiguousarray(seg.name_offsets, "<i8"),
            "bounds": np.ascontiguousarray(seg.bounds, "<i8"),
            "hashes": np.ascontiguousarray(seg.hashes, "<u4"),
            "table": table,
        }
        return cls(buffers, spec, "in-memory index")

    def find(self, name: str) -> int:
        """Position (in row order, within this run) of segment ``name``, or -1."""
        try:
            key = name.encode("utf-8", "surrogatepass")
        except AttributeError:
            return -1
        return self.find_key(key, zlib.crc32(key))

    def find_key(self, key: bytes, h: int) -> int:
        """Position of the segment whose UTF-8 name is ``key`` (crc32 ``h``), or -1."""
        table, noff, names, mask = self._table, self._noff, self._names, self._mask
        slot = h & mask
        n = self._count
        for _ in range(len(table)):
            i = table[slot]
            if i < 0:
                return -1
            if 0 <= i < n and names[noff[i] : noff[i + 1]] == key:
                return i
            slot = (slot + 1) & mask
        return -1

    def __len__(self) -> int:
        return self._count

    def match(self, new: SegmentArrays) -> np.ndarray:
        """Position in this run of each segment of ``new`` (by name), or -1; probes the
        table for all of them at once, in rounds of linear probing."""
        out = np.full(new.count, -1, np.int64)
        if not self._count or not new.count:
            return out
        a, n, mask = self.arrays, self._count, self._mask
        hashes = np.asarray(new.hashes, np.int64)
        pending = np.arange(new.count, dtype=np.int64)
        slots = hashes & mask
        for _ in range(len(self.table)):
            cand = np.asarray(self.table[slots[pending]])
            live = (cand >= 0) & (cand < n)
            pending, cand = pending[live], cand[live]
            if not pending.size:
                break
            same = np.asarray(a.hashes[cand], np.int64) == hashes[pending]
            done = np.zeros(len(pending), bool)
            for k in np.flatnonzero(same).tolist():  # equal hashes: equal names, nearly always
                p, c = int(pending[k]), int(cand[k])
                mine = a.names[a.name_offsets[c] : a.name_offsets[c + 1]]
                theirs = new.names[new.name_offsets[p] : new.name_offsets[p + 1]]
                if len(mine) == len(theirs) and bool(np.array_equal(mine, theirs)):
                    out[p] = c
                    done[k] = True
            pending = pending[~done]
            slots[pending] = (slots[pending] + 1) & mask
        return out

    def first_overlap(self, bounds: np.ndarray) -> tuple[int, int] | None:
        """``(i, j)``: the first range ``bounds[i]`` sharing rows with non-empty segment
        ``j`` of this run, or ``None``. Vectorised binary search over the mapped bounds
        (searchsorted would copy the strided start column of the whole run)."""
        b = self.arrays.bounds
        n = self._count
        bounds = np.asarray(bounds, np.int64).reshape(-1, 2)
        idx = np.flatnonzero(bounds[:, 1] > bounds[:, 0])
        if not n or not idx.size:
            return None
        last_start, last_stop = int(b[-1, 0]), int(b[-1, 1])
        if last_stop > last_start and int(bounds[idx, 0].min()) >= last_stop:
            # appends: a non-empty last segment ends every non-empty one of the run
            return None
        lo = np.zeros(idx.size, np.int64)
        hi = np.full(idx.size, n, np.int64)
        stop = bounds[idx, 1]
        while True:  # last j with start_j < stop: lo ends as that j + 1
            live = lo < hi
            if not live.any():
                break
            mid = (lo + hi) // 2
            less = np.zeros(idx.size, bool)
            less[live] = b[mid[live], 0] < stop[live]
            lo = np.where(live & less, mid + 1, lo)
            hi = np.where(live & ~less, mid, hi)
        j = lo - 1
        hits: list[tuple[int, int]] = []
        while idx.size:
            ok = j >= 0
            idx, j = idx[ok], j[ok]
            if not idx.size:
                break
            s, e = b[j, 0], b[j, 1]
            over = (e > s) & (e > bounds[idx, 0])
            if over.any():
                k = np.flatnonzero(over)
                hits += zip(idx[k].tolist(), j[k].tolist())
            # an empty segment there hides nothing; step back past it (rare)
            back = e <= s
            idx, j = idx[back], j[back] - 1
        return min(hits) if hits else None

    def release(self) -> None:
        """Drop the memoryviews so the underlying maps can be closed."""
        for attr in ("_noff", "_bounds", "_table", "_names"):
            mv = getattr(self, attr, None)
            if isinstance(mv, memoryview):
                mv.release()


#: A commit merges the newest runs while the next older one holds at most this many times
#: the segments gathered so far: runs then shrink by more than this factor from oldest to
#: newest, so an index of N segments written c at a time keeps at most about
#: log4(N / c) + 1 runs, and each segment is rewritten about 4 times per level (O(log N)).
MERGE_FACTOR = 4
#: Runs merged into one of at least this many segments are streamed through memory-mapped
#: files (when they follow in rows) instead of being gathered in memory first.
STREAM_MIN = 1 << 20


class SegmentIndex(Mapping[str, tuple[int, int]]):
    """Read-only mapping ``name -> (start, stop)`` over the runs of a segment index.

    Iteration yields names in row order. A lookup probes the runs' on-disk hash tables,
    the largest run first (a name lives in exactly one run: commits refuse duplicates), so
    it touches a handful of bytes per run whatever the number of segments; nothing is built
    at open. :attr:`arrays` (every segment in row order, the dask chunk plan) is the run's
    own memory map for a one-run index and is merged once, on first use, otherwise.
    """

    __slots__ = ("_bases", "_inverse", "_merged", "_ordered", "_probe", "runs", "spec")

    def __init__(self, runs: Sequence[IndexRun], spec: IndexFiles | None = None) -> None:
        self.runs = list(runs) or [IndexRun.from_arrays(SegmentArrays.empty())]
        self.spec = spec
        # a name lives in one run: probing the largest first answers most lookups at once
        self._probe = sorted(self.runs, key=len, reverse=True)
        self._merged: SegmentArrays | None = None
        self._ordered: list[IndexRun] | None = None
        self._bases: dict[int, int] | None = None
        self._inverse: np.ndarray | None = None

    # ------------------------------------------------------------ row order across runs
    def _layout(self) -> None:
        """Find whether the runs, taken by their first segment, are already in row order
        (the common case: every commit appended after the rows of the previous ones)."""
        # _bases is assigned last: a thread seeing it set sees the rest of the layout
        if self._bases is not None:
            return
        runs = [r for r in self.runs if len(r)]
        runs.sort(key=lambda r: (int(r.arrays.bounds[0, 0]), int(r.arrays.bounds[0, 1])))
        ordered = True
        for a, b in zip(runs, runs[1:]):
            last, first = a.arrays.bounds[-1], b.arrays.bounds[0]
            if not (first[0] > last[0] or (first[0] == last[0] and first[1] >= last[1])):
                ordered = False
                break
        if ordered or len(self.runs) == 1:
            bases, pos = {}, 0
            for r in runs:
                bases[id(r)] = pos
                pos += len(r)
            self._ordered, self._bases = runs, bases
            return
        merged = concat([r.arrays for r in self.runs])
        order = np.lexsort((merged.bounds[:, 1], merged.bounds[:, 0]))
        self._merged = merged.take(order)
        inverse = np.empty(len(order), np.int64)
        inverse[order] = np.arange(len(order), dtype=np.int64)
        self._inverse = inverse
        bases, pos = {}, 0
        for r in self.runs:
            bases[id(r)] = pos
            pos += len(r)
        self._bases = bases

    @property
    def arrays(self) -> SegmentArrays:
        """Every segment in row order (the run's memory map when the index has one run)."""
        if len(self.runs) == 1:
            return self.runs[0].arrays
        if self._merged is None:
            self._layout()
            if self._merged is None:
                assert self._ordered is not None
                self._merged = concat([r.arrays for r in self._ordered])
        return self._merged

    @property
    def bounds(self) -> np.ndarray:
        """``(n, 2)`` ``[start, stop)`` of every segment in row order (no names gathered)."""
        if len(self.runs) == 1 or self._merged is not None:
            return self.arrays.bounds
        self._layout()
        if self._ordered is not None:
            parts = [r.arrays.bounds for r in self._ordered]
            return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        return self.arrays.bounds

    def _global(self, run: IndexRun, i: int) -> int:
        if len(self.runs) == 1:
            return i
        self._layout()
        assert self._bases is not None
        pos = self._bases[id(run)] + i
        return pos if self._inverse is None else int(self._inverse[pos])

    # ------------------------------------------------------------ lookups
    def _locate(self, name: object) -> tuple[IndexRun, int] | None:
        try:
            key = name.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
        except AttributeError:
            return None
        h = zlib.crc32(key)
        for run in self._probe:
            i = run.find_key(key, h)
            if i >= 0:
                return run, i
        return None

    def find(self, name: str) -> int:
        """Position (in row order) of segment ``name``, or -1."""
        hit = self._locate(name)
        return -1 if hit is None else self._global(*hit)

    def __getitem__(self, name: str) -> tuple[int, int]:
        hit = self._locate(name)
        if hit is None:
            raise SegmentNotFoundError(self._missing(name))
        run, i = hit
        b = run._bounds
        return b[2 * i], b[2 * i + 1]

    def _missing(self, name: object) -> str:
        if not isinstance(name, str):
            return f"segment names are str; got {name!r} of type {type(name).__name__}"
        first = next((r for r in self.runs if len(r)), None)
        hint = f" (one is {first.arrays.name(0)!r})" if first is not None else ""
        return f"no segment named {name!r} among {len(self):,} segments{hint}"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._locate(name) is not None

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def __iter__(self) -> Iterator[str]:
        a = self.arrays
        raw = a.names.tobytes()
        offs = a.name_offsets.tolist()
        for i in range(a.count):
            yield _decode_name(raw[offs[i] : offs[i + 1]], i)

    def items(self) -> ItemsView[str, tuple[int, int]]:
        """Pairs ``(name, (start, stop))`` in row order, decoded in one pass per iteration:
        a reusable view, like ``dict.items()``."""
        return _ItemsView(self)

    @property
    def starts(self) -> np.ndarray:
        return self.bounds[:, 0]

    @property
    def stops(self) -> np.ndarray:
        return self.bounds[:, 1]

    def names_list(self) -> list[str]:
        return list(iter(self))

    def match(self, new: SegmentArrays) -> np.ndarray:
        """``(n, 2)`` int64: the committed ``[start, stop)`` of each segment of ``new`` whose
        name the index holds, ``-1`` rows for the others.

        Vectorised over ``new`` (its hashes probe every run's table in rounds), so a commit
        checks its names against the whole store without decoding any committed name.
        """
        out = np.full((new.count, 2), -1, np.int64)
        for run in self.runs:
            pos = run.match(new)
            hit = pos >= 0
            if hit.any():
                out[hit] = run.arrays.bounds[pos[hit]]
        return out

    def first_overlap(self, bounds: np.ndarray) -> tuple[int, str, int, int] | None:
        """The first of the ``(n, 2)`` row ranges ``bounds`` that shares rows with a
        committed (non-empty) segment, as ``(i, name, start, stop)`` of that segment;
        ``None`` when none does. Binary searches in each run, no copy of any run."""
        best: tuple[int, int, IndexRun] | None = None
        for run in self.runs:  # every run: the first range may clash with a later run
            hit = run.first_overlap(bounds)
            if hit is not None and (best is None or hit[0] < best[0]):
                best = (*hit, run)
        if best is None:
            return None
        i, j, run = best
        b = run.arrays.bounds
        return i, run.arrays.name(j), int(b[j, 0]), int(b[j, 1])

    def release(self) -> None:
        """Drop the memoryviews so the underlying maps can be closed."""
        self._merged = None
        for run in self.runs:
            run.release()

    def __repr__(self) -> str:
        runs = f" in {len(self.runs)} runs" if len(self.runs) > 1 else ""
        return f"<SegmentIndex {len(self):,} segments{runs}>"


class _ItemsView(ItemsView[str, tuple[int, int]]):
    """``items()`` in row order: every iteration decodes the names afresh (no dict built)."""

    _mapping: SegmentIndex

    def __iter__(self) -> Iterator[tuple[str, tuple[int, int]]]:
        bounds = self._mapping.arrays.bounds.tolist()
        return zip(iter(self._mapping), map(tuple, bounds))


# --------------------------------------------------------------------------- commits


def row_order(seg: SegmentArrays) -> SegmentArrays:
    """``seg`` sorted by ``(start, stop)`` (returned as is when already in row order)."""
    b = seg.bounds
    if len(b) < 2 or bool(
        np.all((b[1:, 0] > b[:-1, 0]) | ((b[1:, 0] == b[:-1, 0]) & (b[1:, 1] >= b[:-1, 1])))
    ):
        return seg
    return seg.take(np.lexsort((b[:, 1], b[:, 0])))


@dataclass
class IndexCommit:
    """New segments checked against a committed index, ready to be written as a run.

    Made by :func:`plan_commit` before the commit touches any file (so a refused name
    leaves the store as it was); :meth:`write` writes the one new run of the commit.
    """

    previous: IndexFiles | None
    keep: list[IndexFiles]  # runs that stay as they are (oldest first)
    merged: list[IndexRun]  # the newest runs, rewritten together with the new segments
    new: SegmentArrays  # the new segments, in row order, committed duplicates dropped
    repeated: SegmentArrays | None = None  # new segments equal to committed ones (dropped)

    @property
    def max_stop(self) -> int:
        """The last row any new segment reaches (0 when there is none)."""
        return int(self.new.bounds[:, 1].max()) if self.new.count else 0

    def write(self, store_dir: str, generation: int, *, fsync: bool) -> IndexFiles | None:
        """Write the commit's run as ``index/g<generation>-*.npy``; return the new index.

        Costs the new segments plus the runs merged with them (a geometric policy keeps
        that O(log N) per segment, amortised); the files of the kept runs are untouched.
        """
        if not self.new.count:
            return self.previous
        parts = [r.arrays for r in self.merged]
        total = self.new.count + sum(p.count for p in parts)
        if total >= STREAM_MIN and follow_in_rows([*parts, self.new]):  # big appends
            run = write_concat(store_dir, generation, [*parts, self.new], fsync=fsync)
        else:
            copies = [
                SegmentArrays(
                    np.array(a.names),
                    np.array(a.name_offsets),
                    np.array(a.bounds),
                    np.array(a.hashes),
                )
                for a in parts
            ]
            seg = row_order(concat([*copies, self.new]))
            run = write_index(store_dir, generation, seg, fsync=fsync)
        return index_of_runs([*self.keep, run])


def plan_commit(
    index: SegmentIndex | None,
    spec: IndexFiles | None,
    new: SegmentArrays,
    rows_hint: str = "",
    *,
    factor: int = MERGE_FACTOR,
) -> IndexCommit:
    """Check ``new`` segments against the committed ``index`` (described by ``spec``).

    A new segment equal to a committed one (same name, same rows) is dropped, which keeps
    commits idempotent (a retried task, a journal replayed after a crash). The same name
    with other rows raises :class:`DuplicateSegmentError`; rows shared with another
    segment raise :class:`OverlapError`. Nothing of the committed index is loaded into
    Python objects: names are probed through the runs' hash tables, rows by binary search.
    """
    new = merge(SegmentArrays.empty(), new, rows_hint)
    repeated = None
    runs: list[IndexRun] = []
    if index is not None and spec is not None and len(index):
        runs = index.runs
        found = index.match(new)
        hit = found[:, 0] >= 0
        if hit.any():
            same = hit & np.all(found == new.bounds, axis=1)
            clash = np.flatnonzero(hit & ~same)
            if clash.size:
                i = int(clash[0])
                raise DuplicateSegmentError(
                    f"segment name {new.name(i)!r} is used twice: rows "
                    f"[{found[i, 0]}, {found[i, 1]}) and [{new.bounds[i, 0]}, {new.bounds[i, 1]})"
                    f"{rows_hint}. Give every segment a unique name."
                )
            if same.any():
                repeated = new.take(np.flatnonzero(same))
            new = new.take(np.flatnonzero(~same))
        over = index.first_overlap(new.bounds)
        if over is not None:
            i, name, a, b = over
            raise OverlapError(
                f"segments {name!r} rows [{a}, {b}) and {new.name(i)!r} rows "
                f"[{new.bounds[i, 0]}, {new.bounds[i, 1]}) overlap{rows_hint}. Each segment needs "
                "its own rows: write at disjoint start_position values, or append with "
                "start_position=None."
            )
    specs = list(spec.all_runs) if spec is not None and runs else []
    if len(specs) != len(runs):
        raise StoreCorruptedError("the opened segment index does not match its manifest entry")
    acc, k = new.count, 0
    while k < len(runs) and len(runs[-1 - k]) <= factor * acc:
        acc += len(runs[-1 - k])
        k += 1
    return IndexCommit(spec, specs[: len(specs) - k], runs[len(runs) - k :], new, repeated)


def drop_unused_runs(store_dir: str, *specs: IndexFiles | None) -> None:
    """Delete the index files of every generation that no run of ``specs`` names (the
    caller passes the index just committed and the one before it: readers that opened
    before the commit may still be mapping that one). Caller holds the store lock."""
    import re

    keep = {r.generation for s in specs if s is not None for r in s.all_runs}
    d = os.path.join(store_dir, INDEX_DIR)
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        m = re.match(r"^g(\d+)-", name)
        if m and int(m.group(1)) not in keep:
            try:
                os.unlink(os.path.join(d, name))
            except OSError:
                pass
