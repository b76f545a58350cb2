"""The peers of ``benchmarks/README.md``, as plain functions the cases call.

Every peer stores the same concatenated ``(rows, 128)`` float32 array:

- numpy: one ``.npy`` written through ``numpy.lib.format.open_memmap``; segments are found
  through a Python dict ``name -> (start, stop)`` (rows, half-open). This is the physical
  reference for reads.
- h5py: one dataset ``data``, either contiguous or chunked (:data:`H5_CHUNK_ROWS` rows).
- zarr v3: uncompressed, chunks of :data:`ZARR_CHUNK_ROWS` rows.

A "read" always returns an in-RAM copy of the segment (``np.array(view)`` for memory maps),
because h5py and zarr can only return copies; returning a memmap view would time a dict lookup
and a slice, not a read.

No peer calls ``fsync`` or ``msync`` unless its name says so: BENCHMARKS.md measures writes into
a warm page cache (``dd`` to page cache is the reference), so ``open_memmap`` results are
unmapped, not flushed. The ``+ fsync`` variants exist because bigarray's commit is durable.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from benchmarks.workloads import Workload

#: zarr chunk rows, as BENCHMARKS.md specifies.
ZARR_CHUNK_ROWS = 65_536
#: h5py chunk rows: 4 MiB chunks of 128 float32 (h5py's auto-chunking would pick far smaller
#: chunks; 4 MiB keeps bulk writes fast while a segment read still costs a whole chunk).
H5_CHUNK_ROWS = 8_192
#: Rows per dask chunk for the path-based loader and ``from_array`` peers.
DASK_CHUNK_ROWS = 65_536


class SegmentReader:
    """Read segments by name: ``reader(name) -> ndarray`` (an in-RAM copy); ``close()`` after use."""

    def __init__(self, read: Callable[[str], np.ndarray], close: Callable[[], None] | None = None):
        self._read = read
        self._close = close

    def __call__(self, name: str) -> np.ndarray:
        return self._read(name)

    def close(self) -> None:
        """Release files and maps."""
        if self._close is not None:
            self._close()
            self._close = None


def offsets_dict(workload: Workload) -> dict[str, tuple[int, int]]:
    """The peers' segment index: a Python dict ``name -> (start, stop)`` in rows."""
    off = workload.offsets.tolist()
    return {name: (off[i], off[i + 1]) for i, name in enumerate(workload.names)}


# ------------------------------------------------------------------------------ raw write
def raw_write(path: str | Path, data: np.ndarray, fsync: bool = False) -> None:
    """Reference: write the array's bytes with plain ``write()`` calls (then ``fsync`` if asked)."""
    view = np.ascontiguousarray(data).data.cast("B")
    with open(path, "wb", buffering=0) as f:
        pos = 0
        while pos < len(view):
            # One write() may be short (Linux caps a call at about 2 GiB).
            pos += f.write(view[pos : pos + (1 << 30)])
        if fsync:
            os.fsync(f.fileno())


