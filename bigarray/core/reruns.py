"""Recognise a rerun task: the same segments written again with the same bytes.

A dask scheduler reruns a task whose worker died, even after the task wrote its rows and
journaled its segments (the result was lost with the worker, not the write). Two guards
make the session commit such a write once:

- at ``write()`` (``StoreWriter._journaled_rerun``/``_committed_rerun``): a write of the
  same names (in any order), lengths and bytes as an earlier write of the same session,
  journaled (its record is filed under a key derived from its names) or committed by one
  of the session's commits (each records the name hashes it added), is not written again:
  no rows are allocated, so nothing is counted twice in the shape;
- at the commit (:func:`drop_identical_reruns`, here): repeats among the records of one
  commit that the first guard could not see (two attempts racing) keep the first copy.

A segment committed by *another* session and written again is still refused, and the same
name with other bytes (or another length) is still a
:class:`~bigarray.errors.DuplicateSegmentError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .index import SegmentArrays, concat

__all__ = ["drop_identical_reruns", "pread_rows"]


def pread_rows(fd: int, offset: int, row_nbytes: int) -> Callable[[int, int], bytes]:
    """A reader of the bytes of rows ``[a, b)`` of a data file open as ``fd``."""

    def read(a: int, b: int) -> bytes:
        n = (b - a) * row_nbytes
        out = bytearray()
        pos = offset + a * row_nbytes
        while len(out) < n:
            chunk = os.pread(fd, min(n - len(out), 64 << 20), pos + len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    return read


def drop_identical_reruns(
    committed: SegmentArrays, new: SegmentArrays, read: Callable[[int, int], bytes]
) -> SegmentArrays:
    """``new`` without the segments that repeat an earlier one of ``new`` (the records of
    this commit) by name, length and bytes. A repeat of a *committed* segment is left for
    :func:`merge` to refuse: it may be another session's work. Everything else is left for
    :func:`merge` to judge."""
    if not new.count:
        return new
    both = concat([committed, new])
    base = committed.count
    # Only names whose crc32 collides can repeat: compare those few by their bytes.
    order = np.argsort(both.hashes, kind="stable")
    h = both.hashes[order]
    dup = np.flatnonzero(h[1:] == h[:-1])
    if not dup.size:
        return new
    members = sorted({int(order[k]) for k in dup} | {int(order[k + 1]) for k in dup})
    first: dict[bytes, int] = {}
    drop: list[int] = []
    bounds = both.bounds
    for i in members:
        key = both.names[both.name_offsets[i] : both.name_offsets[i + 1]].tobytes()
        j = first.setdefault(key, i)
        if j == i or j < base:
            # a committed segment is another session's (or an earlier commit's): a clash
            continue
        (a0, b0), (a1, b1) = bounds[j].tolist(), bounds[i].tolist()
        if (a0, b0) == (a1, b1):
            continue  # the very same record twice: merge drops it
        if b0 - a0 == b1 - a1 and read(a0, b0) == read(a1, b1):
            drop.append(i - base)
    if not drop:
        return new
    keep = np.ones(new.count, bool)
    keep[drop] = False
    return new.take(np.flatnonzero(keep))
