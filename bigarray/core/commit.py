"""The commit of a store written through fsspec: atomic, exclusive, the old version kept until then.

A write to an object store (``to_bigarray`` on an ``s3://`` URL, ``bigarray cp``) never
changes an object a committed manifest names. Every object it writes has a name no other
commit uses (the write session is in it: ``shards/data-<session>-000000.npy``,
``index/g2-<session>-bounds.npy``), and the switch to the new version is one ``PUT`` of
``manifest.json``, written last and **conditionally**:

- a new store: ``If-None-Match: *`` (create only if no manifest exists);
- a replacement (``remove_exist``/``overwrite``): ``If-Match: <ETag of the manifest the
  writer replaces>``.

So of two writers racing on one URL exactly one commits; the other gets a
:class:`~bigarray.errors.StoreExistsError` (or :class:`~bigarray.errors.ConcurrentCommitError`
for a replacement), and its objects are deleted. Readers see the previous commit, whole,
until the manifest ``PUT`` lands, and the new one, whole, after it; the previous version's
objects are deleted only then (a reader still holding the old version is told to reopen).

Where the filesystem offers no conditional ``PUT``:

- S3 (and S3-compatible servers that implement conditional writes, moto included): used
  as above;
- local paths (``file://``): the manifest is linked into place (``link(2)`` refuses an
  existing name) for a new store, and replaced under an ``flock`` with its bytes
  compared first: exclusive against every bigarray writer;
- ``memory://``: an in-process lock around compare-and-put (the filesystem is per process);
- anything else (GCS, Azure, HTTP, ...): compare, then put, then read back. Two writers
  can then both report success; readers still only ever see one complete version (the
  objects of different writers never share a name), the later ``PUT`` wins, and the other
  writer's objects remain until removed. Use S3 or a local path when writers race.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BigArrayError, StoreExistsError
from .filesystem import FileAccess
from .format import MANIFEST_NAME, Manifest, manifest_objects, parse_manifest

__all__ = [
    "ConcurrentCommitError",
    "Snapshot",
    "conditional_support",
    "put_manifest",
    "remove_replaced",
    "snapshot",
]

_MEMORY_LOCK = threading.Lock()


class ConcurrentCommitError(StoreExistsError):
    """Another writer committed the store between this writer's start and its commit."""


@dataclass(frozen=True)
class Snapshot:
    """The manifest a writer starts from: ``raw`` bytes (``None``: no store yet) and, on
    S3, the ``ETag`` its conditional ``PUT`` must match."""

    raw: bytes | None
    etag: str | None

    @property
    def manifest(self) -> Manifest | None:
        return None if self.raw is None else parse_manifest(self.raw, "manifest.json")


def _protocols(access: FileAccess) -> set[str]:
    p = access.fs.protocol
    return set(p) if isinstance(p, (tuple, list)) else {p}


def conditional_support(access: FileAccess) -> str:
    """How the manifest ``PUT`` of ``access`` is made exclusive: ``"s3"``, ``"local"``,
    ``"memory"``, or ``"none"`` (compare, put, read back)."""
    protocols = _protocols(access)
    if access.local:
        return "local"
    if {"s3", "s3a"} & protocols:
        return "s3"
    if "memory" in protocols:
        return "memory"
    return "none"


def _etag(access: FileAccess) -> str | None:
    try:
        info = access.fs.info(access.full(MANIFEST_NAME))
    except FileNotFoundError:
        return None
    tag = info.get("ETag") or info.get("etag")
    return None if tag is None else str(tag)


def snapshot(access: FileAccess) -> Snapshot:
    """Read the current manifest (bytes and ETag, consistent with each other)."""
    from ..errors import StoreNotFoundError

    def missing() -> BigArrayError:
        return StoreNotFoundError("absent")

    kind = conditional_support(access)
    for _ in range(20):
        access.invalidate()
        before = access._call(lambda: _etag(access), MANIFEST_NAME) if kind == "s3" else None
        try:
            raw = access.cat(MANIFEST_NAME, missing=missing)
        except StoreNotFoundError:
            raw = None
        if kind != "s3":
            return Snapshot(raw, None)
        if raw is None and before is None:
            return Snapshot(None, None)
        if raw is not None and before is not None:
            # a single-part PUT's ETag is the MD5 of its bytes: then the pair is consistent
            if before.strip('"') == hashlib.md5(raw).hexdigest():
                return Snapshot(raw, before)
            access.invalidate()
            after = access._call(lambda: _etag(access), MANIFEST_NAME)
            if after == before:
                return Snapshot(raw, before)
        time.sleep(0.05)
    raise ConcurrentCommitError(
        f"{access.url!r} is being committed again and again by other writers; its manifest "
        "changed on every read. Retry when the other writers finished."
    )


