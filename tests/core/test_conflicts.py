"""The commit's conflict errors (bigarray.core.conflicts): which segments conflict, and an
error that names them (all in ``exc.segments``, up to 10 in the message) and says how to
recover."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bigarray import PointerArray, PointerArrayWriter
from bigarray.core.conflicts import (
    conflict_error,
    conflicting_names,
    merge_refused,
    repeat_refused,
)
from bigarray.core.index import SegmentArrays
from bigarray.errors import DuplicateSegmentError, OverlapError


def _segments(pairs: list[tuple[str, int, int]]) -> SegmentArrays:
    return SegmentArrays.from_names(
        [n for n, _, _ in pairs],
        np.array([a for _, a, _ in pairs], np.int64),
        np.array([b for _, _, b in pairs], np.int64),
    )


def test_conflicting_names_are_exactly_the_new_segments_a_merge_refuses() -> None:
    committed = _segments([("a", 0, 5), ("b", 5, 10)])
    new = _segments(
        [
            ("c", 10, 12),  # fine
            ("a", 0, 5),  # the same name at the same rows: a rerun, not a conflict
            ("b", 20, 22),  # a committed name at other rows
            ("d", 3, 4),  # rows inside committed 'a'
            ("e", 30, 32),  # one name twice among the new ones, other rows
            ("e", 40, 42),
            ("f", 50, 55),  # two new segments sharing rows
            ("g", 52, 53),
            ("h", 7, 7),  # empty: shares no rows
        ]
    )
    assert conflicting_names(committed, new) == ["b", "d", "e", "f", "g"]
    assert conflicting_names(committed, _segments([("c", 10, 12), ("a", 0, 5)])) == []
    assert conflicting_names(SegmentArrays.empty(), _segments([("x", 0, 2), ("y", 1, 3)])) == [
        "x",
        "y",
    ]


def test_the_error_names_up_to_ten_segments_and_carries_all() -> None:
    few = conflict_error(OverlapError, "Head.", ["p", "q"], "Tail.")
    assert isinstance(few, OverlapError)
    assert str(few) == "Head. Conflicting segment(s) of this session (2): 'p', 'q'. Tail."
    assert few.segments == ["p", "q"]  # type: ignore[attr-defined]
    names = [f"s{i}" for i in range(11)]
    many = conflict_error(DuplicateSegmentError, "Head.", names, "Tail.")
    shown = ", ".join(repr(n) for n in names[:10])
    assert f"(11): {shown} .... Tail." in str(many)
    assert "'s10'" not in str(many)
    assert many.segments == names  # type: ignore[attr-defined]


def test_merge_refused_keeps_the_kind_and_message_of_the_merge_error() -> None:
    err = merge_refused(OverlapError("segments 'x' and 'y' overlap."), ["y"])
    assert type(err) is OverlapError
    assert str(err) == (
        "segments 'x' and 'y' overlap. Nothing was committed: the writer stays open with its "
        "uncommitted segments. Conflicting segment(s) of this session (1): 'y'. Call "
        "forget(names) to drop them and flush() again, or discard() to drop everything "
        "uncommitted."
    )
    assert err.segments == ["y"]  # type: ignore[attr-defined]


def test_repeat_refused_names_the_first_segment_and_its_rows() -> None:
    err = repeat_refused("/s", ["t", "u"], (100, 104))
    assert isinstance(err, DuplicateSegmentError)
    assert str(err).startswith(
        "segment 't' (rows [100, 104)) was committed by another writer session of '/s'"
    )
    assert "(2): 't', 'u'. Check the data, then forget(names) and flush() again" in str(err)
    assert err.segments == ["t", "u"]  # type: ignore[attr-defined]


def test_a_commit_refused_by_another_session_names_every_conflict_and_recovers(
    tmp_path: Path,
) -> None:
    """Two sessions write twelve names; the second to commit is refused with all twelve
    (ten in the message), keeps them pending, and commits the rest once they are forgotten."""
    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="f8") as w:
        w.write({"base": np.zeros((2, 3))})
    names = [f"n{i:02d}" for i in range(12)]
    first = PointerArrayWriter(path)
    second = PointerArrayWriter(path)
    first.write({n: np.ones((2, 3)) for n in names})
    second.write({"ok": np.full((1, 3), 5.0), **{n: np.zeros((3, 3)) for n in names}})
    first.close()
    with pytest.raises(
        DuplicateSegmentError, match=r"Conflicting segment\(s\) of this session \(12\)"
    ) as e:
        second.close()
    assert e.value.segments == names  # type: ignore[attr-defined]
    assert second.writer.conflicts == names
    assert "'n09' ..." in str(e.value) and "'n10'" not in str(e.value)
    assert second.writer.forget(e.value.segments) == 12  # type: ignore[attr-defined]
    second.close()
    x = PointerArray(path)
    assert sorted(x.indices) == sorted(["base", "ok", *names])
    np.testing.assert_array_equal(x["ok"], np.full((1, 3), 5.0))
    np.testing.assert_array_equal(x["n11"], np.ones((2, 3)))
