"""A writer for the original 2020 bigarray file format, for the "2020 format" peer.

The 2020 code itself is not part of this repository. This module writes the same bytes from the
format description in :mod:`bigarray.core.legacy` (magic, 8 ASCII length digits, a marshal header,
data at the first multiple of the itemsize at or after byte 502, then a pickled dict
``name -> (start, stop)`` and its 8-byte big-endian length), the way the 2020 writer did it: one
memmap store per segment, then the pickled index appended. It does not reproduce the 2020
writer's ``multiprocessing.Manager`` or its ``msync`` calls, so its write figure is an upper bound
for the original (BENCHMARKS.md anchors the original at 0.30 GB/s). Reads go through bigarray's
own legacy reader (:func:`bigarray.core.legacy.read_legacy`), as a user converting old files would.
"""

from __future__ import annotations

import marshal
import pickle
from pathlib import Path

import numpy as np

from benchmarks.peers import fill_segments

MAGIC = b"mmapdata"
_HEADER_SPAN = 8 + 8 + 486


def write_legacy_pointer_file(path: str | Path, segments: dict[str, np.ndarray]) -> None:
    """Write ``segments`` (in order, same dtype and row shape) as one 2020-format PointerArray file."""
    first = next(iter(segments.values()))
    dtype = np.dtype(first.dtype)
    n_rows = sum(len(a) for a in segments.values())
    shape = (n_rows, *first.shape[1:])
    meta = marshal.dumps([str(dtype), shape])
    offset = -(-_HEADER_SPAN // dtype.itemsize) * dtype.itemsize
    data_bytes = n_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    with open(path, "wb") as f:
        f.write(MAGIC + b"%8d" % len(meta) + meta)
        f.truncate(offset + data_bytes)
    mm = np.memmap(str(path), dtype=dtype, mode="r+", offset=offset, shape=shape)
    index = fill_segments(mm, segments)
    del mm
    blob = pickle.dumps(index)
    with open(path, "ab") as f:
        f.write(blob)
        f.write(len(blob).to_bytes(8, "big"))