def _lost(access: FileAccess, base: Snapshot) -> StoreExistsError:
    if base.raw is None:
        return StoreExistsError(
            f"another writer committed a store at {access.url!r} while this one was writing; "
            "this write was not committed and its objects were removed. Write elsewhere, or "
            "run it again with remove_exist=True (overwrite=True) to replace that store."
        )
    return ConcurrentCommitError(
        f"another writer committed {access.url!r} while this one was replacing it; this write "
        "was not committed and its objects were removed (readers see the other writer's "
        "version). Run it again to replace that version."
    )


def _precondition_failed(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__} {seen}"
        if "PreconditionFailed" in text or "ConditionalRequestConflict" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def put_manifest(access: FileAccess, data: bytes, base: Snapshot) -> None:
    """Write ``manifest.json`` if and only if it is still what ``base`` read.

    Raises
    ------
    StoreExistsError
        ``base`` saw no store and another writer created one meanwhile.
    ConcurrentCommitError
        ``base`` saw a store and another writer replaced (or deleted) it meanwhile.
    """
    kind = conditional_support(access)
    full = access.full(MANIFEST_NAME)
    if kind == "s3":
        kwargs: dict[str, Any] = {"mode": "create"} if base.etag is None else {"IfMatch": base.etag}
        kwargs.update(access.write_deadline(len(data)))
        try:
            access.fs.pipe_file(full, data, **kwargs)
        except FileNotFoundError:
            if base.etag is not None:  # If-Match on a manifest deleted meanwhile
                raise _lost(access, base) from None
            raise
        except Exception as exc:
            if _precondition_failed(exc):
                raise _lost(access, base) from None
            from .filesystem import translate_error

            raise translate_error(exc, access.where(MANIFEST_NAME), action="write") from exc
        access.invalidate()
        return
    if kind == "local":
        _put_local(access, full, data, base)
        return
    lock = _MEMORY_LOCK if kind == "memory" else contextlib.nullcontext()
    with lock:
        now = snapshot(access)
        if now.raw != base.raw:
            raise _lost(access, base)
        access.pipe(MANIFEST_NAME, data)
    if kind == "none":  # no conditional PUT: at least notice a writer that overtook this one
        time.sleep(0.05)
        if snapshot(access).raw != data:
            raise _lost(access, base)


