"""Deterministic workloads for the benchmark suite.

Two shapes of ragged collection, each at three sizes:

- ``ragged`` (``W1`` in ``benchmarks/README.md``): segment lengths drawn uniformly from
  ``[50, 150)`` rows with ``numpy.random.default_rng(0).integers(50, 150, n)``, 128 float32
  features per row. At ``--size W1``: 20,000 segments, about 2.0 M rows, 1.02 GB.
- ``tiny`` (``W1-1M``): lengths drawn from ``[1, 4)`` with ``default_rng(0).integers(1, 4, n)``,
  the same 128 float32 features. At ``--size W1``: 1,000,000 segments, about 2.0 M rows,
  also about 1.02 GB (mean length 2 rows x 512 bytes); the index dominates the work.

``smoke`` is small enough for the test suite (seconds); ``large`` is 4x ``W1``.

The data values are a pure function of the row number: rows are generated in blocks of
:data:`BLOCK_ROWS`, block ``b`` from ``default_rng([DATA_SEED, b])``. Any row range can therefore
be regenerated independently (a child process regenerates only its own region), and the whole
array is built block by block straight into its final buffer, so building it never needs twice
its memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

#: Rows generated per block; part of the data definition (changing it changes the values).
BLOCK_ROWS = 65_536
#: Seed of the data values (the lengths use seed 0 as BENCHMARKS.md specifies).
DATA_SEED = 1
#: Features per row, for every workload.
N_FEATURES = 128
DTYPE = np.dtype("float32")

#: size flag -> (segments in ``ragged``, segments in ``tiny``)
SIZES: dict[str, tuple[int, int]] = {
    "smoke": (200, 10_000),
    "W1": (20_000, 1_000_000),
    "large": (80_000, 4_000_000),
}


def segment_name(i: int) -> str:
    """Name of segment ``i``; zero-padded so lexical order equals numeric order."""
    return f"seg{i:07d}"


@dataclass
class Workload:
    """A ragged collection: segment lengths (rows) plus a rule for the row values.

    Parameters
    ----------
    label
        Name used in reports, e.g. ``"W1"`` or ``"W1-1M"``.
    lengths
        Rows per segment, int64.
    n_features
        Columns per row.
    dtype
        Element dtype.
    """

    label: str
    lengths: np.ndarray
    n_features: int = N_FEATURES
    dtype: np.dtype = field(default_factory=lambda: DTYPE)

    # ----------------------------------------------------------------- geometry
    @property
    def n_segments(self) -> int:
        """Number of segments."""
        return int(self.lengths.shape[0])

    @cached_property
    def offsets(self) -> np.ndarray:
        """Row offsets, ``n_segments + 1`` values; segment ``i`` is ``[offsets[i], offsets[i+1])``."""
        out = np.zeros(self.n_segments + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    @property
    def n_rows(self) -> int:
        """Total rows."""
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the concatenated array."""
        return (self.n_rows, self.n_features)

    @property
    def row_nbytes(self) -> int:
        """Bytes per row."""
        return self.n_features * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the concatenated array."""
        return self.n_rows * self.row_nbytes

    @cached_property
    def names(self) -> list[str]:
        """Segment names in row order."""
        return [segment_name(i) for i in range(self.n_segments)]

    def describe(self) -> dict[str, object]:
        """JSON-able summary for reports."""
        return {
            "label": self.label,
            "segments": self.n_segments,
            "rows": self.n_rows,
            "features": self.n_features,
            "dtype": self.dtype.str,
            "bytes": self.nbytes,
            "min_length": int(self.lengths.min()),
            "max_length": int(self.lengths.max()),
        }

    # --------------------------------------------------------------------- data
    def fill_rows(self, start: int, stop: int, out: np.ndarray) -> None:
        """Write the values of rows ``[start, stop)`` into ``out`` (shape ``(stop-start, F)``).

        Each block is generated whole and the overlap copied, so any range gives the same
        values as the full array.
        """
        if out.shape != (stop - start, self.n_features):
            raise ValueError(
                f"out has shape {out.shape}, expected {(stop - start, self.n_features)}"
            )
        first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS if stop > start else -1
        for b in range(first, last + 1):
            b0, b1 = b * BLOCK_ROWS, min((b + 1) * BLOCK_ROWS, self.n_rows)
            lo, hi = max(b0, start), min(b1, stop)
            if lo == b0 and hi == b1:
                # Whole block: generate straight into the destination, no temporary.
                _block_values(b, b1 - b0, self.n_features, out[lo - start : hi - start])
            else:
                tmp = np.empty((b1 - b0, self.n_features), dtype=self.dtype)
                _block_values(b, b1 - b0, self.n_features, tmp)
                out[lo - start : hi - start] = tmp[lo - b0 : hi - b0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new in-RAM array."""
        out = np.empty((stop - start, self.n_features), dtype=self.dtype)
        self.fill_rows(start, stop, out)
        return out

    def materialize(self) -> np.ndarray:
        """The whole concatenated array in RAM, built block by block (no 2x peak)."""
        return self.rows(0, self.n_rows)

    def segment(self, i: int) -> np.ndarray:
        """Values of segment ``i`` (a fresh array)."""
        return self.rows(int(self.offsets[i]), int(self.offsets[i + 1]))

    def iter_segments(self, data: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, view)`` pairs over ``data`` (the materialized array); views, no copies."""
        off = self.offsets
        for i, name in enumerate(self.names):
            yield name, data[off[i] : off[i + 1]]

    def segment_dict(
        self, data: np.ndarray, lo: int = 0, hi: int | None = None
    ) -> dict[str, np.ndarray]:
        """``{name: view}`` for segments ``[lo, hi)`` of ``data``; the argument writers take."""
        hi = self.n_segments if hi is None else hi
        off = self.offsets.tolist()
        names = self.names
        return {names[i]: data[off[i] : off[i + 1]] for i in range(lo, hi)}

    def split(self, parts: int) -> list[tuple[int, int]]:
        """Split the segments into ``parts`` contiguous groups of about equal rows.

        Returns ``[(first_segment, stop_segment), ...]``; used for disjoint parallel writes.
        """
        targets = np.linspace(0, self.n_rows, parts + 1)
        cuts = np.searchsorted(self.offsets, targets[1:-1])
        bounds = [0, *(int(c) for c in cuts), self.n_segments]
        return list(itertools.pairwise(bounds))

    def verify(self, read: Callable[[str], np.ndarray], n: int = 3) -> None:
        """Check that ``read(name)`` returns the right values for ``n`` segments (first, last, one).

        Raises
        ------
        ValueError
            On a wrong shape or wrong values: a fast wrong store must not count as a result.
        """
        picks = sorted({0, self.n_segments - 1, self.n_segments // 2}) if n >= 3 else [0]
        for i in picks:
            got = np.asarray(read(self.names[i]))
            want = self.segment(i)
            if got.shape != want.shape or not np.array_equal(got, want):
                raise ValueError(
                    f"segment {self.names[i]!r} reads back wrong: shape {got.shape}, expected "
                    f"{want.shape}; the system under test stored different data"
                )

    def random_segment_ids(self, n: int, seed: int = 2) -> np.ndarray:
        """``n`` segment numbers drawn uniformly (with replacement), deterministic."""
        return np.random.default_rng(seed).integers(0, self.n_segments, n)


def _block_values(block: int, n_rows: int, n_features: int, out: np.ndarray) -> None:
    """Fill ``out`` with block ``block``'s values: uniform [0, 1) float32, seeded per block."""
    rng = np.random.default_rng([DATA_SEED, block])
    if out.flags.c_contiguous:
        rng.random(out=out.reshape(-1), dtype=np.float32)
    else:
        out[...] = rng.random((n_rows, n_features), dtype=np.float32)


def make_workload(kind: str, size: str) -> Workload:
    """Build workload ``kind`` (``"ragged"`` or ``"tiny"``) at ``size`` (see :data:`SIZES`).

    Raises
    ------
    ValueError
        On an unknown kind or size.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    n_ragged, n_tiny = SIZES[size]
    suffix = "" if size == "W1" else f"@{size}"
    rng = np.random.default_rng(0)
    if kind == "ragged":
        return Workload(f"W1{suffix}", rng.integers(50, 150, n_ragged).astype(np.int64))
    if kind == "tiny":
        return Workload(f"W1-1M{suffix}", rng.integers(1, 4, n_tiny).astype(np.int64))
    raise ValueError(f"unknown workload kind {kind!r}; expected 'ragged' or 'tiny'")
