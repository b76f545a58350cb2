"""The bigarray side of every case: the only module to edit when bigarray's API changes.

Each function is what one case times for bigarray, written against the public contract of
``shared/DESIGN.md``. While a piece of bigarray does not exist yet, the function raises
:class:`NotImplementedError` and the report prints "not implemented" for that system instead of
crashing; once the API lands the same code starts producing numbers.

Scaffolds still raising NotImplementedError unconditionally (TODO for the lead):

- :func:`to_bigarray`: needs the final signature of ``bigarray.dask_backend.to_bigarray``
  (how ``segments=`` is given).
- :func:`legacy_write`, :func:`legacy_open_reader`, :func:`legacy_open_and_read_one`,
  :func:`legacy_write_segments`: the original 2020 format, via bigarray's legacy reader or a copy
  of the original code kept outside the repository.

Conventions: paths are store paths (directories); ``segments`` is ``{name: ndarray}`` with the
segments in row order; readers return in-RAM copies (see :mod:`benchmarks.peers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers import SegmentReader
from benchmarks.workloads import Workload


def _api() -> tuple[Any, Any]:
    """``(PointerArrayWriter, PointerArray)``, or NotImplementedError while they do not exist."""
    try:
        from bigarray import PointerArray, PointerArrayWriter
    except ImportError as exc:
        raise NotImplementedError(f"bigarray.PointerArrayWriter/PointerArray not available: {exc}") from None
    return PointerArrayWriter, PointerArray


# ------------------------------------------------------------------------------ writing
def write_segments(path: str | Path, workload: Workload, segments: dict[str, np.ndarray]) -> None:
    """Write all ``segments`` in ONE ``write`` call and commit (cases ``write``, ``write-tiny``)."""
    writer_cls, _ = _api()
    w = writer_cls(str(path), shape=workload.shape, dtype=workload.dtype, remove_exist=True)
    w.write(segments)
    w.close()


def create_writer(path: str | Path, workload: Workload) -> Any:
    """A writer for the whole workload, created in the parent (case ``write-2proc``)."""
    writer_cls, _ = _api()
    return writer_cls(str(path), shape=workload.shape, dtype=workload.dtype, remove_exist=True)


def write_part(writer: Any, segments: dict[str, np.ndarray], start_position: int) -> None:
    """In a child process: write this process's segments at row ``start_position``."""
    writer.write(segments, start_position=start_position)


def close_writer(writer: Any) -> None:
    """In the parent: commit what every process wrote."""
    writer.close()


def to_bigarray(dask_array: Any, path: str | Path, workload: Workload) -> None:
    """Write a dask array (chunks on segment boundaries) through ``to_bigarray`` (``scale-write``).

    TODO(lead): call ``bigarray.dask_backend.to_bigarray(dask_array, path, segments=...)`` once
    its ``segments`` argument is fixed; ``workload.names`` and ``workload.offsets`` give the
    names and row offsets (``offsets[i]:offsets[i+1]`` is segment ``i``).
    """
    raise NotImplementedError("benchmarks.cases_bigarray.to_bigarray: scaffold, wire to_bigarray here")


# ------------------------------------------------------------------------------ reading
def open_reader(path: str | Path) -> SegmentReader:
    """Open the store once; read segments by name (case ``random-reads``)."""
    _, array_cls = _api()
    x = array_cls(str(path))

    def read(name: str) -> np.ndarray:
        return np.array(x[name])

    return SegmentReader(read)


def open_and_read_one(path: str | Path, name: str) -> np.ndarray:
    """Open the store and read one segment by name, both timed (case ``open-read-one``)."""
    _, array_cls = _api()
    x = array_cls(str(path))
    return np.array(x[name])


def numpy_sum(path: str | Path) -> float:
    """``np.sum`` on an open ``PointerArray`` (it is a ``numpy.memmap``)."""
    _, array_cls = _api()
    return float(np.sum(array_cls(str(path))))


def dask_array(path: str | Path) -> Any:
    """``bigarray.dask_backend.from_bigarray(path)`` with default chunks (sum and graph cases)."""
    try:
        from bigarray.dask_backend import from_bigarray
    except ImportError as exc:
        raise NotImplementedError(f"bigarray.dask_backend.from_bigarray not available: {exc}") from None
    return from_bigarray(str(path))


# ------------------------------------------------------------------------------ the 2020 format
_LEGACY = (
    "original 2020 bigarray format: scaffold in benchmarks/cases_bigarray.py "
    "(needs bigarray's legacy reader or a copy of the 2020 code outside the repository)"
)


def legacy_write(path: str | Path, workload: Workload, segments: dict[str, np.ndarray]) -> None:
    """Write with the 2020 library (peer "original bigarray (2020)"). TODO(lead)."""
    raise NotImplementedError(_LEGACY)


def legacy_open_reader(path: str | Path) -> SegmentReader:
    """Open a 2020-format store for random reads. TODO(lead)."""
    raise NotImplementedError(_LEGACY)


def legacy_open_and_read_one(path: str | Path, name: str) -> np.ndarray:
    """Open a 2020-format store (pickled index) and read one segment. TODO(lead)."""
    raise NotImplementedError(_LEGACY)