def _put_local(access: FileAccess, full: str, data: bytes, base: Snapshot) -> None:
    import fcntl

    from .fileutil import fsync_dir

    root = os.path.dirname(full)
    os.makedirs(root, exist_ok=True)
    tmp = f"{full}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        lock_fd = os.open(os.path.join(root, ".remote-commit.lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if base.raw is None:
                try:
                    os.link(tmp, full)  # refuses an existing manifest, atomically
                except FileExistsError:
                    raise _lost(access, base) from None
            else:
                try:
                    with open(full, "rb") as f:
                        current: bytes | None = f.read()
                except FileNotFoundError:
                    current = None
                if current != base.raw:
                    raise _lost(access, base)
                os.replace(tmp, full)
            fsync_dir(root)
        finally:
            os.close(lock_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_replaced(access: FileAccess, old: Manifest | None, new: Manifest) -> None:
    """After a replacement committed: delete the objects only the old manifest named (best
    effort; a failure leaves unreferenced objects, never a damaged store)."""
    gone = sorted(manifest_objects(old) - manifest_objects(new))
    _remove_quietly(access, gone)


def _remove_quietly(access: FileAccess, rels: Iterable[str]) -> None:
    rels = list(rels)
    if not rels:
        return
    with contextlib.suppress(Exception):
        access.remove(rels)


# --------------------------------------------------------------------------- local directories
def exchange_dirs(a: str, b: str) -> bool:
    """Swap two directories in one step (``renameat2(RENAME_EXCHANGE)``): a reader opening
    ``b`` sees the old or the new one, never neither. Returns False where the kernel or the
    filesystem cannot (then nothing was changed)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def staging_path(final: str) -> str:
    """A new sibling of ``final`` where its replacement is written before the switch.

    The name carries this process's id: siblings left by writers of ``final`` that died
    (SIGKILL, or a dropped ``compute=False`` write whose program exited) are removed here,
    by the next writer of the same path (see :func:`remove_stale_staging`).
    """
    head, tail = os.path.split(os.path.abspath(final))
    remove_stale_staging(final)
    return os.path.join(head, f".{tail}.replace-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _owner_lock_held(staging: str) -> bool:
    """True while a writer session in ``staging`` holds its owner lock (a heir process
    committing a ``compute=False`` write on a worker holds it too)."""
    import fcntl
    import glob

    for lock in glob.glob(os.path.join(glob.escape(staging), "journal", "*", "owner.lock")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


def remove_stale_staging(final: str) -> int:
    """Delete the ``.NAME.replace-<pid>-*`` siblings of ``final`` whose writer process is
    dead and whose writer sessions hold no owner lock; returns how many were removed.

    A live writer's staging (its process alive, or a session lock held) is never touched.
    """
    import re

    head, tail = os.path.split(os.path.abspath(final))
    pattern = re.compile(rf"\.{re.escape(tail)}\.replace-(\d+)-[0-9a-f]{{12}}(\.old)?$")
    try:
        names = os.listdir(head)
    except OSError:
        return 0
    removed = 0
    for name in names:
        m = pattern.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(head, name)
        if _owner_lock_held(path):
            continue
        remove_path(path)
        removed += 1
    return removed


def refuse_live_writers(path: str, *, lock: bool = True) -> None:
    """Refuse to replace the store at ``path`` while a writer session (a
    ``PointerArrayWriter``, ``MmapArrayWriter`` or ``StoreWriter`` of this or another
    program) holds it open, as the writers' ``remove_exist`` does: that session would go on
    committing into a store that is no longer there. Journals of dead sessions are removed."""
    from .fileutil import locked
    from .format import LOCK_NAME
    from .journal import collect_dead_sessions

    if lock:
        with locked(os.path.join(path, LOCK_NAME)):
            live = collect_dead_sessions(path, "")
    else:  # the caller holds the store lock
        live = collect_dead_sessions(path, "")
    if live:
        raise StoreExistsError(
            f"refusing to replace the store at {path!r}: {live} live writer session(s) (another "
            "program, or a writer of this one that is still open) are writing it. Close those "
            "writers first, or write to another path."
        )


def check_replaceable(final: str, remove_exist: bool) -> bool:
    """Before writing a new store beside ``final``: refuse what the write may not take the
    place of, and return whether something is there to replace.

    Without ``remove_exist`` only a missing path, an empty directory or what a killed
    creation left is free; with it also a store and a file, never a foreign non-empty
    directory.
    """
    from ..errors import NotAStoreError
    from .store import interrupted_creation, is_store

    if not os.path.lexists(final):
        return False
    if os.path.isdir(final) and not os.path.islink(final):
        store = is_store(final)
        if not store and (not os.listdir(final) or interrupted_creation(final)):
            return True
        if not store:
            raise NotAStoreError(
                f"{final!r} is a non-empty directory that is not a bigarray store; refusing "
                "to replace it. Remove it yourself or pick another path."
            )
        if remove_exist:
            refuse_live_writers(final)  # early: before anything is written
    if not remove_exist:
        raise StoreExistsError(
            f"{final!r} exists; pass remove_exist=True to replace it, or choose another path"
        )
    return True


def move_into_place(staging: str, final: str, *, replacing: bool) -> None:
    """Commit a store written at ``staging`` as ``final``: switch it in when it replaces
    something (:func:`switch_into_place`); otherwise one ``rename``, refused (and the
    staging removed) when something that may not be replaced appeared at ``final``."""
    from .fileutil import fsync_dir

    if not replacing:
        try:
            os.rename(staging, final)  # the commit: the whole store appears at once
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
            try:
                check_replaceable(final, False)  # a killed creation's leftovers are free
            except BaseException:
                remove_path(staging)
                raise
        else:
            fsync_dir(os.path.dirname(os.path.abspath(final)))
            return
    switch_into_place(staging, final)


def switch_into_place(staging: str, final: str) -> None:
    """Make the committed store at ``staging`` the store at ``final`` and delete the old one.

    The switch is one atomic exchange where Linux offers it (readers opening ``final`` see
    the old store or the new one, whole); elsewhere two renames, with a moment in between
    in which ``final`` does not exist. The old store is deleted after the switch (a reader
    that mapped it keeps its maps).
    """
    from .fileutil import fsync_dir, locked
    from .format import LOCK_NAME
    from .store import is_store

    parent = os.path.dirname(os.path.abspath(final))
    if is_store(final):
        # Under the old store's lock no writer session can start in it meanwhile.
        with locked(os.path.join(final, LOCK_NAME)):
            try:
                refuse_live_writers(final, lock=False)
            except BaseException:
                remove_path(staging)
                raise
            if exchange_dirs(staging, final):
                fsync_dir(parent)
                remove_path(staging)
                return
    elif os.path.lexists(final) and exchange_dirs(staging, final):
        fsync_dir(parent)
        remove_path(staging)
        return
    old = staging + ".old"
    if os.path.lexists(final):
        os.rename(final, old)
    os.rename(staging, final)
    fsync_dir(parent)
    remove_path(old)


def remove_path(path: str) -> None:
    """Delete a directory tree or a file (missing is fine)."""
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
