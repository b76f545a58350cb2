"""The bigarray side of every case: the only module to edit when bigarray's API changes.

Each function is what one case times for bigarray, written against the public contract of
the README. While a piece of bigarray does not exist yet, the function raises
:class:`NotImplementedError` and the report prints "not implemented" for that system instead of
crashing; once the API lands the same code starts producing numbers.

No function raises NotImplementedError unconditionally any more; each does so only while
the bigarray module it needs cannot be imported.

The "2020 format" peer lives here too because it reads through bigarray's legacy reader
(:mod:`bigarray.core.legacy`); its writer is an emulation (:mod:`benchmarks.legacy_format`).

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
        raise NotImplementedError(
            f"bigarray.PointerArrayWriter/PointerArray not available: {exc}"
        ) from None
    return PointerArrayWriter, PointerArray


# ------------------------------------------------------------------------------ writing
def write_segments(
    path: str | Path, workload: Workload, segments: dict[str, np.ndarray], *, fsync: bool = True
) -> None:
    """Write all ``segments`` in ONE ``write`` call and commit (cases ``write``, ``write-tiny``).

    ``fsync=False`` commits without forcing the data to disk (still safe against a killed
    process, not against power loss): the same promise the page-cache peers make.
    """
    writer_cls, _ = _api()
    w = writer_cls(
        str(path), shape=workload.shape, dtype=workload.dtype, remove_exist=True, fsync=fsync
    )
    w.write(segments)
    w.close()


def create_writer(path: str | Path, workload: Workload) -> Any:
    """A writer for the whole workload, created in the parent (case ``write-2proc``).

    ``fsync=False``, like the page-cache peers of that case: with a durable commit both the
    1- and the 2-process figure are the disk's speed, and the case measures nothing.
    """
    writer_cls, _ = _api()
    return writer_cls(
        str(path), shape=workload.shape, dtype=workload.dtype, remove_exist=True, fsync=False
    )


def write_part(writer: Any, segments: dict[str, np.ndarray], start_position: int) -> None:
    """In a child process: write this process's segments at row ``start_position``."""
    writer.write(segments, start_position=start_position)


def close_writer(writer: Any) -> None:
    """In the parent: commit what every process wrote."""
    writer.close()


def to_bigarray(dask_array: Any, path: str | Path, workload: Workload) -> None:
    """Write a dask array (chunks on segment boundaries) with ``to_bigarray`` (``scale-write``),
    committing without fsync like the page-cache peers it is compared with.

    Runs on whatever dask scheduler is current (the case makes its Client current); the commit
    happens in this process after every task wrote its rows.
    """
    try:
        from bigarray.dask_backend import to_bigarray as _to_bigarray
    except ImportError as exc:
        raise NotImplementedError(
            f"bigarray.dask_backend.to_bigarray not available: {exc}"
        ) from None
    segments = list(zip(workload.names, workload.lengths.tolist(), strict=True))
    # fsync=False: zarr and the np.memmap/pwrite peers leave their data in the page cache too
    _to_bigarray(dask_array, str(path), segments=segments, remove_exist=True, fsync=False)


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
        raise NotImplementedError(
            f"bigarray.dask_backend.from_bigarray not available: {exc}"
        ) from None
    return from_bigarray(str(path))


# ------------------------------------------------------------------------------ the 2020 format
def _read_legacy() -> Any:
    try:
        from bigarray.core.legacy import read_legacy
    except ImportError as exc:
        raise NotImplementedError(
            f"bigarray.core.legacy.read_legacy not available: {exc}"
        ) from None
    return read_legacy


def legacy_write(path: str | Path, workload: Workload, segments: dict[str, np.ndarray]) -> None:
    """Write the 2020 file format (emulated writer, see :mod:`benchmarks.legacy_format`)."""
    from benchmarks.legacy_format import write_legacy_pointer_file

    write_legacy_pointer_file(path, segments)


def legacy_open_reader(path: str | Path) -> SegmentReader:
    """Open a 2020-format file with bigarray's legacy reader; read segments by name."""
    legacy = _read_legacy()(path)
    array, index = legacy.array, legacy.indices

    def read(name: str) -> np.ndarray:
        start, stop = index[name]
        return np.array(array[start:stop])

    return SegmentReader(read)


def legacy_in_place_open_and_read_one(path: str | Path, name: str) -> np.ndarray:
    """Open a 2020-format file in place as ``PointerArray(path)`` and read one segment."""
    from bigarray import PointerArray

    return np.array(PointerArray(path)[name])


def legacy_open_and_read_one(path: str | Path, name: str) -> np.ndarray:
    """Open a 2020-format file (pickled index) with the legacy reader and read one segment."""
    legacy = _read_legacy()(path)
    start, stop = legacy.indices[name]
    return np.array(legacy.array[start:stop])
