"""Writing a store: :class:`StoreWriter`, the engine under the seed writers and the dask writer.

It writes rows with ``pwrite`` into a variable's data file, journals what it wrote and
commits. It delegates: the session's identity to :mod:`bigarray.core.session` (which
writer a process uses, to :mod:`bigarray.core.members`), the checks of the arrays it is
given to :mod:`bigarray.core.rowcheck`, writing them (batching, ``pwritev``) to
:mod:`bigarray.core.batches`, row allocation and the committed-but-unwritten rows to
:mod:`bigarray.core.rows`, removing a store to :mod:`bigarray.core.location`, reruns to
:mod:`bigarray.core.reruns`, the errors naming conflicting segments to
:mod:`bigarray.core.conflicts`, and the commit itself to :func:`bigarray.core.commit.commit_local`.

The session model (who owns, who may commit, what a copy is, what threads may do):

- **Owner.** A writer constructed by user code is the owner of a new *session* (a random
  token, with ``journal/<token>/`` in the store, whose ``owner.lock`` it holds while open).
  Only the owner commits (``flush``/``close``). Several sessions may be open on one store at
  once, in one program or many: each commits its own writes, merged with the others'.
- **Members.** A copy of the owner's writer that reaches another process (pickled to a pool
  or dask worker, inherited by a fork) is a *member* of the session: it writes rows and
  publishes a journal record per write; the owner's next commit merges them. A member's
  ``flush``/``close`` only make its own rows durable. Membership is explicit: a program
  that merely inherited environment variables (``subprocess.run``, a later script) never
  joins a session. The one implicit case is a ``multiprocessing`` spawn/forkserver child
  re-importing ``__main__`` (the 2020 library's pattern of a writer at module level): while
  multiprocessing bootstraps it, a seed writer of a path its ancestor owns joins that
  session instead of re-creating (or, with ``remove_exist``, replacing) the store.
- **Ended sessions.** After the owner's ``close``/``discard`` a member's ``write`` raises
  :class:`~bigarray.errors.ClosedError` (the final commit holds the session's gate, so a
  record is either in that commit or refused), never returns into a session nobody commits.
- **Threads.** All threads of a process may share one writer: every ``write`` that returned
  before a ``flush`` started is in that commit; writes running during a commit go into the
  next one (a commit removes exactly the records it took). ``close`` while other threads
  still write is the caller's race: their later writes raise ``ClosedError``.
- **Refusals.** A duplicate name (within the call, already written by this process in this
  session, or committed) or a positioned write over rows this process's named writes hold,
  over committed rows, or over rows another live session appended (its journal's
  ``reserved`` file) raises at ``write()``, before any byte is written. A conflict only the
  commit can see (another process or session took the name or rows) makes the commit raise
  with ``exc.segments`` naming every conflicting segment; nothing is committed and the writer
  stays open with every pending write: :meth:`StoreWriter.forget` those names and commit
  again, or ``discard()``.
- **remove_exist** writes the new store beside the old one and switches it in at ``close``
  (readers see the old one until then; a failed or killed writer leaves it); it refuses a
  store that any live session holds open, at the start and at the switch; a store deleted or
  replaced under a writer anyway (by hand) makes its commit raise
  :class:`~bigarray.errors.CommitConflictError` instead of naming rows that do not exist.

Commit order (the power-loss model), all under an exclusive ``flock`` on ``.lock``:

1. read the newest manifest (another session may have committed since we opened);
2. merge this session's journal records and in-memory segments into the index
   (idempotent duplicates dropped; duplicate names and overlaps refused);
3. ``fsync`` the data file (it holds every row written by every process of the session);
4. rewrite the row count in the data file's ``.npy`` header in place, ``fsync``;
5. write the commit's run of the index (its segments, merged with the newest runs; see
   :mod:`bigarray.core.index`) to new files, ``fsync`` each, then ``fsync`` the index
   directory (so the new names are durable before the manifest names them);
6. record checksums (:mod:`bigarray.core.integrity`): crc32 of the data blocks written since the
   last commit (summed in background threads while step 3 runs) and of the new index files;
7. write ``manifest.json`` to a temporary file, ``fsync``, ``rename`` over the old one,
   ``fsync`` the directory: this rename is the commit;
8. delete the journal records merged and index generations no reader needs any more.

So on power loss, data is durable before the index that points into it, and the index
before the manifest that names it. A crash before step 7 leaves the previous manifest,
which only names files and rows that were complete and durable when it was written (the
rewritten ``.npy`` header row count may then exceed the committed rows; readers use the
manifest, and ``verify`` accepts a header that counts more rows). A crash after it leaves at
worst stale journal records whose segments are already committed; step 2 drops them next
time, and index files of a generation that never committed, which the next commit of that
generation replaces.

Tests kill a writer at named steps of this sequence: set ``BIGARRAY_CRASH_AT=step`` (or
``step@N`` for the N-th time that step is reached) and the process SIGKILLs itself there
(see :func:`_crash_point`; a dictionary lookup when unset).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import os
import re
import threading
import warnings
from collections.abc import KeysView, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import (
    BigArrayError,
    BigArrayWarning,
    ClosedError,
    CommitConflictError,
    DuplicateSegmentError,
    IntegrityError,
    OverlapError,
    SchemaError,
    StoreExistsError,
)
from . import integrity
from .batches import FAST_MIN_ARRAYS, write_batches
from .commit import DataUpdate, commit_local
from .conflicts import conflicting_names, merge_refused, repeat_refused
from .crash import crash_point
from .destination import Destination, prepare_destination
from .fileutil import (
    atomic_write,
    locked,
    resolve_inside,
    wrap_os_error,
)
from .format import (
    DEFAULT_ROW_DIM,
    INDEX_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    Manifest,
    Shard,
    Variable,
    normalize_dtype,
    npy_header,
)
from .index import SegmentArrays, concat, plan_commit
from .journal import Journal, Record, collect_dead_sessions, record_key
from .location import StoreMoved, locked_here, remove_store, replace_empty_file
from .reruns import drop_identical_reruns, pread_rows
from .rowcheck import check_arrays
from .rows import (
    ALLOC_NAME,
    PENDING_KEY,
    allocate,
    covered,
    next_unwritten,
    read_alloc,
    row_shape_pending,
    unwritten_rows,
)
from .session import Session
from .store import Store, interrupted_creation, is_store, open_local, read_manifest

_SAFE_FILE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_owner_marks = itertools.count()


def data_file_name(variable: str) -> str:
    """File name of a variable's first shard (a sanitised name, never a path)."""
    stem = variable if _SAFE_FILE.match(variable) and not variable.startswith(".") else None
    return f"{stem}.npy" if stem else f"var-{abs(hash(variable)) % 10**8:08d}.npy"


