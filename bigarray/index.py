"""The segment index: ``name -> [start, stop)`` rows, memory-mapped, with an on-disk hash table.

One generation of the index is five standard ``.npy`` arrays, all in row order (sorted by
``start``), so the index doubles as the chunk plan for dask:

``names``         uint8, the UTF-8 bytes of every name, concatenated
``name_offsets``  int64 (n + 1), where each name starts in ``names``
``bounds``        int64 (n, 2), ``[start, stop)`` rows of each segment
``hashes``        uint32 (n), ``zlib.crc32`` of each name (kept so merges never rehash)
``table``         int64 (2**k >= 2 n), open addressing with linear probing; -1 is empty

Opening maps the files and builds nothing: a lookup hashes the name, probes the table
(one or two slots at a load factor of 1/2) and compares the bytes of one name, so the cost
of open and of a lookup does not depend on the number of segments.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import ItemsView, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import (
    DuplicateSegmentError,
    OverlapError,
    SchemaError,
    SegmentNotFoundError,
    StoreCorruptedError,
)
from .format import INDEX_DIR, INDEX_ROLES, IndexFiles, byte_view

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


def build_table(hashes: np.ndarray) -> np.ndarray:
    """Open-addressing table (linear probing) of size 2**k >= 2 n, built vectorised in rounds."""
    n = len(hashes)
    size = 8
    while size < 2 * n:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, np.int64)
    pending = np.arange(n, dtype=np.int64)
    slots = hashes.astype(np.int64) & mask
    while pending.size:
        s = slots[pending]
        free = table[s] == -1
        cand, cs = pending[free], s[free]
        won_slots, first = np.unique(cs, return_index=True)
        table[won_slots] = cand[first]
        won = np.zeros(n, bool)
        won[cand[first]] = True
        pending = pending[~won[pending]]
        slots[pending] = (slots[pending] + 1) & mask
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


def write_index(store_dir: str, generation: int, seg: SegmentArrays, *, fsync: bool) -> IndexFiles:
    """Write one generation of the index as ``.npy`` files; return their manifest entry."""
    from .format import save_npy

    os.makedirs(os.path.join(store_dir, INDEX_DIR), exist_ok=True)
    arrays = index_arrays(seg)
    files, offsets = {}, {}
    for role in INDEX_ROLES:
        rel = f"{INDEX_DIR}/g{generation}-{role}.npy"
        offsets[role] = save_npy(os.path.join(store_dir, rel), arrays[role], fsync=fsync)
        files[role] = rel
    return IndexFiles(seg.count, generation, len(arrays["table"]), files, offsets)


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


class SegmentIndex(Mapping[str, tuple[int, int]]):
    """Read-only mapping ``name -> (start, stop)`` over a memory-mapped (or in-memory) index.

    Iteration yields names in row order. Lookups touch a handful of bytes whatever the
    number of segments; nothing is built at open.
    """

    __slots__ = ("_bounds", "_count", "_maps", "_mask", "_names", "_noff", "_table", "arrays")

    def __init__(self, buffers: Mapping[str, Any], spec: IndexFiles, where: str) -> None:
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
        if int(noff[0]) != 0 or (n and bool(np.any(noff[1:] < noff[:-1]))):
            raise StoreCorruptedError(f"{where}: segment name offsets are not increasing")
        self.arrays = arrays
        # memoryviews give Python ints in ~30 ns, far cheaper than numpy scalar indexing
        self._noff = byte_view(noff).cast("B").cast("q")
        self._bounds = byte_view(arrays.bounds.reshape(-1)).cast("B").cast("q")
        self._table = byte_view(table).cast("B").cast("q")
        self._names = byte_view(arrays.names)
        self._mask = spec.table_size - 1

    @classmethod
    def from_arrays(cls, seg: SegmentArrays) -> SegmentIndex:
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
        """Position (in row order) of segment ``name``, or -1."""
        try:
            key = name.encode("utf-8", "surrogatepass")
        except AttributeError:
            return -1
        table, noff, names, mask = self._table, self._noff, self._names, self._mask
        slot = zlib.crc32(key) & mask
        n = self._count
        for _ in range(len(table)):
            i = table[slot]
            if i < 0:
                return -1
            if 0 <= i < n and names[noff[i] : noff[i + 1]] == key:
                return i
            slot = (slot + 1) & mask
        return -1

    def __getitem__(self, name: str) -> tuple[int, int]:
        i = self.find(name)
        if i < 0:
            raise SegmentNotFoundError(self._missing(name))
        b = self._bounds
        return b[2 * i], b[2 * i + 1]

    def _missing(self, name: object) -> str:
        if not isinstance(name, str):
            return f"segment names are str; got {name!r} of type {type(name).__name__}"
        hint = f" (the first is {self.arrays.name(0)!r})" if self._count else ""
        return f"no segment named {name!r} among {self._count:,} segments{hint}"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) >= 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        a = self.arrays
        raw = a.names.tobytes()
        offs = a.name_offsets.tolist()
        for i in range(self._count):
            yield _decode_name(raw[offs[i] : offs[i + 1]], i)

    def items(self) -> ItemsView[str, tuple[int, int]]:
        """Pairs ``(name, (start, stop))`` in row order, decoded in one pass per iteration:
        a reusable view, like ``dict.items()``."""
        return _ItemsView(self)

    @property
    def starts(self) -> np.ndarray:
        return self.arrays.bounds[:, 0]

    @property
    def stops(self) -> np.ndarray:
        return self.arrays.bounds[:, 1]

    def names_list(self) -> list[str]:
        return list(iter(self))

    def release(self) -> None:
        """Drop the memoryviews so the underlying maps can be closed."""
        for attr in ("_noff", "_bounds", "_table", "_names"):
            mv = getattr(self, attr, None)
            if isinstance(mv, memoryview):
                mv.release()

    def __repr__(self) -> str:
        return f"<SegmentIndex {self._count:,} segments>"


class _ItemsView(ItemsView[str, tuple[int, int]]):
    """``items()`` in row order: every iteration decodes the names afresh (no dict built)."""

    _mapping: SegmentIndex

    def __iter__(self) -> Iterator[tuple[str, tuple[int, int]]]:
        bounds = self._mapping.arrays.bounds.tolist()
        return zip(iter(self._mapping), map(tuple, bounds))