def fsync_path(path: str | Path) -> None:
    """``fsync`` a file written by a library that does not offer it (h5py)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ numpy memmap
def npy_write(path: str | Path, data: np.ndarray) -> None:
    """Write ``data`` into a fresh ``.npy`` through ``open_memmap`` (stores into fresh pages)."""
    mm = open_memmap(str(path), mode="w+", dtype=data.dtype, shape=data.shape)
    mm[:] = data
    # Unmap without msync: the dirty pages reach the file through the page cache.
    del mm


def npy_reader(path: str | Path, index: dict[str, tuple[int, int]]) -> SegmentReader:
    """Open the ``.npy`` as a memmap; read a segment by name through the dict.

    Slices are taken from a plain ``ndarray`` view of the map: slicing the ``np.memmap`` subclass
    runs its Python-level ``__array_finalize__`` (about 3 us a slice here), which is overhead,
    not reading; the reference should be the fastest honest way to read a mapped file.
    """
    mm = np.load(str(path), mmap_mode="r").view(np.ndarray)

    def read(name: str) -> np.ndarray:
        start, stop = index[name]
        return np.array(mm[start:stop])

    return SegmentReader(read)


def npy_sum(path: str | Path) -> float:
    """``numpy.sum`` over the memmap: one thread, the single-core reference for sums."""
    mm = np.load(str(path), mmap_mode="r")
    return float(np.sum(mm))


# ------------------------------------------------------------------------------ h5py
def h5_write(path: str | Path, data: np.ndarray, chunked: bool, fsync: bool = False) -> None:
    """Write ``data`` as dataset ``data``; contiguous or chunked (``H5_CHUNK_ROWS`` rows)."""
    import h5py

    chunks = (min(H5_CHUNK_ROWS, data.shape[0]), data.shape[1]) if chunked else None
    with h5py.File(str(path), "w") as f:
        dset = f.create_dataset("data", shape=data.shape, dtype=data.dtype, chunks=chunks)
        dset[...] = data
    if fsync:
        fsync_path(path)


def h5_reader(path: str | Path, index: dict[str, tuple[int, int]]) -> SegmentReader:
    """Open the HDF5 file; read a segment by name through the same dict as numpy."""
    import h5py

    f = h5py.File(str(path), "r")
    dset = f["data"]

    def read(name: str) -> np.ndarray:
        start, stop = index[name]
        return dset[start:stop]

    return SegmentReader(read, f.close)


# ------------------------------------------------------------------------------ zarr v3
def zarr_create(path: str | Path, shape: tuple[int, ...], dtype: Any) -> Any:
    """An empty uncompressed zarr v3 array with ``ZARR_CHUNK_ROWS``-row chunks."""
    import zarr

    return zarr.create_array(
        store=str(path),
        shape=shape,
        dtype=dtype,
        chunks=(min(ZARR_CHUNK_ROWS, shape[0]), *shape[1:]),
        compressors=None,
        filters=None,
        zarr_format=3,
        overwrite=True,
    )


def zarr_write(path: str | Path, data: np.ndarray) -> None:
    """Write ``data`` into a new uncompressed zarr v3 array."""
    z = zarr_create(path, data.shape, data.dtype)
    z[...] = data


def zarr_reader(path: str | Path, index: dict[str, tuple[int, int]]) -> SegmentReader:
    """Open the zarr array; read a segment by name through the same dict as numpy."""
    import zarr

    z = zarr.open_array(str(path), mode="r")

    def read(name: str) -> np.ndarray:
        start, stop = index[name]
        return np.asarray(z[start:stop])

    return SegmentReader(read)


# ------------------------------------------------------------------------------ dask arrays
def zarr_dask(path: str | Path) -> Any:
    """``dask.array.from_zarr`` on the zarr store (one task per zarr chunk)."""
    import dask.array as da

    return da.from_zarr(str(path))


def _load_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Task body of the path-based loader: map the ``.npy`` on the worker, slice rows."""
    return np.load(path, mmap_mode="r")[start:stop]


