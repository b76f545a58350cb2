"""The chunk planner: segment-aligned row chunks of about a target size in bytes.

Every face that hands rows to dask plans them here (the lazy handle and
:func:`bigarray.dask_backend.from_bigarray`, the xarray engine's ``preferred_chunks``), so a
store is cut the same way whichever face reads it. Pure numpy; the faces read dask's
``array.chunk-size`` themselves and pass bytes.

The plan: candidate cuts are every segment start and stop (and row 0 and the last row);
chunks are packed greedily from the first row, each ending at the last candidate that
keeps it within the target. A piece with no candidate inside that is longer than the
target (one long segment, or a long run of rows outside any segment) is a chunk of its
own, split into near-equal parts when ``split`` is true: the only case where a chunk
boundary falls inside a segment. ``forced`` cuts (shard starts: a chunk never spans two
data files) are always cuts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["rows_per_chunk", "segment_chunks"]


def rows_per_chunk(target_bytes: int, row_nbytes: int) -> int:
    """Rows in a chunk of about ``target_bytes`` (at least one; a row of 0 bytes counts 1)."""
    return max(1, int(target_bytes) // max(1, int(row_nbytes)))


def segment_chunks(
    bounds: np.ndarray | None,
    rows: int,
    row_nbytes: int,
    target_bytes: int | None,
    *,
    forced: Sequence[int] | np.ndarray = (),
    split: bool = True,
) -> tuple[int, ...]:
    """Row chunk sizes of at most ``target_bytes`` whose boundaries fall on segment boundaries.

    Parameters
    ----------
    bounds
        ``(n, 2)`` int64 ``[start, stop)`` rows of every segment (any order), or ``None`` (or
        an empty array) for rows without segments: then any row is a boundary.
    rows
        Rows of the variable.
    row_nbytes
        Bytes per row.
    target_bytes
        Wanted chunk size in bytes; ``None`` gives one chunk per segment (and one per run of
        rows between segments).
    forced
        Rows that must be chunk boundaries (shard starts).
    split
        Split a piece longer than the target that holds no boundary (a single long segment)
        into near-equal parts of at most the target; otherwise it stays one chunk.

    Returns
    -------
    tuple of int
        Chunk lengths in rows, all positive, summing to ``rows`` (``(0,)`` for no rows).

    Examples
    --------
    >>> b = np.array([[0, 10], [10, 1000], [1000, 1005], [1005, 1015]])
    >>> segment_chunks(b, 1015, 8, 800, split=False)
    (10, 990, 15)
    >>> segment_chunks(None, 1000, 8, 2400)
    (250, 250, 250, 250)
    """
    rows = int(rows)
    if rows <= 0:
        return (0,)
    forced_arr = np.asarray(forced, np.int64).reshape(-1)
    forced_arr = forced_arr[(forced_arr > 0) & (forced_arr < rows)]
    parts = [np.array([0, rows], np.int64), forced_arr]
    if bounds is not None and len(bounds):
        parts.append(np.asarray(bounds, np.int64).reshape(-1))
    cand = _unique(np.concatenate(parts))
    cand = cand[(cand >= 0) & (cand <= rows)]
    if target_bytes is None:
        return tuple(np.diff(cand).tolist())
    target = rows_per_chunk(target_bytes, row_nbytes)
    if target >= rows and not len(forced_arr):
        return (rows,)
    n = len(cand)
    stops_at = np.flatnonzero(np.isin(cand, forced_arr)) if len(forced_arr) else None
    if rows // target < n // 8:
        cuts = _walk_few(cand, target, stops_at)
    else:
        cuts = _walk_many(cand, target, stops_at)
    edges = cand[np.asarray(cuts, np.int64)]
    sizes = np.diff(edges)
    if split:
        pieces = np.where(sizes > target, -(-sizes // target), 1)
        if int(pieces.max(initial=1)) > 1:
            base = np.repeat(sizes // pieces, pieces)
            rem = np.repeat(sizes % pieces, pieces)
            first = np.repeat(np.cumsum(pieces) - pieces, pieces)
            pos = np.arange(len(base)) - first
            sizes = base + (pos < rem)
    return tuple(sizes.tolist())


def _walk_few(cand: np.ndarray, target: int, forced: np.ndarray | None) -> list[int]:
    """Indices into ``cand`` of the greedy cuts, one binary search per chunk (few chunks
    over many candidates: a store of a million segments cut into a hundred chunks)."""
    n = len(cand)
    cuts = [0]
    i = 0
    while i < n - 1:
        j = int(np.searchsorted(cand, cand[i] + target, "right")) - 1
        if forced is not None:
            k = int(np.searchsorted(forced, i, "right"))
            if k < len(forced):
                j = min(j, int(forced[k]))
        i = max(j, i + 1)  # a piece longer than the target is a chunk of its own
        cuts.append(i)
    return cuts


def _walk_many(cand: np.ndarray, target: int, forced: np.ndarray | None) -> list[int]:
    """The same cuts with every binary search done at once (many chunks)."""
    n = len(cand)
    reach = np.searchsorted(cand, cand + target, "right") - 1
    if forced is not None and len(forced):
        ends = np.append(forced, n - 1)
        nxt = ends[np.searchsorted(ends, np.arange(n), "right").clip(0, len(ends) - 1)]
        np.minimum(reach, nxt, out=reach)
    step = reach.tolist()
    cuts = [0]
    i = 0
    while i < n - 1:  # one step per chunk, not per segment
        j = step[i]
        i = j if j > i else i + 1  # a piece longer than the target is a chunk of its own
        cuts.append(i)
    return cuts


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values; ``np.unique`` hashes first in recent numpy and is ~500x slower
    on the already nearly sorted boundary arrays the planner is fed."""
    a = np.sort(np.asarray(a, np.int64).reshape(-1), kind="stable")
    if len(a) < 2:
        return a
    keep = np.empty(len(a), bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]
