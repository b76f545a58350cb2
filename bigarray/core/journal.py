"""Journals: how writer processes tell the committing process what they wrote.

No Manager and no server: every writer *session* (one owner writer object and all the
processes it was forked, spawned or pickled to) has a directory ``journal/<session>/``.
After a process has written rows with ``pwrite`` it drops one small record file there,
atomically (write a temporary file, rename it into place), naming the variable and the
segments (or unnamed row extents) it wrote. The owner's ``flush()`` reads the records,
merges them into the index under the store lock, commits, and deletes exactly the
records it read. A record that appears later is simply merged by the next commit.

The owner holds an ``flock`` on ``journal/<session>/owner.lock`` for its lifetime (forked
children inherit it), so a later writer can tell a dead session (the lock is free) from a
live one and discard the uncommitted records of the dead.

A member process publishes a record holding a shared ``flock`` on ``journal/<session>/gate``;
the owner's final commit holds it exclusively and unlinks it before ending the session. So a
record is either published before the final commit lists the records (and committed), or its
``write()`` raises :class:`~bigarray.errors.ClosedError`: a member never writes into a session
nobody will commit.

Record layout (little endian)::

    b"BAJ1" | u32 header length | JSON header | int64 starts[n] | int64 stops[n]
            | int64 name_offsets[n + 1] | names (UTF-8)          (named records only)
            | int64 blocks[k] | u32 block_crc32c[k]            (k = header "sums", or none)
            | u32 crc32 of everything before

The optional block sums are those the writing process computed of the whole blocks it
wrote (:class:`bigarray.core.integrity.WrittenSums`), so the commit need not read them back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import ClosedError, StoreCorruptedError
from .fileutil import close_held, open_held, wrap_os_error
from .format import JOURNAL_DIR, byte_view
from .index import SegmentArrays
from .integrity import WrittenSums

_MAGIC = b"BAJ1"
_SUFFIX = ".rec"
_INFLIGHT = ".inflight"
_OWNER_LOCK = "owner.lock"
_GATE = "gate"
_COMMITTED = "committed-"  # name hashes of the segments each commit of the session added
_RESERVED = "reserved"  # rows the session's appends took: int64 (start, stop) pairs


def _ended(where: str) -> ClosedError:
    return ClosedError(
        f"the writer session of {where!r} has ended: its owner (the writer this copy was "
        "pickled or forked from) was closed or discarded, so nothing written through this copy "
        "would ever be committed. Open a new writer in this process instead."
    )


@dataclass
class Record:
    """What one ``write`` call of one process wrote."""

    variable: str
    segments: SegmentArrays | None  # named segments, or None for unnamed rows
    stop: int  # the highest row written (exclusive)
    start: int | None = None  # the lowest row written (None: unknown); for checksums
    sums: WrittenSums | None = None  # sums of whole blocks, computed while writing
    data: bool = True  # False: the record only names rows that other records wrote
    mark: str | None = None  # file name of the write's in-flight mark (Journal.begin_write)


def encode_record(record: Record, starts: np.ndarray, stops: np.ndarray) -> bytes:
    seg = record.segments
    n = len(starts)
    head = {"variable": record.variable, "n": n, "named": seg is not None, "stop": record.stop}
    sums = record.sums
    if sums is not None:
        head.update(sums=len(sums.blocks), block_rows=sums.block_rows)
    if not record.data:
        head["data"] = False
    if record.mark is not None:
        head["mark"] = record.mark
    header = json.dumps(head).encode()
    parts = [
        _MAGIC,
        len(header).to_bytes(4, "little"),
        header,
        np.asarray(starts, "<i8").tobytes(),
        np.asarray(stops, "<i8").tobytes(),
    ]
    if seg is not None:
        parts += [np.asarray(seg.name_offsets, "<i8").tobytes(), seg.names.tobytes()]
    if sums is not None:
        parts += [np.asarray(sums.blocks, "<i8").tobytes(), np.asarray(sums.crcs, "<u4").tobytes()]
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(4, "little")


def decode_record(raw: bytes, where: str) -> Record:
    def bad(why: str) -> StoreCorruptedError:
        return StoreCorruptedError(f"journal record {where!r} is damaged ({why}); delete it")

    if len(raw) < 12 or raw[:4] != _MAGIC:
        raise bad("no BAJ1 magic")
    if zlib.crc32(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise bad("checksum mismatch")
    hlen = int.from_bytes(raw[4:8], "little")
    try:
        head = json.loads(raw[8 : 8 + hlen])
        n, named, variable, stop = head["n"], head["named"], head["variable"], head["stop"]
        k, block_rows = int(head.get("sums", -1)), int(head.get("block_rows", 0))
        data = bool(head.get("data", True))
        mark = head.get("mark")
        mark = str(mark) if mark is not None else None
    except (ValueError, KeyError, TypeError) as exc:
        raise bad(f"header: {exc}") from None
    pos = 8 + hlen
    try:
        starts = np.frombuffer(raw, "<i8", n, pos)
        stops = np.frombuffer(raw, "<i8", n, pos + 8 * n)
        seg = None
        if named:
            offs = np.frombuffer(raw, "<i8", n + 1, pos + 16 * n).astype(np.int64)
            names = np.frombuffer(raw, np.uint8, int(offs[-1]), pos + 24 * n + 8)
            hashes = np.fromiter(
                (zlib.crc32(byte_view(names[offs[i] : offs[i + 1]])) for i in range(n)),
                np.uint32,
                n,
            )
            seg = SegmentArrays(names, offs, np.stack([starts, stops], 1).astype(np.int64), hashes)
            pos += 24 * n + 8 + int(offs[-1])
        else:
            pos += 16 * n
        sums = None
        if k >= 0:
            blocks = np.frombuffer(raw, "<i8", k, pos).astype(np.int64)
            crcs = np.frombuffer(raw, "<u4", k, pos + 8 * k).astype(np.uint32)
            sums = WrittenSums(block_rows, blocks, crcs)
    except ValueError as exc:
        raise bad(str(exc)) from None
    start = int(starts.min()) if n else int(stop)
    return Record(variable, seg, int(stop), start, sums, data, mark)


class Journal:
    """The journal directory of one writer session."""

    def __init__(self, store_dir: str, session: str) -> None:
        self.session = session
        self.dir = os.path.join(store_dir, JOURNAL_DIR, session)
        self._seq = itertools.count()
        self._lock_fd: int | None = None

    def start(self) -> None:
        """Create the session directory and hold its owner lock (called by the owner)."""
        # never re-create the store directory itself: a store deleted meanwhile stays gone
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.dirname(self.dir))
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.dir)
        self._lock_fd = os.open(os.path.join(self.dir, _OWNER_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.close(os.open(os.path.join(self.dir, _GATE), os.O_WRONLY | os.O_CREAT, 0o644))

    @contextlib.contextmanager
    def gate(self, *, exclusive: bool = False, missing_ok: bool = False) -> Iterator[None]:
        """Hold the session's gate: shared to publish a record, exclusive (the owner) for
        the final commit. Raises :class:`ClosedError` once the session has ended
        (``missing_ok``: the owner goes on without it)."""
        try:
            fd = open_held(os.path.join(self.dir, _GATE), os.O_RDONLY)
        except FileNotFoundError:
            if missing_ok:
                yield
                return
            raise _ended(os.path.dirname(os.path.dirname(self.dir))) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            if os.fstat(fd).st_nlink == 0:  # the session ended while we waited
                raise _ended(os.path.dirname(os.path.dirname(self.dir)))
            yield
        finally:
            close_held(fd)

    def seal(self) -> None:
        """Unlink the gate (under the exclusive gate): later members' writes raise."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, _GATE))

    @property
    def started(self) -> bool:
        """True in the process that started (owns) the session, while it holds it."""
        return self._lock_fd is not None

    def release(self) -> None:
        """Let go of the owner lock without ending the session (a writer dropped unclosed):
        a later writer then sees the session dead and reclaims it."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def end(self) -> None:
        """Drop the session directory and its lock (after the final commit)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def append(
        self,
        record: Record,
        starts: np.ndarray,
        stops: np.ndarray,
        *,
        gated: bool = True,
        key: str | None = None,
    ) -> None:
        """Publish one record atomically (never seen half-written), under the shared gate
        (``gated=False``: the caller holds the gate, or is the owner under the store lock).
        ``key`` (:func:`record_key` of the record's names) names the file when no record
        holds that name yet, so a rerun of the same write finds it (:meth:`find`).
        Raises :class:`ClosedError` when the session has ended."""
        data = encode_record(record, starts, stops)
        name = f"{os.getpid()}-{next(self._seq):09d}-{os.urandom(4).hex()}"
        tmp = os.path.join(self.dir, f".{name}.tmp")
        with self.gate() if gated else contextlib.nullcontext():
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                if key is not None:
                    try:  # link(2): never replaces a record (another write's, same key)
                        os.link(tmp, os.path.join(self.dir, key + _SUFFIX))
                        os.unlink(tmp)
                        return
                    except FileExistsError:
                        pass
                os.rename(tmp, os.path.join(self.dir, name + _SUFFIX))
            except FileNotFoundError:
                raise _ended(os.path.dirname(os.path.dirname(self.dir))) from None
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise wrap_os_error(exc, self.dir) from None

    def find(self, key: str) -> tuple[Record, np.ndarray] | None:
        """The record published under ``key`` and not committed yet, with its segments'
        bounds (``None``: there is none)."""
        path = os.path.join(self.dir, key + _SUFFIX)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        rec = decode_record(raw, path)
        if rec.segments is None:
            return None
        return rec, rec.segments.bounds

    def note_committed(self, generation: int, hashes: np.ndarray) -> None:
        """Remember the name hashes of the segments this session's commit ``generation``
        added (:meth:`committed_hashes`): a rerun of a committed write is recognised."""
        with contextlib.suppress(FileNotFoundError):  # the session ended: nothing reruns
            tmp = os.path.join(self.dir, f".{_COMMITTED}{generation}.tmp")
            np.asarray(np.sort(hashes), "<u4").tofile(tmp)
            os.rename(tmp, os.path.join(self.dir, f"{_COMMITTED}{generation}"))

    def committed_hashes(self) -> np.ndarray:
        """Name hashes of every segment a commit of this session added (sorted)."""
        try:
            names = [n for n in os.listdir(self.dir) if n.startswith(_COMMITTED)]
        except (FileNotFoundError, NotADirectoryError):
            return np.zeros(0, np.uint32)
        parts = [np.fromfile(os.path.join(self.dir, n), "<u4") for n in names]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.uint32)

    def begin_write(self, start: int, stop: int) -> str:
        """Mark rows ``[start, stop)`` as being written by this process (an empty file whose
        name holds the range); :meth:`end_write` removes the mark once the write's record is
        published. A mark left behind (the write raised, or the process was killed) tells
        the commit that those rows changed with no record saying how, so it must not trust
        sums computed of them before (see :func:`bigarray.core.integrity.reuse_written_sums`)."""
        name = f"{start}-{stop}-{os.getpid()}-{os.urandom(4).hex()}{_INFLIGHT}"
        path = os.path.join(self.dir, name)
        # Never re-create the directory: a missing one means the owner ended the session,
        # and rows written now would never be committed.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        except FileNotFoundError:
            raise _ended(os.path.dirname(os.path.dirname(self.dir))) from None
        except OSError as exc:
            raise wrap_os_error(exc, self.dir) from None
        return path

    @staticmethod
    def end_write(mark: str) -> None:
        """The write marked by :meth:`begin_write` finished and its record is published."""
        with contextlib.suppress(FileNotFoundError):  # the session ended meanwhile
            os.unlink(mark)

    def reserve(self, start: int, stop: int) -> None:
        """Record that this session's append took rows ``[start, stop)`` (called under the
        store lock): until the session ends, positioned writes of other sessions refuse
        them (see :func:`reserved_by_others`), so no other writer overwrites rows this
        session wrote and will commit."""
        data = np.array([start, stop], "<i8").tobytes()
        try:
            fd = os.open(os.path.join(self.dir, _RESERVED), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except FileNotFoundError:
            # the session ended (a member's write then raises ClosedError) or its store was
            # deleted (the owner's commit then raises CommitConflictError): nothing to guard
            return
        except OSError as exc:
            raise wrap_os_error(exc, self.dir) from None
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def unfinished_writes(self) -> dict[str, tuple[int, int]]:
        """Marks (:meth:`begin_write`) of writes not ended, in progress, failed or killed:
        ``{mark file name: (start, stop)}``."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return {}
        out = {}
        for n in names:
            if n.endswith(_INFLIGHT):
                a, b, *_ = n.split("-")
                with contextlib.suppress(ValueError):
                    out[n] = (int(a), int(b))
        return out

    def pending(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(os.path.join(self.dir, n) for n in names if n.endswith(_SUFFIX))

    def read(self, files: list[str]) -> list[Record]:
        out = []
        for path in files:
            with open(path, "rb") as f:
                out.append(decode_record(f.read(), path))
        return out

    @staticmethod
    def discard(files: list[str]) -> None:
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def reserved_by_others(store_dir: str, keep: str, start: int, stop: int) -> tuple[int, int] | None:
    """Rows of ``[start, stop)`` that another live session's appends took and it has not
    ended yet (call under the store lock): the first such reserved range, or None."""
    root = os.path.join(store_dir, JOURNAL_DIR)
    try:
        sessions = os.listdir(root)
    except FileNotFoundError:
        return None
    for s in sessions:
        if s == keep:
            continue
        try:
            with open(os.path.join(root, s, _RESERVED), "rb") as f:
                raw = f.read()
        except (FileNotFoundError, NotADirectoryError):
            continue
        pairs = np.frombuffer(raw[: len(raw) // 16 * 16], "<i8").reshape(-1, 2)
        hit = np.flatnonzero((pairs[:, 0] < stop) & (pairs[:, 1] > start))
        if not len(hit) or not _session_live(os.path.join(root, s)):
            continue
        a, b = pairs[hit[0]]
        return int(a), int(b)
    return None


def _session_live(d: str) -> bool:
    """True while the owner of the session directory ``d`` holds its owner lock."""
    try:
        fd = open_held(os.path.join(d, _OWNER_LOCK), os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        close_held(fd)
    return False


def collect_dead_sessions(store_dir: str, keep: str) -> int:
    """Remove the journals of sessions whose owner died before committing them.

    Returns the number of live sessions other than ``keep`` (so the caller knows whether
    any other writer may hold allocated but uncommitted rows).
    """
    root = os.path.join(store_dir, JOURNAL_DIR)
    try:
        sessions = os.listdir(root)
    except FileNotFoundError:
        return 0
    live = 0
    for s in sessions:
        if s == keep:
            continue
        d = os.path.join(root, s)
        try:
            fd = open_held(os.path.join(d, _OWNER_LOCK), os.O_RDWR)
        except FileNotFoundError:
            shutil.rmtree(d, ignore_errors=True)  # never started, or already ended
            continue
        except OSError:
            live += 1
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live += 1
        else:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            close_held(fd)
    return live


def record_key(hashes: np.ndarray) -> str:
    """A file name for the record of a write of segments whose names hash to ``hashes``
    (:attr:`SegmentArrays.hashes`): the same names, in any order, give the same key, so a
    task rerun (same names, same bytes) finds the record of its first attempt."""
    h = hashlib.blake2b(np.sort(np.asarray(hashes, "<u4")).tobytes(), digest_size=12)
    return f"k{h.hexdigest()}"