class StoreWriter:
    """Write rows (optionally named segments) of one variable of a local store.

    Parameters
    ----------
    path
        Store directory; created if missing.
    variable
        Name of the variable to write (``"data"`` for the seed API).
    shape
        Expected shape. ``shape[0]`` is the minimum number of rows the committed array has
        (rows never written read as zeros); ``shape[1:]`` fixes the row shape. ``None``
        takes the row shape from the first write.
    dtype
        Element type; ``None`` takes it from the first write. Data of another type is cast
        with ``same_kind`` rules (int64 into int32 is fine, float into int is refused).
    remove_exist
        Replace an existing store at ``path``: the new one is written beside it (a hidden
        sibling directory, :attr:`path` while the writer is open; :attr:`target` is
        ``path``) and takes its place at :meth:`close`, in one atomic switch. Until then
        readers of ``path`` see the old store, whole (``flush`` commits in the new one);
        :meth:`discard`, an error or a killed program leave the old store as it was.
        A store that a live writer session holds is refused, and so is anything that is not
        a store (an empty directory or an empty file is simply taken). Otherwise an existing
        store is opened for appending, and ``dtype``/``shape[1:]`` must match it.
    named
        Whether writes carry segment names (``PointerArrayWriter``) or not.
    dims
        Dimension names (default ``("row", "dim_1", ...)``).
    fsync
        Make commits durable against power loss (default): large writes start the data's
        writeback as they go, and the commit calls ``fsync``. ``False`` is still crash-safe
        against a killed process (the promise h5py, zarr and ``np.memmap`` make), and
        writes at page-cache speed, which is faster than most disks.
    checksums
        Record CRC-32C checksums of the data blocks and index files written at every
        commit (default), checked by :func:`bigarray.core.verify.verify_store`. A write of 8
        blocks (8 MiB) or more sums its whole blocks in background threads: in the owner
        from the moment ``write`` returns (the call itself costs what a ``pwrite`` costs),
        in a worker process while it writes; the commit waits for those sums and sums only
        the other blocks written since the previous commit. ``False`` drops the variable's
        checksums.
    """

    _trailing: tuple[int, ...] | None
    _dtype: np.dtype | None
    _dims: tuple[str, ...] | None
    _attrs: dict[str, Any]

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        variable: str = "data",
        shape: Sequence[int] | int | None = None,
        dtype: Any = None,
        remove_exist: bool = False,
        named: bool = True,
        dims: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
        fsync: bool = True,
        checksums: bool = True,
    ) -> None:
        target = os.path.abspath(os.fspath(path))
        replacing: Destination | None = None
        if remove_exist and not os.path.islink(target) and is_store(target):
            # Replace, never delete first: write beside the store, switch at close. (Live
            # writer sessions of the old store are refused here, and again at the switch.)
            replacing = prepare_destination(target, True)
        self._init_state(target if replacing is None else replacing.staging, variable, named, fsync)
        self.target = target
        self._replacing = replacing
        self.checksums = bool(checksums)
        if isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        # shape[0] None (the 2020 library's "unknown, grows") declares no minimum row count
        self._declared_rows = int(shape[0]) if shape is not None and shape[0] is not None else 0
        if shape is not None:
            self._trailing = tuple(int(s) for s in shape[1:])
        if dtype is not None:
            self._dtype = normalize_dtype(dtype)
        if dims is not None:
            self._dims = tuple(dims)
        self._attrs = dict(attrs or {})

        if remove_exist and replacing is None:
            remove_store(self.path)  # anything else than a store: refused, or free (empty)
        # Another writer's remove_exist may rename the directory away while we wait for its
        # lock (see locked_here): then start again with whatever is at the path now (never
        # removing again: a store there now was created by a writer after our removal).
        for attempt in itertools.count():
            try:
                self._open_session()
                break
            except StoreMoved:
                if attempt >= 100:
                    raise StoreExistsError(
                        f"the store at {self.path!r} keeps being deleted and re-created by "
                        "other writers (remove_exist=True) while this writer opens it; "
                        "write to another path, or stop the other programs"
                    ) from None
        if self._dtype is not None and self._trailing is not None and self._shard is None:
            self._ensure_variable(self._dtype, self._trailing)

    def _open_session(self) -> None:
        """Create the store if there is none, then start this writer's session in it."""
        replace_empty_file(self.path)
        existed = is_store(self.path)
        if not existed:
            if not self._free_location():
                raise StoreExistsError(
                    f"{self.path!r} exists and is not a bigarray store (nor a valid one); "
                    "a writer never replaces it (remove_exist replaces stores only). Remove it "
                    "yourself, or choose another path"
                )
            self._create_empty()
        with locked_here(self.path):
            others = collect_dead_sessions(self.path, self._session)
            self._journal.start()
            manifest = read_manifest(self.path)
            if self.variable in manifest.variables:
                self._adopt(manifest.variables[self.variable])
            if not others:
                # No live writer holds uncommitted rows: rows that dead sessions allocated
                # but never committed are free again.
                rows = manifest.rows
                atomic_write(self._alloc_path, rows.to_bytes(8, "little"), fsync=False)

    def _free_location(self) -> bool:
        """True if a store may be created at ``self.path``: nothing there, an empty
        directory, or what another writer creating the store right now has made so far."""
        path = self.path
        if not os.path.exists(path):
            return True
        if not os.path.isdir(path):
            return False
        with contextlib.suppress(OSError):
            if not os.listdir(path) or interrupted_creation(path):
                return True
        if os.path.isfile(self._lock_path):
            # Another writer may be creating the store (it writes the data file, then the
            # first manifest, under the lock): once we hold the lock, it is a store or not.
            with locked_here(path):  # (a directory renamed away: start again)
                return is_store(path) or interrupted_creation(path)
        return False

    def _init_state(self, path: str, variable: str, named: bool, fsync: bool) -> None:
        self.path = path
        self.variable = variable
        self.named = named
        self.fsync = fsync
        self.checksums = True
        self._declared_rows = 0
        self._trailing = None
        self._dtype = None
        self._dims = None
        self._attrs = {}
        self._sess = Session(path)
        self._closed = False
        # Guards the in-memory session state below against this process's threads (writes
        # and commits run concurrently; the store lock orders commits between processes).
        # Lock order, everywhere: the session's gate, then the store's file lock (``.lock``),
        # then this thread lock. Never wait for a file lock while holding this one: a commit
        # holds the file lock and waits for this lock (two threads would deadlock).
        self._lock = threading.RLock()
        self._pending: list[tuple[Record, np.ndarray, np.ndarray]] = []
        self._followers: list[integrity.WriteFollower] = []  # the owner's, still summing
        self._inflight: dict[str, tuple[int, int]] = {}  # the owner's writes in progress
        self._sealing = False  # the final commit took its snapshot: later writes raise
        # names this process wrote in this session: the first write's list is kept as is,
        # and the set is only built when a second write needs it (one big write pays nothing)
        self._names_first: Sequence[str] | None = None
        self._names_seen: set[str] | None = None
        self._extents: list[tuple[int, int]] = []  # rows of this process's named writes
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._wrote_pid: int | None = None  # a worker copy: the process that wrote through it
        self._unrecorded: list[tuple[int, int]] = []  # the owner's failed writes' rows
        self._seen_marks: set[str] = set()  # marks of writes a commit saw still running
        self._shard: Shard | None = None
        self._committed: tuple[Any, ...] | None = None  # see _committed_state

    # the session's identity (see core/session.py), under the names the writer uses
    @property
    def _session(self) -> str:
        return self._sess.token

    @property
    def _owner_pid(self) -> int:
        return self._sess.owner_pid

    @property
    def _journal(self) -> Journal:
        return self._sess.journal

    def handoff(self) -> dict[str, Any]:
        """JSON-able description that lets another process join this writer's session
        (see :meth:`attach`); used for spawned children that re-import ``__main__``."""
        return {
            **self._sess.handoff(),
            "target": self.target,
            "variable": self.variable,
            "named": self.named,
            "fsync": self.fsync,
            "checksums": self.checksums,
        }

    @classmethod
    def attach(cls, handoff: Mapping[str, Any]) -> StoreWriter:
        """A non-owner writer in the session described by :meth:`handoff`: it writes and
        journals, and the owner commits."""
        self = cls.__new__(cls)
        path = str(handoff["path"])
        target = str(handoff.get("target", path))
        if path != target and not os.path.isdir(path):
            # The owner's replacement is switched in (or given up): its session has ended.
            # Join it closed at the target (writes raise ClosedError), never as an owner of
            # a new replacement that would switch an empty store in.
            handoff = {**handoff, "path": target}
            path = target
        self._init_state(
            path,
            str(handoff["variable"]),
            bool(handoff["named"]),
            bool(handoff["fsync"]),
        )
        self._sess = Session.from_handoff(handoff)
        self.target = target  # a member writes where the owner writes; the owner switches
        self._replacing = None
        self.checksums = bool(handoff.get("checksums", True))
        manifest = read_manifest(self.path)
        if self.variable in manifest.variables:
            self._adopt(manifest.variables[self.variable])
        return self

    # ------------------------------------------------------------------ setup
    @property
    def _lock_path(self) -> str:
        return os.path.join(self.path, LOCK_NAME)

    @property
    def _alloc_path(self) -> str:
        return os.path.join(self.path, ALLOC_NAME)

    @property
    def is_owner(self) -> bool:
        """True in the process that created this writer (the one that commits)."""
        return self._sess.is_owner

    def _create_empty(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
            os.makedirs(os.path.join(self.path, INDEX_DIR), exist_ok=True)
        except OSError as exc:
            raise wrap_os_error(exc, self.path) from None
        with locked_here(self.path):
            if is_store(self.path):  # another process won the race to create it
                return
            empty = Manifest(0, {}, None, DEFAULT_ROW_DIM, {})
            if self._dtype is not None:
                # dtype known: the first commit already holds the variable, so no reader
                # (and no crash) ever sees a store without it; with no row shape yet, an
                # empty placeholder the first write replaces (see row_shape_pending)
                self._commit_new_variable(
                    empty, self._dtype, self._trailing or (), pending=self._trailing is None
                )
                return
            atomic_write(os.path.join(self.path, MANIFEST_NAME), empty.dumps(), fsync=self.fsync)

    def _adopt(self, var: Variable) -> None:
        """Take dtype, row shape and data file from the committed variable (appending)."""
        pending = row_shape_pending(var)
        if self._dtype is not None and self._dtype != var.dtype:
            raise SchemaError(
                f"the store at {self.path!r} holds {var.dtype} data in {self.variable!r} but this "
                f"writer was opened with dtype={self._dtype}; open it with dtype={str(var.dtype)!r} "
                "(or None), or pass remove_exist=True to start over"
            )
        if self._trailing is not None and self._trailing != var.shape[1:]:
            raise SchemaError(
                f"the store at {self.path!r} has rows of shape {var.shape[1:]} but this writer was "
                f"opened with shape[1:]={self._trailing}; rows must keep one shape"
            )
        if pending:  # no row shape yet: the first write (of any writer) fixes it
            self._dtype = var.dtype
            return
        if len(var.shards) > 1:
            raise SchemaError(
                f"{self.path!r} variable {self.variable!r} is sharded; append to it with "
                "bigarray.dask_backend.to_bigarray or write a new store"
            )
        # the shard first: a thread that sees dtype and row shape set must see the shard too
        self._shard = var.shards[0] if var.shards else None
        self._dims = self._dims or var.dims
        self._dtype, self._trailing = var.dtype, var.shape[1:]

    def _ensure_variable(self, dtype: np.dtype, trailing: tuple[int, ...]) -> None:
        """Create the variable (its data file and a schema commit) unless it exists."""
        # the store lock first, then the thread lock: the one lock order (see _init_state)
        with locked(self._lock_path), self._lock:
            if self._shard is not None:  # another thread of this process created it
                return
            manifest = read_manifest(self.path)
            var = manifest.variables.get(self.variable)
            if var is not None and not row_shape_pending(var):
                self._adopt(var)
                return
            self._commit_new_variable(manifest, dtype, trailing)

    def _commit_new_variable(
        self,
        manifest: Manifest,
        dtype: np.dtype,
        trailing: tuple[int, ...],
        *,
        pending: bool = False,
    ) -> None:
        """Create the variable's data file, then commit a manifest that names it (caller
        holds the store lock). The file is complete and durable before any manifest names it."""
        fname = data_file_name(self.variable)
        full = os.path.join(self.path, fname)
        header = npy_header(dtype, (0, *trailing))
        row_nbytes = int(dtype.itemsize * int(np.prod(trailing, dtype=np.int64)))
        capacity = len(header) + self._declared_rows * row_nbytes
        try:
            with open(full, "wb") as f:
                f.write(header)
                f.truncate(capacity)
                if self.fsync:
                    os.fsync(f.fileno())
        except OSError as exc:
            raise wrap_os_error(exc, full) from None
        ndim = 1 + len(trailing)
        dims = self._dims or (manifest.row_dim, *[f"dim_{i}" for i in range(1, ndim)])
        if len(dims) != ndim:
            raise SchemaError(f"dims {dims!r} must name {ndim} dimensions")
        self._dims = tuple(dims)
        shard = Shard(fname, len(header), 0, 0)
        encoding = {PENDING_KEY: True} if pending else {}
        var = Variable(
            self.variable, dtype, (0, *trailing), self._dims, (shard,), self._attrs, encoding
        )
        new = Manifest(
            manifest.generation + 1,
            {**manifest.variables, self.variable: var},
            manifest.segments,
            manifest.row_dim,
            manifest.attrs,
        )
        atomic_write(os.path.join(self.path, MANIFEST_NAME), new.dumps(), fsync=self.fsync)
        if pending:  # no row shape yet: this writer has no variable to write to either
            self._dims = None
            return
        # dtype and row shape last: other threads take them as "the variable exists"
        self._shard = shard
        self._dtype, self._trailing = dtype, trailing

    @property
    def _row_nbytes(self) -> int:
        assert self._dtype is not None and self._trailing is not None
        return int(self._dtype.itemsize * int(np.prod(self._trailing, dtype=np.int64)))

    @property
    def dtype(self) -> np.dtype | None:
        return self._dtype

    @property
    def row_shape(self) -> tuple[int, ...] | None:
        return self._trailing

    # ------------------------------------------------------------------ writing
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(
                f"this writer of {self.path!r} is closed; open a new writer to append"
            )

    def _data_fd(self) -> int:
        """The owner's descriptor of the data file, opened once and kept until ``close``."""
        # Descriptors do not survive pickling, and a forked child must not share the
        # parent's file offset machinery: every process opens its own (pwrite needs none).
        fd = self._fd
        if fd is None or self._fd_pid != os.getpid():
            with self._lock:
                if self._fd is None or self._fd_pid != os.getpid():
                    self._fd_pid = None
                    self._fd = self._open_data_file()
                    self._fd_pid = os.getpid()
                fd = self._fd
        return fd

    def _open_data_file(self) -> int:
        assert self._shard is not None
        # a stranger's store may hold a data file that is a symlink out of the directory:
        # never write through it
        full = resolve_inside(self.path, self._shard.path)
        try:
            return os.open(full, os.O_RDWR)
        except OSError as exc:
            raise wrap_os_error(exc, self.path) from None

    def prepare(self, arrays: Sequence[Any]) -> list[np.ndarray]:
        """Validate arrays against the store's dtype and row shape (casting happens while
        writing, batch by batch, so a large write never holds a second full copy)."""
        return self._prepare(arrays)[0]

    def _prepare(self, arrays: Sequence[Any]) -> tuple[list[np.ndarray], np.ndarray]:
        """:meth:`prepare`, plus the row count of each array (one pass over a million small
        arrays costs ~0.1 s, so the checks share their passes)."""
        out = [a if type(a) is np.ndarray else np.asarray(a) for a in arrays]
        if not out:
            return out, np.zeros(0, np.int64)
        if len(out) >= FAST_MIN_ARRAYS and self._dtype is not None and self._trailing is not None:
            # Many small arrays: they are packed with np.concatenate anyway, which checks row
            # shapes and casting itself (see batches.write_batches); here only the row counts.
            try:
                return out, np.fromiter(map(len, out), np.int64, len(out))
            except TypeError:
                pass  # a scalar: the full checks below say which
        return out, self._check_arrays(out)

    def _check_arrays(self, out: list[np.ndarray]) -> np.ndarray:
        """Check every array's shape and dtype against the store; return the row counts."""
        if self._dtype is None or self._trailing is None or self._shard is None:
            first = self._dtype if self._dtype is not None else normalize_dtype(out[0].dtype)
            rows_shape = self._trailing if self._trailing is not None else out[0].shape[1:]
            if out[0].ndim:
                self._ensure_variable(first, tuple(rows_shape))
        assert self._dtype is not None and self._trailing is not None
        return check_arrays(out, self._dtype, self._trailing)

    def _write_batches(
        self, fd: int, arrays: list[np.ndarray], lengths: np.ndarray, start: int
    ) -> integrity.WriteFollower | None:
        """``pwrite`` the arrays back to back from row ``start`` (see
        :func:`bigarray.core.batches.write_batches`)."""
        assert self._dtype is not None and self._shard is not None
        return write_batches(
            fd,
            arrays,
            lengths,
            start,
            data_offset=self._shard.offset,
            row_nbytes=self._row_nbytes,
            dtype=self._dtype,
            path=self.path,
            check_arrays=self._check_arrays,
            fsync=self.fsync,
            checksums=self.checksums,
            defer_sums=self.is_owner,
        )

    def _allocate(self, n: int, start: int | None, fd: int) -> int:
        """Reserve rows ``[start, start + n)`` (appending when ``start`` is None) and make the
        data file large enough (see :func:`bigarray.core.rows.allocate`)."""
        assert self._shard is not None
        return allocate(
            self.path, self._journal, fd, self._shard.offset, self._row_nbytes, n, start
        )

    def _committed_state(self) -> tuple[Any, ...]:
        """``(stamp, open store, rows, holes, rows of the longest variable)`` of
        the newest committed manifest, re-read only when the manifest file changed. One
        tuple, replaced whole, so that threads never see half of one commit's state."""
        mpath = os.path.join(self.path, MANIFEST_NAME)
        st = os.stat(mpath)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        state = self._committed
        if state is not None and state[0] == stamp:
            return state
        # the index mapped at once: a commit of another session may delete the index files
        # of the manifest just read before a lazy open maps them (open_local opens again)
        store = open_local(self.path)
        assert isinstance(store, Store)
        var = store.manifest.variables.get(self.variable)
        rows = var.rows if var is not None else 0
        holes = unwritten_rows(var) if var is not None else []
        # every committed segment ends within the rows of the variable that named it
        rows_all = max((v.rows for v in store.manifest.variables.values()), default=0)
        state = (stamp, store, rows, holes, rows_all)
        old, self._committed = self._committed, state
        if old is not None:
            old[1].close()
        return state

    def _drop_committed_state(self) -> None:
        old, self._committed = self._committed, None
        if old is not None:
            old[1].close()

    def _check_committed_overlap(self, start: int, stop: int) -> None:
        """Refuse a write that would overwrite committed rows: rows of committed named
        segments, and any other committed row that a commit wrote, named store or not (the
        rows a declared shape added and nobody wrote yet stay writable)."""
        if stop <= start:
            return
        with self._lock:
            _, store, rows, holes, rows_all = self._committed_state()
            idx = store.index
            hit = None
            if idx is not None and start < rows_all:
                # a binary search in each run of the index, mapped, no copy
                hit = idx.first_overlap(np.array([[start, stop]]))
            if not self.is_owner:  # worker copies keep no descriptor of the store
                self._drop_committed_state()
        if hit is not None:
            _, name, a, b = hit
            raise OverlapError(
                f"rows [{start}, {stop}) overlap committed segment {name!r} rows [{a}, {b}) of "
                f"{self.path!r}; committed data is never overwritten. Append with "
                "start_position=None or pick free rows."
            )
        if start < rows and not covered(holes, start, min(stop, rows)):
            raise OverlapError(
                f"rows [{start}, {stop}) overlap rows committed to {self.path!r} (it holds "
                f"{rows:,} committed rows{', some written without a name' if idx is not None else ''}"
                "); committed rows are never overwritten. Append with start_position=None, or "
                "write past the committed rows."
            )

    def write_rows(
        self,
        arrays: Sequence[Any],
        names: Sequence[str] | KeysView[str] | None = None,
        start_position: int | None = None,
    ) -> tuple[int, int]:
        """Write ``arrays`` back to back from ``start_position`` (or appended); return the
        rows ``[start, stop)`` they occupy. ``names`` makes each array a named segment."""
        self._check_open()
        if names is not None and len(names) != len(arrays):
            raise SchemaError(f"{len(names)} names for {len(arrays)} arrays")
        if start_position is not None:
            if isinstance(start_position, bool) or not isinstance(
                start_position, (int, np.integer)
            ):
                raise SchemaError(
                    f"start_position must be an int >= 0 or None, not {start_position!r}"
                )
            if start_position < 0:
                raise SchemaError(f"start_position must be >= 0, not {start_position}")
            start_position = int(start_position)
        unique = isinstance(names, KeysView)  # a mapping's keys: no duplicates among them
        if names is not None and not isinstance(names, list):
            names = list(names)
        # names and hashes only (the rows are not known yet): probed against the index
        no_rows = np.zeros(len(names) if names else 0, np.int64)
        seg = SegmentArrays.from_names(names, no_rows, no_rows) if names else None
        prepared, lengths = self._prepare(arrays)
        total = int(lengths.sum())
        if not prepared and self._shard is None:  # nothing to write, and nowhere yet
            return 0, 0
        if names:
            assert seg is not None
            # a write done before by this session (a task rerun): not written again
            rerun = None if self.is_owner else self._journaled_rerun(names, seg, prepared, lengths)
            if rerun is not None:
                return rerun
            # Refused here, before any byte is written, rather than at the commit
            committed = self._check_names(names, seg, unique)
            if committed is not None:
                rerun = self._committed_rerun(seg, committed, prepared, lengths)
                if rerun is not None:
                    return rerun
                i = int(np.flatnonzero(committed[:, 0] >= 0)[0])
                a, b = committed[i]
                raise DuplicateSegmentError(
                    f"segment name {names[i]!r} is already committed in {self.path!r} "
                    f"(rows [{a}, {b})); every segment needs a unique name. Nothing was "
                    "written by this call."
                )
            if start_position is not None:
                self._check_own_overlap(start_position, start_position + total)
        owner = self.is_owner
        # A worker (Pool child, dask task thread) opens the data file for this write only:
        # threads of one worker share this object, a long-lived worker holds no store open,
        # and the page cache of a store deleted later is freed at once.
        fd = self._data_fd() if owner else self._open_data_file()
        try:
            start = self._allocate(total, start_position, fd)
            crash_point("after-allocate")
            stop = start + total
            self._check_committed_overlap(start, stop)
            if owner:
                # an in-memory mark: a commit running meanwhile re-reads these rows' blocks
                # rather than trusting the sums this write computes (see Journal.begin_write)
                mark_name: str | None = f"owner-{next(_owner_marks)}"
                assert mark_name is not None
                with self._lock:
                    self._inflight[mark_name] = (start, stop)
                mark = None
            else:
                mark = self._journal.begin_write(start, stop)
                mark_name = os.path.basename(mark)
            try:
                follow = self._write_batches(fd, prepared, lengths, start)
            except BaseException:
                if owner:  # the rows changed, but no record will say so
                    with self._lock:
                        self._unrecorded.append((start, stop))
                        self._inflight.pop(str(mark_name), None)
                raise
            sums: Any = None
            if follow is not None and owner:
                # The owner's write returns as soon as its bytes are in the page cache: the
                # follower's sums (and, for a durable commit, the writeback it starts) finish
                # in the background and the commit waits for them (_settle_followers).
                sums = follow
                self._followers.append(follow)
            elif follow is not None:  # a worker's journal record must carry its sums
                sums = follow.result()
            crash_point("after-data")
            starts = np.empty(len(prepared), np.int64)
            ends = np.cumsum(lengths) + start if len(lengths) else np.zeros(0, np.int64)
            starts[:] = ends - lengths
            if seg is not None:
                seg = SegmentArrays(
                    seg.names, seg.name_offsets, np.stack([starts, ends], 1), seg.hashes
                )
            record = Record(self.variable, seg, stop, start, sums, mark=mark_name)
            if owner:
                with self._lock:
                    self._inflight.pop(str(mark_name), None)
                    if self._sealing or self._closed:
                        # close() ran in another thread meanwhile: its final commit has
                        # taken its records, so this write's rows would never be committed
                        self._unrecorded.append((start, stop))
                        raise ClosedError(
                            f"this writer of {self.path!r} was closed by another thread while "
                            "this write ran; its rows were not committed. Close only after "
                            "every writing thread has finished."
                        )
                    self._pending.append((record, starts, ends))
                    if names:
                        self._remember(names, start, stop)
            else:
                key = record_key(seg.hashes) if seg is not None else None
                self._journal.append(record, starts, ends, key=key)
                crash_point("after-journal")
                assert mark is not None
                self._journal.end_write(mark)
                if names:
                    with self._lock:
                        self._remember(names, start, stop)
        finally:
            if not owner:
                os.close(fd)
                self._wrote_pid = os.getpid()
        return start, stop

    # ------------------------------------------------------------------ name checks
    def _remember(self, names: list[str], start: int, stop: int) -> None:
        """Record names and rows this process wrote in this session (caller holds _lock)."""
        if self._names_seen is None and self._names_first is None:
            self._names_first = names  # one big write pays no set
        else:
            if self._names_seen is None:
                self._names_seen = set(self._names_first or ())
                self._names_first = None
            self._names_seen.update(names)
        if stop > start:
            bisect.insort(self._extents, (start, stop))

    def _journaled_rerun(
        self,
        names: list[str],
        seg: SegmentArrays,
        arrays: list[np.ndarray],
        lengths: np.ndarray,
    ) -> tuple[int, int] | None:
        """The rows of an earlier write of this session, journaled and not committed yet,
        with the same names (in any order), lengths and bytes (a dask task rerun after its
        worker died, a pool task retried), or None. Its record is filed under
        :func:`~bigarray.core.journal.record_key` of its names."""
        found = self._journal.find(record_key(seg.hashes))
        if found is None:
            return None
        rec, bounds = found
        assert rec.segments is not None
        where = {rec.segments.name(i): i for i in range(rec.segments.count)}
        if len(where) != len(names) or not all(n in where for n in names):
            return None
        return self._same_rows(bounds[[where[n] for n in names]], arrays, lengths)

    def _committed_rerun(
        self,
        seg: SegmentArrays,
        found: np.ndarray,
        arrays: list[np.ndarray],
        lengths: np.ndarray,
    ) -> tuple[int, int] | None:
        """The rows of an earlier write of this session that one of its commits (a flush)
        committed, with the same names, lengths and bytes, or None: ``found`` holds the
        committed bounds of each name. A name another session committed is not this
        session's to repeat (each commit of the session notes the name hashes it added)."""
        if not bool(np.all(found[:, 0] >= 0)):
            return None
        mine = self._journal.committed_hashes()
        if not len(mine):
            return None
        pos = np.minimum(np.searchsorted(mine, seg.hashes), len(mine) - 1)
        if not bool(np.all(mine[pos] == seg.hashes)):
            return None
        return self._same_rows(found, arrays, lengths)

    def _same_rows(
        self, bounds: np.ndarray, arrays: list[np.ndarray], lengths: np.ndarray
    ) -> tuple[int, int] | None:
        """``(first row, end)`` of ``bounds`` if the data file holds exactly ``arrays``
        there (the store's dtype), else None."""
        if self._shard is None or self._dtype is None:
            return None
        if not np.array_equal(bounds[:, 1] - bounds[:, 0], lengths):
            return None
        fd = self._data_fd() if self.is_owner else self._open_data_file()
        try:
            read = pread_rows(fd, self._shard.offset, self._row_nbytes)
            for (a, b), arr in zip(bounds.tolist(), arrays, strict=True):
                if read(a, b) != np.ascontiguousarray(arr, dtype=self._dtype).tobytes():
                    return None
        finally:
            if not self.is_owner:
                os.close(fd)
        return int(bounds[:, 0].min()), int(bounds[:, 1].max())

    def _check_names(
        self, names: list[str], seg: SegmentArrays | None, unique: bool
    ) -> np.ndarray | None:
        """Refuse names used twice in this call or already written by this process in this
        session; return the committed bounds of each name (``-1`` where not committed) when
        some are committed already, else None."""
        if not unique and len(set(names)) != len(names):
            seen: set[str] = set()
            dup = next(n for n in names if n in seen or seen.add(n))  # type: ignore[func-returns-value]
            raise DuplicateSegmentError(
                f"segment name {dup!r} appears twice in one write to {self.path!r}; every "
                "segment needs a unique name. Nothing was written."
            )
        with self._lock:
            if self._names_first is not None and self._names_seen is None:
                self._names_seen = set(self._names_first)
                self._names_first = None
            seen_before = self._names_seen
            if seen_before is not None and not seen_before.isdisjoint(names):
                dup = next(n for n in names if n in seen_before)
                raise DuplicateSegmentError(
                    f"segment name {dup!r} was already written to {self.path!r} by this writer "
                    "in this session; every segment needs a unique name. Nothing was written "
                    "by this call, and the segments written before are kept."
                )
        if seg is None:
            return None
        with self._lock:
            idx = self._committed_state()[1].index
            if idx is None or not len(idx):
                if not self.is_owner:
                    self._drop_committed_state()
                return None
            # the index's hash tables, probed for all names at once: O(new names), no
            # committed name decoded
            found = idx.match(seg)
            if not self.is_owner:  # worker copies keep no descriptor of the store
                self._drop_committed_state()
        return found if bool(np.any(found[:, 0] >= 0)) else None

    def _check_own_overlap(self, start: int, stop: int) -> None:
        """Refuse a positioned named write over rows this process's named writes of this
        session already hold (the commit would refuse the pair and name both)."""
        if stop <= start:
            return
        with self._lock:
            # the extents are disjoint and sorted: only the last one starting before `stop`
            # can reach past `start`
            ext = self._extents
            i = bisect.bisect_left(ext, (stop, -1)) - 1
            if i >= 0 and ext[i][1] > start:
                a, b = ext[i]
                raise OverlapError(
                    f"rows [{start}, {stop}) overlap rows [{a}, {b}) this writer already "
                    f"wrote named segments to in {self.path!r}; each segment needs its own "
                    "rows. Nothing was written: append with start_position=None or pick "
                    "free rows."
                )

    def name_rows(self, names: Sequence[str], starts: Sequence[int], stops: Sequence[int]) -> None:
        """Name rows ``[starts[i], stops[i])`` already written by unnamed :meth:`write_rows`
        calls as the segments ``names[i]``.

        This lets a converter stream one segment larger than memory in blocks, then name it
        once. The names are committed like any write (duplicates and overlaps refused).
        """
        self._check_open()
        b = np.asarray(starts, np.int64).reshape(-1)
        e = np.asarray(stops, np.int64).reshape(-1)
        if not (len(names) == len(b) == len(e)):
            raise SchemaError(f"{len(names)} names for {len(b)} starts and {len(e)} stops")
        if len(b) and bool(((b < 0) | (e < b)).any()):
            i = int(np.flatnonzero((b < 0) | (e < b))[0])
            raise SchemaError(
                f"segment {names[i]!r} rows [{b[i]}, {e[i]}) are not a range 0 <= start <= stop"
            )
        seg = SegmentArrays.from_names(list(names), b, e)
        record = Record(self.variable, seg, int(e.max()) if len(e) else 0, data=False)
        if self.is_owner:
            self._pending.append((record, b, e))
        else:
            self._journal.append(record, b, e)

    # ------------------------------------------------------------------ commit
    def flush(self) -> None:
        """Commit everything written so far by every process of this writer.

        In a child process (fork/spawn/dask worker) ``flush`` only makes the rows written
        there durable; the owner's ``flush``/``close`` commits them.
        """
        self._check_open()
        if not self.is_owner:
            if self.fsync and self._wrote_pid == os.getpid():
                fd = self._open_data_file()
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return
        self._commit()

    def _commit(self, final: bool = False) -> None:
        if not os.path.isdir(self.path):
            # deleted by hand (or by another program) under the session: a clear error, never a
            # bare FileNotFoundError from the lock file, and nothing re-created there
            raise CommitConflictError(
                f"the store {self.path!r} was deleted after this writer opened it; the writes "
                "it had not committed are lost with it. Nothing was committed."
            )
        with locked(self._lock_path):
            crash_point("commit-locked")
            manifest = read_manifest(self.path)
            self._check_same_store()
            # Marks before records: a write still running now may publish its record before
            # the records are listed; remembering its mark keeps its sums, taken before this
            # commit, from being trusted later (its blocks are read back instead).
            unfinished = self._journal.unfinished_writes()
            # the owner's block sums, finished in the background since write() returned
            self._settle_followers()
            with self._lock:
                # this process's threads: a write is in flight or pending, never neither
                unfinished.update(self._inflight)
                self._seen_marks.update(unfinished)
                self._sealing = final
                taken = list(self._pending)
                unrecorded_taken = list(self._unrecorded)
            files = self._journal.pending()
            records = [r for r in self._journal.read(files)]
            # (a record whose follower is still unsettled, from a write racing this commit in
            # another thread, brings no sums: its blocks are read back)
            records += [
                dataclasses.replace(r, sums=None)
                if isinstance(r.sums, integrity.WriteFollower)
                else r
                for r, _, _ in taken
            ]
            var = manifest.variables.get(self.variable)
            if var is not None and row_shape_pending(var) and not records:
                var = None  # the placeholder stays until a write (or close) replaces it
            if var is None and (self._dtype is None or not (records or self._declared_rows)):
                self._journal.discard(files)
                self._forget_taken(taken, unrecorded_taken)
                return
            mine = [r for r in records if r.variable == self.variable]
            others = [r for r in records if r.variable != self.variable]
            if others:  # records of another variable belong to another writer's session
                raise SchemaError(f"journal holds records of {others[0].variable!r}")
            var = manifest.variables[self.variable]
            if self._shard is None:  # a child process created the variable
                self._adopt(var)
            rows = max([var.rows, self._declared_rows, *[r.stop for r in mine]])
            new_segments = [r.segments for r in mine if r.segments is not None]
            if new_segments:
                # checked against every run of the committed index, which stays on disk
                fresh = concat(new_segments)
                with Store(self.path) as store:
                    try:
                        plan_index = plan_commit(
                            store.index, manifest.segments, fresh, f" in {self.path!r}"
                        )
                    except (DuplicateSegmentError, OverlapError) as exc:
                        # only on failure: every committed segment, to name the conflicts
                        a = store.index.arrays if store.index is not None else None
                        committed = (
                            SegmentArrays.empty()
                            if a is None
                            else SegmentArrays(
                                np.array(a.names),
                                np.array(a.name_offsets),
                                np.array(a.bounds),
                                np.array(a.hashes),
                            )
                        )
                        retry = None
                        if isinstance(exc, DuplicateSegmentError) and self._shard is not None:
                            # a task rerun after its worker died wrote a segment again, with
                            # the same bytes (reruns.py): committed once
                            read = pread_rows(self._data_fd(), self._shard.offset, self._row_nbytes)
                            fresh = drop_identical_reruns(committed, fresh, read)
                            try:
                                retry = plan_commit(
                                    store.index, manifest.segments, fresh, f" in {self.path!r}"
                                )
                            except (DuplicateSegmentError, OverlapError) as again:
                                exc = again
                        if retry is None:
                            raise self._conflict(exc, committed, fresh) from None
                        plan_index = retry
                    # (rows named again by name_rows wrote no bytes: an idempotent retry)
                    named_only = [
                        r.segments.hashes for r in mine if not r.data and r.segments is not None
                    ]
                    self._check_repeats(plan_index.repeated, named_only)
                    rows = max(rows, plan_index.max_stop)
            assert self._shard is not None
            fd = self._data_fd()
            # Rows rewritten in place change committed blocks: with checksums on, that needs a
            # new manifest (new sums) even when no row and no segment was added.
            resum = self.checksums and bool(mine)
            # the committed rows no write has written yet (named store or not): rows written
            # by unnamed writes are committed too and never overwritten (see unwritten_rows)
            encoding = next_unwritten(var, rows, mine, unrecorded_taken, unfinished)
            if rows == var.rows and not new_segments and not resum and encoding == var.encoding:
                if mine and self.fsync:  # rows rewritten in place: make them durable
                    os.fsync(fd)
                self._journal.discard(files)
                self._forget_taken(taken, unrecorded_taken)
                return
            shard = Shard(self._shard.path, self._shard.offset, 0, rows)
            new_var = Variable(
                var.name,
                var.dtype,
                (rows, *var.shape[1:]),
                var.dims,
                (shard,),
                var.attrs,
                encoding,
                None,
            )
            # The blocks to sum: those written since the last commit. Records that only name
            # rows wrote nothing (the rows they name are summed under records of their own);
            # writes with no record (raised, killed, or still running) changed rows too:
            # their blocks are read back, whatever sums other records bring.
            wrote = [r for r in mine if r.data]
            ranges = [(r.start, r.stop) if r.start is not None else (0, r.stop) for r in wrote]
            sums_of = [None if r.mark in self._seen_marks else r.sums for r in wrote]
            unrecorded = unrecorded_taken + list(unfinished.values())
            ranges += unrecorded
            sums_of += [None] * len(unrecorded)
            update = DataUpdate(new_var, fd, ranges, sums_of, checksums=self.checksums)

            if new_segments and plan_index.new.count:
                # Noted before the manifest names them: a rerun after this commit, or this
                # session's records replayed after a commit that failed past its rename, are
                # this session's own (see _committed_rerun, _check_repeats).
                self._journal.note_committed(manifest.generation + 1, plan_index.new.hashes)

            def published(new: Manifest) -> None:
                self._shard = shard
                if read_alloc(self._alloc_path) < rows:
                    atomic_write(self._alloc_path, rows.to_bytes(8, "little"), fsync=False)
                self._journal.discard(files)
                # only what this commit took: other threads may have written meanwhile
                self._forget_taken(taken, unrecorded_taken)  # (it read unrecorded blocks back)
                crash_point("after-discard")

            commit_local(
                self.path,
                manifest,
                [update],
                index=plan_index if new_segments else None,
                fsync=self.fsync,
                published=published,
            )

    def _settle_followers(self) -> None:
        """Wait for the owner's write followers and put their sums in the pending records
        (a follower that failed leaves its blocks to be read back by the commit)."""
        followers, self._followers = self._followers, []
        settled: dict[int, integrity.WrittenSums | None] = {}
        if self._fd_pid != os.getpid():
            followers = []  # a forked copy: the threads ran in the parent; read blocks back
        for f in followers:
            try:
                settled[id(f)] = f.result()
            except (OSError, IntegrityError):  # e.g. the file shrank: the commit reads back
                settled[id(f)] = None
        if not settled:
            return
        with self._lock:  # records replaced in place: a commit forgets exactly what it took
            self._pending = [
                (dataclasses.replace(p[0], sums=settled[id(p[0].sums)]), p[1], p[2])
                if isinstance(p[0].sums, integrity.WriteFollower) and id(p[0].sums) in settled
                else p
                for p in self._pending
            ]

    def _forget_taken(self, taken: list[Any], unrecorded: list[tuple[int, int]]) -> None:
        """Drop the pending records (and failed writes' rows) a commit took, by identity."""
        with self._lock:
            ids = {id(t) for t in taken}
            self._pending = [p for p in self._pending if id(p) not in ids]
            ids = {id(u) for u in unrecorded}
            self._unrecorded = [u for u in self._unrecorded if id(u) not in ids]

    def _check_same_store(self) -> None:
        """Refuse to commit into a store that was deleted and re-created (``remove_exist``
        by another writer) since this writer opened its data file: the rows it wrote are in
        the deleted file, and a manifest naming them would name rows that do not exist."""
        # The session's journal directory goes with the store: this process created it (and
        # holds its owner lock), so only a deletion of the store removes it.
        gone = self._journal.started and not os.path.isdir(self._journal.dir)
        fd = self._fd if self._fd_pid == os.getpid() else None
        if not gone and fd is not None and self._shard is not None:
            try:
                here = os.stat(os.path.join(self.path, self._shard.path))
                mine = os.fstat(fd)
                gone = (here.st_ino, here.st_dev) != (mine.st_ino, mine.st_dev)
            except FileNotFoundError:
                gone = True
        if gone:
            raise CommitConflictError(
                f"the store at {self.path!r} was deleted or replaced (by another writer with "
                "remove_exist=True, or by hand) while this writer was writing; nothing of this "
                "session was committed and the new store is untouched. Discard this writer "
                "(discard()) and write again."
            )

    def _check_repeats(
        self, repeated: SegmentArrays | None, exempt: Sequence[np.ndarray] = ()
    ) -> None:
        """Refuse new segments equal (name and rows) to committed ones that another session
        committed: two sessions wrote one name at the same explicit rows, so the one that
        committed second wrote over the first one's rows. Equal segments this session's
        own commits added are a journal replayed after a crash, or a rerun: dropped."""
        if repeated is None or not repeated.count:
            return
        mine = self._journal.committed_hashes()
        if exempt:
            mine = np.sort(np.concatenate([mine, *[np.asarray(e, np.uint32) for e in exempt]]))
        pos = np.minimum(np.searchsorted(mine, repeated.hashes), max(len(mine) - 1, 0))
        ours = (mine[pos] == repeated.hashes) if len(mine) else np.zeros(repeated.count, bool)
        foreign = np.flatnonzero(~ours)
        if not foreign.size:
            return
        names = [repeated.name(int(i)) for i in foreign]
        self.conflicts = names
        a, b = repeated.bounds[int(foreign[0])].tolist()
        raise repeat_refused(self.path, names, (a, b))

    def _conflict(
        self, exc: BigArrayError, committed: SegmentArrays, new: SegmentArrays
    ) -> BigArrayError:
        """The commit's conflict error, naming every conflicting uncommitted segment and
        saying how to recover; the writer stays open with its segments pending."""
        names = conflicting_names(committed, new)
        self.conflicts = names
        return merge_refused(exc, names)

    def forget(self, names: Sequence[str]) -> int:
        """Drop uncommitted segments ``names`` of this session (after a commit refused
        them, see ``exc.segments``): their rows stay as unnamed garbage, the other
        uncommitted segments are kept. Owner only; returns how many segments were dropped."""
        self._check_open()
        if not self.is_owner:
            raise ClosedError("only the process that created the writer may forget segments")
        drop = {n.encode("utf-8", "surrogatepass") for n in names}
        count = 0

        def keep_mask(seg: SegmentArrays) -> np.ndarray:
            off = seg.name_offsets
            return np.array(
                [seg.names[off[i] : off[i + 1]].tobytes() not in drop for i in range(seg.count)],
                bool,
            )

        with locked(self._lock_path), self._lock:
            for k, (r, b, e) in enumerate(self._pending):
                if r.segments is None:
                    continue
                keep = keep_mask(r.segments)
                if keep.all():
                    continue
                count += int((~keep).sum())
                idx = np.flatnonzero(keep)
                r2 = Record(
                    r.variable, r.segments.take(idx), r.stop, r.start, r.sums, r.data, r.mark
                )
                self._pending[k] = (r2, b[idx], e[idx])
            for path in self._journal.pending():
                (r,) = self._journal.read([path])
                if r.segments is None:
                    continue
                keep = keep_mask(r.segments)
                if keep.all():
                    continue
                count += int((~keep).sum())
                idx = np.flatnonzero(keep)
                seg = r.segments.take(idx)
                r2 = Record(r.variable, seg, r.stop, r.start, r.sums, r.data, r.mark)
                self._journal.append(r2, seg.bounds[:, 0], seg.bounds[:, 1], gated=False)
                self._journal.discard([path])
            if self._names_first is not None:
                self._names_seen = set(self._names_first)
                self._names_first = None
            if self._names_seen is not None:
                self._names_seen.difference_update(names)
        return count

    def abort(self) -> None:
        """Forget everything written since the last commit (the rows stay as garbage)."""
        self._stop_followers()
        with self._lock:
            self._journal.discard(self._journal.pending())
            self._pending.clear()
            self._names_first = None
            self._names_seen = None
            self._extents = []

    def _stop_followers(self) -> None:
        """Stop the owner's write followers (they read through the descriptor ``close`` shuts)."""
        followers, self._followers = self._followers, []
        for f in followers:
            f.cancel()

    def close(self) -> None:
        """Commit (in the owner) and release the writer. Closing twice is harmless.

        In a non-owner process ``close`` is ``flush``: it makes that process's rows durable
        but leaves the writer usable, because the owner's lifecycle governs the session
        (a spawned child re-running ``writer.close()`` at import must still write).
        """
        if self._closed:
            self._switch()  # a replacement committed but refused its switch: try again
            return
        if not self.is_owner:
            self.flush()
            return
        if self._shard is None and self._dtype is not None:
            # a dtype and no write: the store holds an empty (0, *row shape) variable of it
            self._ensure_variable(self._dtype, self._trailing or ())
        # No member process publishes a record while the final commit lists and merges
        # them; after it, the sealed gate makes their writes raise instead. A failed commit
        # (a conflict, a full disk) raises here and leaves the writer open with every
        # uncommitted write intact: fix the cause, then close() again, or discard().
        try:
            with self._journal.gate(exclusive=True, missing_ok=True):
                self._commit(final=True)
                self._journal.seal()
        except BaseException:
            self._sealing = False  # still open: writes may go on
            raise
        self._release()
        self._switch()

    def _switch(self) -> None:
        """Put a replacement (``remove_exist``), committed beside its target, in its place."""
        dest = self._replacing
        if dest is None or not self.is_owner:
            return
        try:
            dest.commit(keep_on_refusal=True)
        except StoreExistsError as exc:
            raise StoreExistsError(
                f"{exc} The replacement this writer wrote is committed, whole, at "
                f"{self.path!r} but was not switched in: close those writers, then call "
                "close() again to switch it in (the old store stays until then)."
            ) from None
        self._replacing = None
        self.path = self.target

    def discard(self) -> None:
        """End the session without committing (the owner's way to give up a write).

        Rows written since the last commit stay in the data file as garbage past the
        committed row count; records journaled later by still-running processes of this
        session are never merged.
        """
        if self._closed:
            if self._replacing is not None and self.is_owner:
                # a replacement committed beside the store whose switch was refused
                self._replacing.abandon()
                self._replacing = None
            return
        self.abort()
        self._release()
        if self._replacing is not None and self.is_owner:
            # a replacement that never switched in: the old store stays as it was
            self._replacing.abandon()
            self._replacing = None

    def take_ownership(self) -> None:
        """Make this process the owner of the session (to commit a write whose owner is
        elsewhere, e.g. the final task of a delayed dask write)."""
        self._sess.take_ownership()

    def _release(self) -> None:
        self._closed = True
        self._drop_committed_state()
        if self.is_owner:
            self._journal.end()
        self._close_data_file()

    def _close_data_file(self) -> None:
        """Close the owner's descriptor of the data file (worker copies open it per write)."""
        if self._fd_pid == os.getpid():
            self._stop_followers()
        fd, self._fd = self._fd, None
        if fd is not None and self._fd_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        # Commit what was fully written even when the block raised: every journaled
        # write is complete, and committing it loses nothing the caller can see. A
        # replacement (remove_exist) is the exception: a half-written new store must not
        # take the old one's place, so it is given up and the old store stays.
        if exc_type is not None and self._replacing is not None and self.is_owner:
            self.discard()
            return
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_fd_pid"] = None
        state["_pending"] = []  # the owner's in-memory records stay with the owner
        state["_followers"] = []
        state["_unrecorded"] = []
        state["_seen_marks"] = set()
        state["_wrote_pid"] = None
        state["_committed"] = None
        state["_inflight"] = {}
        state["_names_first"] = None
        state["_names_seen"] = None
        state["_extents"] = []
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        role = "owner" if self.is_owner else "worker"
        return (
            f"<StoreWriter {self.path!r} variable={self.variable!r} dtype={self._dtype} "
            f"row_shape={self._trailing} {role}{' closed' if self._closed else ''}>"
        )

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:  # an owner dropped without close()
            self._close_data_file()
        if getattr(self, "_closed", True) or not getattr(self, "is_owner", False):
            return
        journal = getattr(self, "_journal", None)
        if journal is None:
            return
        # Nobody can commit this session any more: release its owner lock, so that it
        # counts as dead (remove_exist, a later writer's reclaim) rather than live forever.
        journal.release()
        if self._pending or journal.pending():
            warnings.warn(
                f"a writer of {self.path!r} was garbage-collected with uncommitted writes; call "
                "flush() or close() (or use it as a context manager) to commit them",
                BigArrayWarning,
                stacklevel=2,
            )