def npy_path_dask(path: str | Path, chunk_rows: int = DASK_CHUNK_ROWS) -> Any:
    """A dask array over a ``.npy`` whose tasks carry ``(path, start, stop)``, never data.

    This is the "path-based loader on a .npy" of BENCHMARKS.md: each task maps the file where it
    runs, so the graph pickles in bytes per chunk and workers read through their page cache.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    mm = np.load(str(path), mmap_mode="r")
    n_rows, shape_rest, dtype = mm.shape[0], mm.shape[1:], mm.dtype
    del mm
    starts = list(range(0, n_rows, chunk_rows)) or [0]
    stops = [min(s + chunk_rows, n_rows) for s in starts]
    name = "npy-rows-" + tokenize(str(path), chunk_rows, os.path.getmtime(path))
    tail = (0,) * len(shape_rest)
    dsk: dict[Any, Any] = {
        (name, i, *tail): (_load_rows, str(path), s, e)
        for i, (s, e) in enumerate(zip(starts, stops, strict=True))
    }
    chunks = (tuple(e - s for s, e in zip(starts, stops, strict=True)), *((n,) for n in shape_rest))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks, dtype=dtype)


def memmap_from_array(path: str | Path, chunk_rows: int = DASK_CHUNK_ROWS) -> Any:
    """``dask.array.from_array`` on a ``numpy.memmap``: the anti-pattern BENCHMARKS.md names.

    With a processes scheduler the memmap slices are pickled as ndarrays, i.e. the data itself
    travels through the graph.
    """
    import dask.array as da

    mm = np.load(str(path), mmap_mode="r")
    return da.from_array(mm, chunks=(chunk_rows, *mm.shape[1:]))


def graph_pickle_bytes(x: Any) -> int:
    """Bytes of the pickled low-level graph of dask collection ``x`` (what is shipped)."""
    import cloudpickle

    return len(cloudpickle.dumps(dict(x.__dask_graph__()), protocol=pickle.HIGHEST_PROTOCOL))


# ------------------------------------------------------------------------------ tiny segments
def fill_segments(mm: np.ndarray, segments: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """Store ``segments`` back to back into ``mm`` (a loop of slice stores, as the 2020 library
    did); return ``name -> (start, stop)``."""
    index: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, arr in segments.items():
        stop = pos + len(arr)
        mm[pos:stop] = arr
        index[name] = (pos, stop)
        pos = stop
    return index


def npy_dict_write_segments(
    path: str | Path, segments: dict[str, np.ndarray], index_format: str = "pickle"
) -> None:
    """Write a dict of segments the way the 2020 library did: loop, store, then save the index.

    ``path`` is a directory: ``data.npy`` plus ``index.pkl`` (a pickled dict, like the 2020
    format) or ``index.json``.
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    first = next(iter(segments.values()))
    n_rows = sum(len(a) for a in segments.values())
    mm = open_memmap(
        str(p / "data.npy"), mode="w+", dtype=first.dtype, shape=(n_rows, *first.shape[1:])
    )
    index = fill_segments(mm, segments)
    del mm
    if index_format == "pickle":
        with open(p / "index.pkl", "wb") as f:
            pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL)
    elif index_format == "json":
        with open(p / "index.json", "w") as f:
            json.dump(index, f)
    else:
        raise ValueError(f"index_format must be 'pickle' or 'json', not {index_format!r}")


def npy_dict_open_read_one(path: str | Path, name: str, index_format: str = "pickle") -> np.ndarray:
    """Open a store written by :func:`npy_dict_write_segments` and read one segment by name."""
    p = Path(path)
    mm = np.load(str(p / "data.npy"), mmap_mode="r")
    if index_format == "pickle":
        with open(p / "index.pkl", "rb") as f:
            index = pickle.load(f)
    else:
        with open(p / "index.json") as f:
            index = json.load(f)
    start, stop = index[name]
    return np.array(mm[start:stop])


# ------------------------------------------------------------------------------ dask.store targets
class NpyRegionTarget:
    """A ``dask.array.store`` target writing rows into a pre-sized ``.npy`` from any process.

    ``method="memmap"`` stores through ``np.memmap`` (page faults on fresh pages);
    ``method="pwrite"`` uses ``os.pwrite`` at the row's byte offset. It pickles as its path.
    """

    def __init__(self, path: str | Path, method: str = "memmap") -> None:
        if method not in ("memmap", "pwrite"):
            raise ValueError(f"method must be 'memmap' or 'pwrite', not {method!r}")
        self.path = str(path)
        self.method = method
        mm = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.header = mm.shape, mm.dtype, int(mm.offset)
        del mm

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        rows = key[0] if isinstance(key, tuple) else key
        start = rows.start or 0
        if self.method == "memmap":
            mm = np.load(self.path, mmap_mode="r+")
            mm[start : start + len(value)] = value
            del mm
            return
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        pwrite_all(
            self.path,
            np.ascontiguousarray(value, dtype=self.dtype),
            self.header + start * row_bytes,
        )


def presize_npy(path: str | Path, shape: tuple[int, ...], dtype: Any) -> None:
    """Create a ``.npy`` of ``shape`` with a valid header; the body is a sparse hole."""
    mm = open_memmap(str(path), mode="w+", dtype=dtype, shape=shape)
    del mm


def pwrite_all(path: str, data: np.ndarray, offset: int) -> None:
    """``os.pwrite`` all of ``data`` at byte ``offset`` of ``path`` (looping on short writes)."""
    view = np.ascontiguousarray(data).data.cast("B")
    fd = os.open(path, os.O_WRONLY)
    try:
        pos = 0
        while pos < len(view):
            pos += os.pwrite(fd, view[pos : pos + (1 << 30)], offset + pos)
    finally:
        os.close(fd)
