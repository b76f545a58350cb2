"""The one chunk planner (:mod:`bigarray.core.chunks`), shared by dask, the lazy handle and
the xarray engine: segment-aligned row chunks of at most a target size in bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bigarray.core import chunks as chunks_mod
from bigarray.core.chunks import rows_per_chunk, segment_chunks


def _layout(lengths: list[int], gaps: list[int]) -> tuple[np.ndarray, int]:
    starts, pos = [], 0
    for n, g in zip(lengths, gaps):
        pos += g
        starts.append(pos)
        pos += n
    s = np.array(starts, np.int64)
    return np.stack([s, s + np.array(lengths, np.int64)], 1).reshape(-1, 2), pos


def test_the_target_is_bytes_and_rows_are_whole() -> None:
    assert (
        rows_per_chunk(1000, 8) == 125 and rows_per_chunk(7, 8) == 1 and rows_per_chunk(5, 0) == 5
    )
    b = np.array([[0, 10], [10, 30], [30, 35]])
    assert segment_chunks(b, 35, 8, 30 * 8) == (30, 5)
    assert segment_chunks(b, 35, 8, 30 * 8 - 1) == (10, 25)
    assert segment_chunks(b, 35, 8, 19 * 8) == (10, 10, 10, 5)  # 20 rows split in two
    assert segment_chunks(b, 35, 8, 19 * 8, split=False) == (10, 20, 5)
    assert segment_chunks(b, 35, 8, None) == (10, 20, 5)
    assert segment_chunks(b[::-1], 35, 8, 30 * 8 - 1) == (10, 25)  # bounds in any order


def test_forced_cuts_are_always_cuts() -> None:
    b = np.array([[0, 10], [10, 30], [30, 35]])
    assert segment_chunks(b, 35, 1, 1000, forced=[30]) == (30, 5)
    assert segment_chunks(None, 35, 1, 1000, forced=[12, 0, 35, 99]) == (12, 23)
    assert segment_chunks(b, 35, 1, None, forced=[12]) == (10, 2, 18, 5)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=80),
    st.lists(st.integers(0, 5), min_size=81, max_size=81),
    st.integers(1, 120),
    st.lists(st.integers(0, 4000), max_size=4),
    st.booleans(),
)
def test_both_walks_give_the_same_plan_and_keep_every_rule(
    lengths: list[int], gaps: list[int], target: int, forced: list[int], split: bool
) -> None:
    b, rows = _layout(lengths, gaps[: len(lengths)])
    rows += gaps[-1]
    forced = [f % (rows + 1) for f in forced]
    plan = segment_chunks(b, rows, 1, target, forced=forced, split=split)
    assert sum(plan) == rows and (all(c > 0 for c in plan) or rows == 0)
    cand = chunks_mod._unique(np.concatenate([[0, rows], b.reshape(-1), forced]))
    stops = np.flatnonzero(np.isin(cand, [f for f in forced if 0 < f < rows])) if forced else None
    if rows and target < rows:
        assert chunks_mod._walk_few(cand, target, stops) == chunks_mod._walk_many(
            cand, target, stops
        )
    cuts = np.cumsum(plan)[:-1]
    assert {f for f in forced if 0 < f < rows} <= set(cuts.tolist())
    for c, size in zip(np.cumsum(plan).tolist(), plan):
        inside = (b[:, 0] < c) & (c < b[:, 1])
        if inside.any() and c not in forced:
            # only a segment longer than the target is ever cut (a forced cut aside)
            assert split and (b[inside, 1] - b[inside, 0] > target).all()
        if split:
            assert size <= target
