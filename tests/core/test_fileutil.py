"""POSIX helpers: ``pwrite_all`` with progress, ``preallocate``, ``start_writeback``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bigarray.core import fileutil
from bigarray.core.fileutil import preallocate, pwrite_all, start_writeback


def test_pwrite_all_splits_large_buffers_and_reports_progress(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, 40 << 20, dtype=np.uint8)
    small = [memoryview(np.full(1000, i, np.uint8)) for i in range(3)]
    bufs = [*small, memoryview(data), *small]
    total = sum(b.nbytes for b in bufs)
    seen: list[int] = []
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, bufs, 7, str(tmp_path / "f"), seen.append)
    finally:
        os.close(fd)
    # calls of at most _CALL_BYTES (a single larger buffer is cut), progress after each
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == total
    assert all(b - a <= fileutil._CALL_BYTES for a, b in zip([0, *seen], seen, strict=False))
    got = (tmp_path / "f").read_bytes()
    assert got[:7] == b"\0" * 7
    assert got[7:] == b"".join(bytes(b) for b in bufs)


def test_pwrite_all_without_progress_writes_the_same_bytes(tmp_path: Path) -> None:
    bufs = [memoryview(np.full(n, n % 251, np.uint8)) for n in range(1, 3000, 7)]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, bufs, 0, str(tmp_path / "f"))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(b) for b in bufs)


def test_preallocate_reserves_blocks_and_keeps_the_size(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 8 << 20)
        assert os.fstat(fd).st_blocks * 512 < 1 << 20  # sparse
        preallocate(fd, 1 << 20, 4 << 20, str(path))
        preallocate(fd, 0, 0, str(path))  # nothing to do
        st = os.fstat(fd)
        assert st.st_size == 8 << 20
        if fileutil._fallocate is None:
            pytest.skip("no fallocate(2) on this platform")
        assert st.st_blocks * 512 >= 4 << 20
        # reserved blocks read as zeros and take writes like any other
        assert os.pread(fd, 16, 2 << 20) == b"\0" * 16
        os.pwrite(fd, b"x" * 4096, 3 << 20)
        start_writeback(fd, 0, 8 << 20)
        os.fsync(fd)
        assert os.pread(fd, 4, 3 << 20) == b"xxxx"
    finally:
        os.close(fd)


def test_pwrite_all_finishes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pwritev may write less than asked (signals; > 2 GiB on Linux): the rest is written
    buffer by buffer, for memoryviews and ndarrays alike."""
    real = os.pwritev

    def short(fd: int, buffers: list, offset: int) -> int:  # type: ignore[type-arg]
        first = memoryview(buffers[0]).cast("B")
        return real(fd, [first[: first.nbytes // 2 + 1]], offset)

    monkeypatch.setattr(os, "pwritev", short)
    rows = [np.arange(i * 10, i * 10 + 30, dtype="f4").reshape(10, 3) for i in range(5)]
    bufs = [*rows, memoryview(b"tail-bytes")]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, bufs, 3, str(tmp_path / "f"))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes()[3:] == b"".join(bytes(b) for b in bufs)
