"""The errors a commit raises when segments of a session conflict with others.

A commit that refuses segments (a name used with other rows, rows shared with another
segment, a segment another session committed at the same rows) commits nothing and leaves
the writer open with everything pending. Its error names every conflicting segment of the
session, in the message (the first 10) and in ``exc.segments`` (all), and says how to
recover: ``forget(names)`` and commit again, or ``discard()``. Every such error is built
by :func:`conflict_error`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ..errors import BigArrayError, DuplicateSegmentError
from .index import SegmentArrays, concat

__all__ = ["conflict_error", "conflicting_names", "merge_refused", "repeat_refused"]

_SHOWN = 10  # names listed in a message; exc.segments holds all of them

E = TypeVar("E", bound=BigArrayError)


def conflicting_names(committed: SegmentArrays, new: SegmentArrays) -> list[str]:
    """Names of the ``new`` segments that a merge refuses: a name used with other rows
    (committed, or twice among ``new``), or rows shared with another segment."""
    n_old = committed.count
    both = concat([committed, new])
    names = [both.name(i) for i in range(both.count)]
    bounds = [(int(a), int(b)) for a, b in both.bounds.tolist()]
    first: dict[str, int] = {}
    bad: set[int] = set()
    keep = []
    for i, nm in enumerate(names):
        j = first.setdefault(nm, i)
        if j == i:
            keep.append(i)
        elif bounds[j] != bounds[i]:
            bad.update(k for k in (i, j) if k >= n_old)
    live = sorted((bounds[i][0], bounds[i][1], i) for i in keep if bounds[i][1] > bounds[i][0])
    reach, who = -1, -1
    for a, b, i in live:
        if a < reach:
            bad.update(k for k in (i, who) if k >= n_old)
        if b > reach:
            reach, who = b, i
    return list(dict.fromkeys(names[i] for i in sorted(bad)))


def conflict_error(kind: type[E], before: str, names: Sequence[str], after: str) -> E:
    """An error of ``kind`` saying ``before``, then naming the conflicting segments
    ``names`` (up to 10 in the message, all in ``err.segments``), then ``after``."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:_SHOWN]) + (" ..." if len(names) > _SHOWN else "")
    err = kind(f"{before} Conflicting segment(s) of this session ({len(names)}): {shown}. {after}")
    err.segments = names  # type: ignore[attr-defined]
    return err


def merge_refused(exc: E, names: Sequence[str]) -> E:
    """The commit's error when merging the session's segments into the index raised
    ``exc`` (a duplicate name or an overlap): ``exc``'s message, the conflicting
    segments ``names`` (see :func:`conflicting_names`) and how to recover."""
    return conflict_error(
        type(exc),
        f"{exc} Nothing was committed: the writer stays open with its uncommitted segments.",
        names,
        "Call forget(names) to drop them and flush() again, or discard() to drop everything "
        "uncommitted.",
    )


def repeat_refused(
    path: str, names: Sequence[str], first_rows: tuple[int, int]
) -> DuplicateSegmentError:
    """The commit's error for segments ``names`` that another session of the store at
    ``path`` committed with the same name and rows (``first_rows``: the rows of the
    first): this session wrote over them."""
    a, b = first_rows
    return conflict_error(
        DuplicateSegmentError,
        f"segment {names[0]!r} (rows [{a}, {b})) was committed by another writer session of "
        f"{path!r}, and this session wrote it again at the same rows: its bytes may "
        "have replaced that session's. Nothing was committed: the writer stays open.",
        names,
        "Check the data, then forget(names) and flush() again, or discard().",
    )
