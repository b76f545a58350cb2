"""Row bookkeeping of a local store: the allocation mark and the committed rows no write
has written yet.

``alloc`` (a file in the store) holds the first row no writer has reserved: appends take
rows from it under the store lock, so processes never race for rows. Rows committed but
never written (a declared shape's padding, a gap before a positioned write) are recorded in
the variable's ``encoding["unwritten_rows"]``: they read as zeros and stay writable, while
every written row is committed for good and never overwritten.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import OverlapError
from .fileutil import atomic_write, locked, preallocate, wrap_os_error
from .format import LOCK_NAME, Variable
from .journal import Journal, Record, reserved_by_others

__all__ = [
    "ALLOC_NAME",
    "allocate",
    "covered",
    "next_unwritten",
    "read_alloc",
    "row_shape_pending",
    "subtract_ranges",
    "unwritten_rows",
]

ALLOC_NAME = "alloc"
HOLES_KEY = "unwritten_rows"  # Variable.encoding key: see unwritten_rows
PREALLOCATE_MIN_BYTES = 1 << 20  # smaller writes leave block allocation to the file system
PENDING_KEY = "row_shape_pending"  # Variable.encoding key: see row_shape_pending


def unwritten_rows(var: Variable) -> list[tuple[int, int]]:
    """Committed rows of an unnamed variable that no commit wrote (a declared shape's
    padding, or a gap before a positioned write): they read as zeros and stay writable."""
    raw = var.encoding.get(HOLES_KEY) if isinstance(var.encoding, Mapping) else None
    out = []
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, list) and len(item) == 2:
                a, b = item
                if isinstance(a, int) and isinstance(b, int) and 0 <= a < b:
                    out.append((a, b))
    return sorted(out)


def row_shape_pending(var: Variable) -> bool:
    """True for the empty ``(0,)`` placeholder a writer given a dtype but no shape commits
    when it creates a store, so that readers see an empty array of that dtype (not a store
    without the variable) until its first write fixes the row shape and replaces it."""
    return (
        var.rows == 0 and isinstance(var.encoding, Mapping) and bool(var.encoding.get(PENDING_KEY))
    )


def covered(holes: Sequence[tuple[int, int]], start: int, stop: int) -> bool:
    """True if ``[start, stop)`` lies inside one of the (merged, sorted) ``holes``."""
    i = bisect.bisect_right(holes, (start, 1 << 62)) - 1
    return i >= 0 and holes[i][0] <= start and stop <= holes[i][1]


def subtract_ranges(
    holes: list[tuple[int, int]], used: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """``holes`` minus the ``used`` ranges, merged and sorted (one sweep: O(n log n))."""

    def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for a, b in sorted(r for r in ranges if r[1] > r[0]):
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(b, out[-1][1]))
            else:
                out.append((a, b))
        return out

    cut = merged(used)
    out: list[tuple[int, int]] = []
    j = 0
    for a, b in merged(holes):
        while j < len(cut) and cut[j][1] <= a:
            j += 1
        k, pos = j, a
        while k < len(cut) and cut[k][0] < b:
            if cut[k][0] > pos:
                out.append((pos, cut[k][0]))
            pos = max(pos, cut[k][1])
            k += 1
        if pos < b:
            out.append((pos, b))
    return out


def next_unwritten(
    var: Variable,
    rows: int,
    mine: Sequence[Record],
    unrecorded: Sequence[tuple[int, int]],
    unfinished: Mapping[str, tuple[int, int]],
) -> dict[str, Any]:
    """The encoding of an unnamed variable after a commit of ``rows`` rows: its holes (see
    :func:`unwritten_rows`) plus the new rows past the old end, minus every row written."""
    holes = unwritten_rows(var)
    if rows > var.rows:
        holes.append((var.rows, rows))
    enc = {k: v for k, v in var.encoding.items() if k != HOLES_KEY}
    if not holes:
        return enc if HOLES_KEY in var.encoding else var.encoding
    used = [(r.start if r.start is not None else 0, r.stop) for r in mine if r.data]
    used += list(unrecorded) + list(unfinished.values())
    left = subtract_ranges(holes, used)
    if left:
        enc[HOLES_KEY] = [[a, b] for a, b in left]
    return enc


def read_alloc(path: str) -> int:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
        return int.from_bytes(raw, "little") if len(raw) == 8 else 0
    except FileNotFoundError:
        return 0


def allocate(
    path: str,
    journal: Journal,
    fd: int,
    data_offset: int,
    row_nbytes: int,
    n: int,
    start: int | None,
) -> int:
    """Reserve rows ``[start, start + n)`` of the store at ``path`` for a write of the
    session ``journal`` (appending at the allocation mark when ``start`` is None) and grow
    the data file ``fd`` to hold them, under the store lock so that processes never race.

    Positioned rows below the mark may be another open session's appends, written (or being
    written) and not committed yet: they are refused (:class:`OverlapError`), never
    overwritten. Appends record their rows in the session's ``reserved`` file so that other
    sessions can tell. Returns the first row.
    """
    with locked(os.path.join(path, LOCK_NAME)):
        alloc_path = os.path.join(path, ALLOC_NAME)
        alloc = read_alloc(alloc_path)
        begin = alloc if start is None else start
        end = begin + n
        if start is not None and start < alloc and n:
            taken = reserved_by_others(path, journal.session, begin, end)
            if taken is not None:
                raise OverlapError(
                    f"rows [{begin}, {end}) overlap rows [{taken[0]}, {taken[1]}) that "
                    f"another open writer of {path!r} appended and has not committed "
                    "yet; they are never overwritten. Nothing was written: append with "
                    "start_position=None, or write past the rows allocated so far."
                )
        elif start is None and n:
            journal.reserve(begin, end)
        if end > alloc:
            atomic_write(alloc_path, end.to_bytes(8, "little"), fsync=False)
        need = data_offset + end * row_nbytes
        try:
            if os.fstat(fd).st_size < need:  # only ever grow: others may be past us
                os.ftruncate(fd, need)
        except OSError as exc:
            raise wrap_os_error(exc, path) from None
    if n * row_nbytes >= PREALLOCATE_MIN_BYTES:
        preallocate(fd, data_offset + begin * row_nbytes, n * row_nbytes, path)
    return begin
