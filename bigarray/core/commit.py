"""The one commit: every writer of a store (local or object store) publishes through here.

A commit makes one new version of a store visible at once, or nothing. Every writer goes
through the same sequence; only the last step differs by where the store lives:

1. the data is written and durable: rows ``pwrite``-n into a local data file and
   ``fsync``-ed (:func:`commit_local`), or shard objects ``PUT`` whole
   (:mod:`bigarray.core.sharded`);
2. the new segments become one new *run* of the index (:mod:`bigarray.core.index`), written
   to files no committed manifest names (generation, and on object stores the write
   session, in the name), durable before anything points at them;
3. checksums (:mod:`bigarray.core.integrity`): CRC-32C of every data block written since
   the previous commit and of every new index file, recorded in the manifest entry of each
   variable the commit wrote, so ``bigarray verify`` checks every store whoever wrote it;
4. the manifest is published, atomically and exclusively: locally a ``rename`` over the
   old one under the store's ``flock`` (:func:`commit_local`); through fsspec a
   conditional ``PUT`` (:func:`put_manifest`, below);
5. only then is what the previous version alone named deleted (old index runs, a replaced
   version's objects), never before.

A crash before step 4 leaves the previous version, whole; after it, the new one.

Local commits
-------------
:func:`commit_local` is called with the store lock held (:func:`store_lock`) by the
session writer (:class:`~bigarray.core.writer.StoreWriter`), the xarray Dataset writer (all
its variables, coordinates and attributes in one commit), compaction and metadata updates
(:func:`update_manifest`).

Object stores
-------------
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BigArrayError, StoreExistsError
from . import integrity
from .crash import crash_point
from .filesystem import FileAccess
from .fileutil import atomic_write, fsync_dir, locked, resolve_inside, wrap_os_error
from .format import (
    INDEX_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    IndexFiles,
    Manifest,
    Variable,
    manifest_objects,
    npy_header,
    parse_manifest,
)
from .index import IndexCommit, SegmentArrays, drop_unused_runs, plan_commit

__all__ = [
    "ConcurrentCommitError",
    "DataUpdate",
    "Snapshot",
    "commit_local",
    "conditional_support",
    "plan_index",
    "put_manifest",
    "remove_replaced",
    "snapshot",
    "store_lock",
    "update_manifest",
]


# =========================================================================== local commits


@contextlib.contextmanager
def store_lock(path: str) -> Iterator[int]:
    """The store's exclusive ``flock``: held by every local commit (and by writers while they
    read the manifest they will build on)."""
    with locked(os.path.join(path, LOCK_NAME)) as fd:
        yield fd


@dataclass
class DataUpdate:
    """One variable's data in a local commit.

    ``variable`` is its new manifest entry (one shard holding rows ``[0, rows)``; its
    ``checksums`` are ignored: the commit records them). ``fd`` is open read/write on the
    shard's data file: the commit extends the file to the new row count, ``fsync``-s it,
    rewrites its ``.npy`` header and sums the blocks of ``written``, the row ranges changed
    since the previous commit (``None``: every row, as for a new data file). ``sums`` may
    give, per range of ``written``, block sums the writes computed as they went
    (:class:`~bigarray.core.integrity.WrittenSums`, or ``None`` to read the blocks back).
    """

    variable: Variable
    fd: int
    written: Sequence[tuple[int, int]] | None = None
    sums: Sequence[integrity.WrittenSums | None] | None = None
    checksums: bool = True
    _plan: Any = field(default=None, repr=False)


def plan_index(path: str, base: Manifest, new: SegmentArrays, where: str = "") -> IndexCommit:
    """Check ``new`` segments against the committed index of ``path`` (read under the
    store lock) before anything is written: a duplicate name or an overlap raises here,
    with the store unchanged."""
    from .store import Store  # the reader, which plans against the committed runs

    with Store(path) as store:
        return plan_commit(store.index, base.segments, new, where or f" in {path!r}")


def _clear_generation(path: str, generation: int) -> None:
    """Remove index files of ``generation`` left by a commit that crashed before its
    rename (never named by a manifest). Unlinking first also means a hostile store's
    symlink there is removed, never written through; the directory must be inside."""
    d = resolve_inside(path, INDEX_DIR)
    prefix = f"g{generation}-"
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(d):
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(d, name))


def _previous_index_entry(var: Variable | None) -> Any:
    sums = var.checksums if var is not None else None
    return sums.get("index") if isinstance(sums, Mapping) else None


def commit_local(
    path: str,
    base: Manifest,
    updates: Sequence[DataUpdate] = (),
    *,
    variables: Mapping[str, Variable] | None = None,
    index: IndexCommit | None = None,
    segments: IndexFiles | None = None,
    attrs: Mapping[str, Any] | None = None,
    row_dim: str | None = None,
    fsync: bool = True,
    published: Callable[[Manifest], None] | None = None,
) -> Manifest:
    """Commit a new version of the local store at ``path``; return its manifest.

    The caller holds :func:`store_lock` and read ``base`` (the current manifest) under it.
    ``updates`` are the variables whose data this commit makes durable and sums;
    ``variables`` are entries added or replaced as given (metadata only, or data already
    summed); ``index`` is the new segments' run (:func:`plan_index`), written here, or
    ``segments`` an index already written and durable (compaction); ``attrs`` and
    ``row_dim`` replace the store's when given. ``published(new)`` runs right after the
    manifest rename, before the old index runs are deleted (a writer forgets its journal
    records there). The steps and the crash model are in the module docstring; crash points
    ``after-data-fsync``, ``after-header``, ``after-index``, ``before-manifest`` and
    ``after-manifest`` stop a commit between them (:mod:`bigarray.core.crash`).
    """
    generation = base.generation + 1
    try:
        for u in updates:
            var = u.variable
            (shard,) = var.shards
            need = shard.offset + var.rows * var.row_nbytes
            if os.fstat(u.fd).st_size < need:
                os.ftruncate(u.fd, need)
            if u.checksums:
                # Sum only the blocks written since the last commit, in threads, while the
                # data is made durable below; the previous commit's sums cover the rest.
                prev = base.variables.get(var.name)
                ranges = None if u.written is None else list(u.written)
                plan, todo = integrity.plan_commit(prev, var, ranges)
                if ranges is not None and u.sums is not None:
                    todo = integrity.reuse_written_sums(plan, todo, ranges, list(u.sums))
                blocks = integrity.BlockSums(
                    u.fd, shard.offset, var.row_nbytes, var.rows, plan.block_rows, todo
                )
                u._plan = (plan, todo, blocks)
        for u in updates:
            if fsync:
                os.fsync(u.fd)
        crash_point("after-data-fsync")
        for u in updates:
            os.pwrite(u.fd, npy_header(u.variable.dtype, u.variable.shape), 0)
            if fsync:
                os.fsync(u.fd)
        crash_point("after-header")
    except OSError as exc:
        raise wrap_os_error(exc, path) from None
    if segments is None:
        segments = base.segments
    if index is not None and index.new.count:
        try:
            _clear_generation(path, generation)
            segments = index.write(path, generation, fsync=fsync)
            if fsync:
                fsync_dir(os.path.join(path, INDEX_DIR))
        except OSError as exc:
            raise wrap_os_error(exc, path) from None
        crash_point("after-index")
    new_vars = dict(base.variables)
    for u in updates:
        var, checksums = u.variable, None
        if u._plan is not None:
            plan, todo, blocks = u._plan
            try:
                plan.blocks[todo] = blocks.result()
                entry = _previous_index_entry(base.variables.get(var.name))
                if segments is not None and segments is not base.segments:
                    entry = integrity.index_entry(path, segments, entry)
                plan.index = entry
            except OSError as exc:
                raise wrap_os_error(exc, path) from None
            checksums = plan.to_json()
        new_vars[var.name] = Variable(
            var.name,
            var.dtype,
            var.shape,
            var.dims,
            var.shards,
            var.attrs,
            var.encoding,
            checksums,
        )
    new_vars.update(variables or {})
    new = Manifest(
        generation,
        new_vars,
        segments,
        base.row_dim if row_dim is None else row_dim,
        dict(base.attrs if attrs is None else attrs),
    )
    crash_point("before-manifest")
    atomic_write(os.path.join(path, MANIFEST_NAME), new.dumps(), fsync=fsync)
    crash_point("after-manifest")
    if published is not None:
        published(new)
    # (also what a commit that crashed before its rename left: readers never mapped it)
    drop_unused_runs(path, segments, base.segments)
    return new


def update_manifest(
    path: str, change: Callable[[Manifest], Manifest], *, fsync: bool = True
) -> Manifest:
    """Commit ``change(manifest) -> manifest`` (variables' metadata, attributes, or an index
    written beforehand), atomically under the store lock: a local commit that writes no
    data. Variables cannot be removed this way."""
    from .store import read_manifest

    with store_lock(path):
        current = read_manifest(path)
        new = change(current)
        return commit_local(
            path,
            current,
            variables=new.variables,
            segments=new.segments,
            attrs=new.attrs,
            row_dim=new.row_dim,
            fsync=fsync,
        )


# =========================================================================== object stores

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


def move_into_place(
    staging: str, final: str, *, replacing: bool, keep_on_refusal: bool = False
) -> None:
    """Commit a store written at ``staging`` as ``final``: switch it in when it replaces
    something (:func:`switch_into_place`); otherwise one ``rename``, refused (and the
    staging removed, unless ``keep_on_refusal``) when something that may not be replaced
    appeared at ``final``."""
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
                if not keep_on_refusal:
                    remove_path(staging)
                raise
        else:
            fsync_dir(os.path.dirname(os.path.abspath(final)))
            return
    switch_into_place(staging, final, keep_on_refusal=keep_on_refusal)


def switch_into_place(staging: str, final: str, *, keep_on_refusal: bool = False) -> None:
    """Make the committed store at ``staging`` the store at ``final`` and delete the old one.

    The switch is one atomic exchange where Linux offers it (readers opening ``final`` see
    the old store or the new one, whole); elsewhere two renames, with a moment in between
    in which ``final`` does not exist. The old store is deleted after the switch (a reader
    that mapped it keeps its maps). A live writer session of the old store refuses the
    switch (:class:`StoreExistsError`); ``staging`` is then removed unless
    ``keep_on_refusal`` (a writer that can try again).
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
                if not keep_on_refusal:
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
