"""The write hot path (bigarray.core.batches): packed and vectored writes put the same bytes
on disk, casts and checks on the way, ~32 MiB buffers, the follower's sums."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bigarray.core import integrity
from bigarray.core.batches import BATCH_BYTES, VECTOR_MIN_BYTES, write_batches, write_packed
from bigarray.core.rowcheck import check_arrays
from bigarray.errors import SchemaError

OFFSET = 128  # bytes before the first row, like a .npy header


@pytest.fixture()
def fd(tmp_path: Path) -> Iterator[int]:
    f = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    yield f
    os.close(f)


def _read(fd: int, offset: int, nbytes: int) -> bytes:
    return os.pread(fd, nbytes, offset)


def _checker(dtype: np.dtype, trailing: tuple[int, ...]):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def check(out: list[np.ndarray]) -> np.ndarray:
        calls.append(len(out))
        return check_arrays(out, dtype, trailing)

    return check, calls


def _batches(
    fd: int, arrays: list[np.ndarray], dtype: np.dtype, start: int = 0, **opts: bool
) -> integrity.WriteFollower | None:
    trailing = arrays[0].shape[1:]
    row_nbytes = int(np.prod(trailing, dtype=np.int64)) * dtype.itemsize
    check, _ = _checker(dtype, trailing)
    return write_batches(
        fd,
        arrays,
        np.array([len(a) for a in arrays], np.int64),
        start,
        data_offset=OFFSET,
        row_nbytes=row_nbytes,
        dtype=dtype,
        path="store",
        check_arrays=check,
        fsync=opts.get("fsync", False),
        checksums=opts.get("checksums", False),
        defer_sums=opts.get("defer_sums", False),
    )


def _packed(fd: int, arrays: list[np.ndarray], dtype: np.dtype, offset: int) -> list[int]:
    """write_packed of ``arrays`` from byte ``offset``; returns the progress reports."""
    trailing = arrays[0].shape[1:]
    row_nbytes = int(np.prod(trailing, dtype=np.int64)) * dtype.itemsize
    ends = np.cumsum([len(a) for a in arrays]) * row_nbytes
    check, _ = _checker(dtype, trailing)
    seen: list[int] = []
    write_packed(fd, arrays, ends, offset, dtype, "store", check, seen.append)
    return seen


@pytest.mark.parametrize(
    ("store_dtype", "dtypes"),
    [
        ("int64", ["int64", "int16", "uint8", "int32"]),
        ("float64", ["float32", "float64", "int16", "float16"]),
        ("float32", ["float64", "float32"]),  # same_kind narrowing float cast
        ("U6", ["U3", "U6", "U1"]),
        ("datetime64[ns]", ["datetime64[ns]", "datetime64[s]"]),
    ],
)
def test_packed_and_vectored_writes_put_identical_bytes_on_disk(
    fd: int, store_dtype: str, dtypes: list[str]
) -> None:
    dtype = np.dtype(store_dtype)
    rng = np.random.default_rng(0)
    # large rows (mean segment above VECTOR_MIN_BYTES): in the store's dtype they go vectored
    rows = VECTOR_MIN_BYTES // (dtype.itemsize * 4) + 3
    arrays = []
    for i, dt in enumerate(dtypes * 2):
        n = rows + i
        if dtype.kind == "U":
            a = np.array([f"{j % 997:0{np.dtype(dt).itemsize // 4}d}" for j in range(n * 4)], dt)
            arrays.append(a.reshape(n, 4))
        elif dtype.kind == "M":
            arrays.append(rng.integers(0, 10**9, (n, 4)).astype(dt))
        else:
            arrays.append(rng.integers(0, 100, (n, 4)).astype(dt))
    expected = np.concatenate([a.astype(dtype) for a in arrays]).tobytes()
    row_nbytes = 4 * dtype.itemsize

    # mixed dtypes: write_batches casts, so it packs
    assert _batches(fd, arrays, dtype, start=0) is None
    assert _read(fd, OFFSET, len(expected)) == expected
    # already cast and C-contiguous, large: vectored (the caller's buffers, no copy)
    cast = [a.astype(dtype) for a in arrays]
    start = len(expected) // row_nbytes + 5
    _batches(fd, cast, dtype, start=start)
    assert _read(fd, OFFSET + start * row_nbytes, len(expected)) == expected
    # the packer itself on the same arrays, at a third place
    where = OFFSET + 2 * start * row_nbytes
    assert _packed(fd, arrays, dtype, where) == [len(expected)]
    assert _read(fd, where, len(expected)) == expected


def test_a_non_contiguous_array_is_packed_with_the_same_bytes(fd: int) -> None:
    dtype = np.dtype("float64")
    big = np.arange(40000 * 8, dtype="float64").reshape(40000, 8)
    arrays = [big[:, ::2], big[:100, 1::2]]  # strided views: never handed to pwritev
    _batches(fd, arrays, dtype)
    expected = np.concatenate(arrays).tobytes()
    assert _read(fd, OFFSET, len(expected)) == expected


def test_packed_buffers_are_cut_at_each_batch_size(fd: int) -> None:
    """~32 MiB per pwrite: progress is reported once per buffer, at the cut points."""
    dtype = np.dtype("int64")
    per = 512 << 10  # bytes of each array once cast
    n = (BATCH_BYTES + 8 * per) // per
    arrays = [np.full((per // 8 // 4, 4), i, np.int32) for i in range(n)]  # cast: packed
    seen = _packed(fd, arrays, dtype, OFFSET)
    assert seen == [BATCH_BYTES, n * per]
    got = np.frombuffer(_read(fd, OFFSET, n * per), np.int64).reshape(-1, 4)
    np.testing.assert_array_equal(got, np.concatenate(arrays))


def test_integers_that_would_wrap_are_refused_naming_the_array(fd: int) -> None:
    dtype = np.dtype("int16")
    arrays = [np.zeros((3, 2), np.int64), np.array([[1, 70000]], np.int64)]
    with pytest.raises(SchemaError, match=r"array #1 holds 70000"):
        _batches(fd, arrays, dtype)


def test_a_bad_row_shape_runs_the_full_checks(fd: int) -> None:
    """Many small arrays leave shapes to np.concatenate; when it fails, the writer's
    check_arrays callback names the array."""
    dtype = np.dtype("float32")
    arrays = [np.zeros((2, 3), np.float32)] * 10 + [np.zeros((2, 4), np.float32)]
    check, calls = _checker(dtype, (3,))
    ends = np.cumsum([len(a) for a in arrays]) * 12
    with pytest.raises(SchemaError, match="#10"):
        write_packed(fd, arrays, ends, OFFSET, dtype, "store", check)
    assert calls == [11]


def test_a_float_into_an_int_store_is_refused(fd: int) -> None:
    dtype = np.dtype("int32")
    arrays = [np.zeros((2, 2), np.int32), np.zeros((2, 2), np.float64)]
    with pytest.raises(SchemaError):
        _batches(fd, arrays, dtype)


@pytest.mark.parametrize("defer_sums", [False, True])
def test_the_follower_sums_the_whole_blocks_written(fd: int, defer_sums: bool) -> None:
    dtype = np.dtype("float64")
    rows_per_block = integrity.block_rows_for(64)
    n = rows_per_block * (integrity.FOLLOW_MIN_BLOCKS + 2) + 7
    data = np.random.default_rng(1).random((n, 8))
    arrays = [data[: n // 2], data[n // 2 :]]
    start = 3  # the first block is partial: not summed by the follower
    follow = _batches(fd, arrays, dtype, start=start, checksums=True, defer_sums=defer_sums)
    assert follow is not None
    sums = follow.result()
    assert sums is not None and len(sums.blocks)
    assert sums.blocks[0] == 1
    for b, crc in zip(sums.blocks.tolist(), sums.crcs.tolist(), strict=True):
        got = integrity.crc_range(fd, OFFSET + b * rows_per_block * 64, rows_per_block * 64)
        assert got == crc


def test_no_arrays_write_nothing(fd: int) -> None:
    follow = write_batches(
        fd,
        [],
        np.zeros(0, np.int64),
        0,
        data_offset=OFFSET,
        row_nbytes=8,
        dtype=np.dtype("int64"),
        path="store",
        check_arrays=lambda out: None,
        fsync=True,
        checksums=True,
        defer_sums=False,
    )
    assert follow is None and os.fstat(fd).st_size == 0
