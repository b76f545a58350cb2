"""Writing a run of arrays back to back into a data file: the writer's hot path.

:func:`write_batches` chooses how: segments large enough that the syscall count does not
matter go straight from the caller's memory with one ``pwritev`` (no copy); many small
ones are packed into ~32 MiB buffers by :func:`write_packed` (one copy, casting on the way,
one ``pwrite`` per buffer for thousands of segments). Either way a
:class:`~bigarray.core.integrity.WriteFollower` may sum (and start writing back) the whole
blocks behind the write as it goes.

The checks of the arrays (:mod:`bigarray.core.rowcheck`) run before, except for many small
arrays, whose row shapes and dtypes ride on ``np.concatenate``: when it fails, the
``check_arrays`` callback the writer passes runs the full checks, which name the bad array.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from . import integrity
from .crash import crash_point
from .fileutil import pwrite_all
from .format import as_bytes
from .rowcheck import check_fits, narrowing_ints

__all__ = [
    "BATCH_BYTES",
    "FAST_MIN_ARRAYS",
    "VECTOR_MIN_BYTES",
    "write_batches",
    "write_packed",
]

BATCH_BYTES = 32 << 20
VECTOR_MIN_BYTES = 16 << 10  # mean segment size above which pwritev beats packing
FAST_MIN_ARRAYS = 4096  # from this many arrays, shape/dtype checks ride on np.concatenate


def write_batches(
    fd: int,
    arrays: list[np.ndarray],
    lengths: np.ndarray,
    start: int,
    *,
    data_offset: int,
    row_nbytes: int,
    dtype: np.dtype,
    path: str,
    check_arrays: Callable[[list[np.ndarray]], object],
    fsync: bool,
    checksums: bool,
    defer_sums: bool,
) -> integrity.WriteFollower | None:
    """``pwrite`` ``arrays`` (of ``lengths`` rows each) back to back from row ``start`` of
    the data file open as ``fd``, whose rows (``row_nbytes`` each) begin at byte
    ``data_offset``; return the follower summing the whole blocks written (see
    :class:`~bigarray.core.integrity.WriteFollower`), which may still be running.

    ``fsync``/``checksums`` say what the follower does (start writeback, sum blocks);
    ``defer_sums`` lets it finish in the background (the owner's commit waits for it).
    ``check_arrays`` runs the full checks of the arrays when a fast path finds them wrong
    (it raises, naming the array); ``path`` names the store in I/O errors.
    """
    if not arrays:
        return None
    offset = data_offset + start * row_nbytes
    ends = np.cumsum(lengths) * row_nbytes  # byte end of each array
    total = int(ends[-1]) if len(ends) else 0
    stop = start + int(lengths.sum())
    follow = None
    if (fsync or checksums) and integrity.WriteFollower.wanted(row_nbytes, start, stop):
        follow = integrity.WriteFollower(
            fd,
            data_offset,
            row_nbytes,
            start,
            stop,
            writeback=fsync,
            checksum=checksums,
            defer_sums=defer_sums,  # the commit waits for them; write() need not
        )
    progress = follow.advance if follow is not None else None
    try:
        if total >= VECTOR_MIN_BYTES * len(arrays) and all(
            a.dtype == dtype and a.flags.c_contiguous for a in arrays
        ):
            # Segments large enough that the syscall count does not matter: hand the
            # kernel the caller's buffers (pwritev), saving a full copy of the data.
            if len(arrays) >= FAST_MIN_ARRAYS:
                check_arrays(arrays)  # the writer left the row shapes to np.concatenate
            if dtype.kind in "mM":  # datetimes do not export the buffer protocol
                bufs: Sequence[Any] = [as_bytes(a) for a in arrays if a.size]
            else:  # C-contiguous arrays are buffers: no per-array view (~0.3 us each)
                bufs = arrays
            pwrite_all(fd, bufs, offset, path, progress)
        else:
            write_packed(fd, arrays, ends, offset, dtype, path, check_arrays, progress)
    except BaseException:
        if follow is not None:
            follow.cancel()
        raise
    if follow is not None:
        follow.finish()
    return follow


def write_packed(
    fd: int,
    arrays: list[np.ndarray],
    ends: np.ndarray,
    offset: int,
    dtype: np.dtype,
    path: str,
    check_arrays: Callable[[list[np.ndarray]], object],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Concatenate runs of ``arrays`` into ~32 MiB buffers (casting to ``dtype`` on the
    way) and write each with one ``pwrite``, from byte ``offset`` of ``fd``. ``ends`` is
    the byte end of each array relative to ``offset``; ``progress`` is told the bytes
    written so far after each buffer."""
    total = int(ends[-1])
    casting: Literal["safe", "same_kind"] = "safe" if dtype.kind in "SU" else "same_kind"
    # cut the list where the running byte count crosses each multiple of BATCH_BYTES
    marks = np.arange(BATCH_BYTES, total, BATCH_BYTES)
    cuts = np.unique(np.searchsorted(ends, marks, side="left") + 1).tolist()
    pos = offset
    for lo, hi in itertools.pairwise([0, *[c for c in cuts if c < len(arrays)], len(arrays)]):
        batch = arrays[lo:hi]
        if len(batch) == 1 and batch[0].dtype == dtype and batch[0].flags.c_contiguous:
            buf = batch[0]
        elif dtype.kind in "iu":
            # integers: casting wraps values that do not fit, so check the range first
            # (arrays already of the store's dtype concatenate as they are, no check)
            try:
                buf = np.concatenate(batch)
            except (ValueError, TypeError):
                check_arrays(arrays)
                raise
            if buf.dtype != dtype:
                if not np.can_cast(buf.dtype, dtype, casting):
                    check_arrays(arrays)  # names the array
                if narrowing_ints(buf.dtype, dtype):
                    for j, a in enumerate(batch):
                        if narrowing_ints(a.dtype, dtype):
                            check_fits(a, dtype, lo + j)
                buf = buf.astype(dtype, casting=casting)
        else:
            try:
                buf = np.concatenate(batch, dtype=dtype, casting=casting)
            except (ValueError, TypeError):
                # a bad row shape or dtype somewhere: the full checks name it
                check_arrays(arrays)
                raise
        pwrite_all(fd, [as_bytes(buf)], pos, path)
        crash_point("mid-data")
        pos += buf.nbytes
        if progress is not None:
            progress(pos - offset)
