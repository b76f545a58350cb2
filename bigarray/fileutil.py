"""Small POSIX helpers: locks, atomic replace, full ``pwrite``, durable directories.

Why ``pwrite`` and not stores through a memory map: a write through a map into a fresh
page faults once per 4 KiB page and turns ENOSPC into SIGBUS; ``pwrite`` is faster on
fresh files and turns a full disk into an ``OSError`` we can report.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Iterator, Sequence

from .errors import ReadOnlyError, WriteFailedError

_IOV_MAX = 1024


@contextlib.contextmanager
def locked(path: str, *, shared: bool = False) -> Iterator[int]:
    """Hold an ``flock`` on ``path`` (created if missing) for the duration of the block."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        raise ReadOnlyError(
            f"cannot write to the store: {path!r} is not writable. Open the store read-only "
            "(PointerArray/MmapArray) or copy it to a writable place."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise wrap_os_error(exc, path) from None
    if fsync:
        fsync_dir(os.path.dirname(path) or ".")


def wrap_os_error(exc: OSError, path: str) -> Exception:
    """Turn the OS's refusal to write into a bigarray error that says what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteFailedError(
            exc.errno,
            f"the disk holding {path!r} is full; free space and write again "
            "(the last commit is intact)",
        )
    if exc.errno == errno.EFBIG:
        return WriteFailedError(
            exc.errno,
            f"{path!r} would pass the file size limit (ulimit -f); raise it and write again "
            "(the last commit is intact)",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ReadOnlyError(f"cannot write {path!r}: {exc.strerror}; the store is read-only here")
    return WriteFailedError(exc.errno, f"writing {path!r} failed: {exc.strerror}")


def pwrite_all(fd: int, buffers: Sequence[memoryview], offset: int, path: str) -> None:
    """Write ``buffers`` back to back at ``offset``, batching them into ``pwritev`` calls."""
    i = 0
    try:
        while i < len(buffers):
            batch = buffers[i : i + _IOV_MAX]
            want = sum(b.nbytes for b in batch)
            done = os.pwritev(fd, batch, offset)
            if done == want:
                offset += done
                i += len(batch)
                continue
            # A short write (signals, >2 GiB): finish this batch buffer by buffer.
            for b in batch:
                n = b.nbytes
                if done >= n:
                    done -= n
                else:
                    view = b[done:] if done else b
                    pos = offset + done
                    while view.nbytes:
                        k = os.pwrite(fd, view, pos)
                        view, pos = view[k:], pos + k
                    done = 0
                offset += n
            i += len(batch)
    except OSError as exc:
        raise wrap_os_error(exc, path) from None


def map_readonly(fd: int, length: int) -> mmap.mmap:
    return mmap.mmap(fd, length, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)
