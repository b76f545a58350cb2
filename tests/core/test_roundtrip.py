"""Property tests: whatever is written (any allowed dtype, row shape, segment layout, in
several calls, from two processes) reads back equal, by name and as a whole."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bigarray import PointerArray, PointerArrayWriter

DTYPES = st.sampled_from(
    [
        "<i1",
        "<i2",
        "<i4",
        "<i8",
        "<u1",
        "<u2",
        "<u4",
        "<u8",
        "<f2",
        "<f4",
        "<f8",
        "<c8",
        "<c16",
        "|b1",
        "<M8[ns]",
        "<M8[D]",
        "<m8[s]",
        "|S5",
        "<U7",
    ]
)


@st.composite
def collections(draw: st.DrawFn) -> tuple[np.dtype, dict[str, np.ndarray], list[int]]:
    dtype = np.dtype(draw(DTYPES))
    trailing = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    n = draw(st.integers(1, 12))
    names = draw(st.lists(st.text(min_size=0, max_size=8), min_size=n, max_size=n, unique=True))
    segs = {}
    for name in names:
        rows = draw(st.integers(0, 5))
        segs[name] = draw(hnp.arrays(dtype, (rows, *trailing)))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    return dtype, segs, cuts


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    # NaN == NaN and NaT == NaT for the purpose of a round trip: compare bytes
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _write_part(args: tuple[PointerArrayWriter, dict[str, np.ndarray], int]) -> None:
    writer, part, start = args
    writer.write(part, start_position=start)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(collections())
def test_roundtrip_several_writes(case: tuple[np.dtype, dict[str, np.ndarray], list[int]]) -> None:
    dtype, segs, cuts = case
    names = list(segs)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s"
        trailing = next(iter(segs.values())).shape[1:]
        with PointerArrayWriter(path, shape=(0, *trailing), dtype=dtype) as w:
            for a, b in zip([0, *cuts], [*cuts, len(names)]):
                part = {k: segs[k] for k in names[a:b]}
                if part:
                    w.write(part)
        x = PointerArray(path)
        assert x.dtype == dtype and x.shape[1:] == trailing
        assert list(x.indices) == names  # row order is write order for appends
        for k, v in segs.items():
            assert _same(np.asarray(x[k]), v)
        whole = np.concatenate(list(segs.values())) if segs else None
        assert whole is None or _same(np.asarray(x), whole)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(collections())
def test_roundtrip_two_processes(case: tuple[np.dtype, dict[str, np.ndarray], list[int]]) -> None:
    dtype, segs, _ = case
    names = list(segs)
    half = len(names) // 2
    parts = [{k: segs[k] for k in names[:half]}, {k: segs[k] for k in names[half:]}]
    first_rows = sum(len(v) for v in parts[0].values())
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s"
        trailing = next(iter(segs.values())).shape[1:]
        w = PointerArrayWriter(path, shape=(0, *trailing), dtype=dtype)
        with mp.get_context("fork").Pool(2) as pool:
            pool.map(_write_part, [(w, parts[0], 0), (w, parts[1], first_rows)])
        w.close()
        x = PointerArray(path)
        assert len(x.indices) == len(names)
        for k, v in segs.items():
            assert _same(np.asarray(x[k]), v)
