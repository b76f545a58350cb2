"""Opening a committed store for reading: manifest, segment index and data, checked first.

:class:`Store` is the read side every face builds on (the seed arrays, dask, xarray).
It reads ``manifest.json`` once, maps the index lazily, and hands out numpy views of
each variable's data after checking every file's size against the manifest, so a
truncated file is a :class:`~bigarray.errors.StoreCorruptedError`, never a SIGBUS.

:func:`open_store` is the one entry point for paths *and* URLs: a local path or ``file://``
URL gives a memory-mapped :class:`Store`; any other fsspec URL gives a :class:`RemoteStore`
with the same interface (``manifest``, ``index``, ``variable()``, ``read_rows()``,
``read_ranges()``, ``close()``) that reads by byte ranges (see :mod:`bigarray.core.filesystem`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import numpy as np

from ..errors import (
    NotAStoreError,
    StoreChangedError,
    StoreCorruptedError,
    StoreNotFoundError,
    VariableNotFoundError,
)
from .fileutil import map_readonly, resolve_inside
from .format import (
    DEFAULT_VARIABLE,
    INDEX_DIR,
    INDEX_ROLES,
    JOURNAL_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    IndexFiles,
    Manifest,
    Shard,
    Variable,
    parse_manifest,
)
from .index import IndexRun, SegmentIndex, index_nbytes

if TYPE_CHECKING:
    from .legacy import LegacyStore

# Index files smaller than this are read into memory: no descriptor or map is kept open.
_MAP_THRESHOLD = 1 << 20


class SegmentLookup(Protocol):
    """What every reader's segment index offers (:class:`~bigarray.core.index.SegmentIndex`,
    and the 2020 files' :class:`~bigarray.core.legacy.LegacyIndex`): ``name -> (start,
    stop)`` rows in row order, and the arrays behind it."""

    def __getitem__(self, name: str) -> tuple[int, int]: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[str]: ...

    def __contains__(self, name: object) -> bool: ...

    @property
    def bounds(self) -> np.ndarray:
        """``(n, 2)`` int64 ``[start, stop)`` of every segment in row order."""
        ...

    @property
    def arrays(self) -> Any:
        """The index arrays: ``bounds``, ``name_offsets``, ``names`` (uint8)."""
        ...


@runtime_checkable
class StoreReader(Protocol):
    """The read side every face is typed against: :class:`Store` (memory maps),
    :class:`RemoteStore` (byte ranges) and :class:`~bigarray.core.legacy.LegacyStore` (a
    2020 file in place) all satisfy it, so callers never probe for a method.

    A reader is a context manager; ``close()`` releases what it holds (maps of the index),
    and views or arrays handed out stay valid.
    """

    #: True when rows are read by byte ranges (no memory maps: ``shard_views`` raises).
    is_remote: bool
    #: True for a file of the 2020 library opened in place (read-only, no commit).
    is_legacy: bool

    @property
    def path(self) -> str:
        """Where the store is: a directory, a 2020 file, or the URL."""
        ...

    @property
    def manifest(self) -> Manifest:
        """The committed manifest this reader reads (one commit, whatever lands later)."""
        ...

    @property
    def index(self) -> SegmentLookup | None:
        """The segment index (``None`` for a store written without names)."""
        ...

    def variable(self, name: str | None = None) -> Variable:
        """The manifest entry of variable ``name`` (default: ``data`` or the only one)."""
        ...

    def shard_views(self, var: Variable) -> list[np.ndarray]:
        """Read-only memory maps of each shard of ``var`` (local readers only)."""
        ...

    def read_rows(self, name: str | None, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of a variable."""
        ...

    def read_ranges(self, name: str | None, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Rows ``[start, stop)`` of each range."""
        ...

    def fingerprint(self) -> tuple[Any, ...]:
        """The identity of the commit read: a store rewritten or replaced since gives
        another value (per-process caches key on it)."""
        ...

    def close(self) -> None:
        """Release what the reader holds."""
        ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


def interrupted_creation(path: str) -> bool:
    """True for a directory holding only what a writer killed while creating a store
    leaves behind (lock, empty index directory, manifest temporaries): nothing was ever
    committed there, so a new writer may create the store in it."""
    try:
        names = os.listdir(path)
        index = os.path.join(path, INDEX_DIR)
        if INDEX_DIR in names and (os.path.islink(index) or os.listdir(index)):
            return False
    except OSError:
        return False
    if JOURNAL_DIR in names and not only_session_debris(os.path.join(path, JOURNAL_DIR)):
        return False
    # a writer killed between its new variable's data file and the first manifest leaves
    # that file too: accepted only beside both the lock and the index directory a writer
    # makes first (a user's directory of .npy files is never taken for debris)
    ours = LOCK_NAME in names and INDEX_DIR in names

    def data_file(n: str) -> bool:
        with contextlib.suppress(OSError):
            return n.endswith(".npy") and stat.S_ISREG(os.lstat(os.path.join(path, n)).st_mode)
        return False

    return all(
        n in (LOCK_NAME, INDEX_DIR, JOURNAL_DIR)
        or n.startswith(MANIFEST_NAME + ".tmp-")
        or (ours and data_file(n))
        for n in names
    )


def only_session_debris(journal: str) -> bool:
    """True if the sessions under ``journal`` hold no record of a write (only their lock,
    gate and marks): what a writer that never wrote leaves when its store vanished."""
    try:
        if os.path.islink(journal):
            return False
        for session in os.listdir(journal):
            d = os.path.join(journal, session)
            if os.path.islink(d) or not os.path.isdir(d):
                return False
            if any(
                not (n in ("owner.lock", "gate", "reserved") or n.endswith(".inflight"))
                for n in os.listdir(d)
            ):
                return False
    except OSError:
        return False
    return True


def is_store(path: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True if ``path`` (a directory or any fsspec URL) holds a valid bigarray manifest.

    The manifest must parse as one (:func:`~bigarray.core.format.parse_manifest`): a
    user's directory whose ``manifest.json`` merely mentions ``"format": "bigarray"`` is
    not a store, and every tool that deletes or replaces a store asks this first. A local
    manifest parsed before (same bytes) is not validated again.

    Never raises: a URL that cannot be reached is simply not a store.
    """
    from .filesystem import is_local

    try:
        if not isinstance(path, (str, os.PathLike)) or not is_local(path):
            from .filesystem import FileAccess

            url = str(path)
            parse_manifest(FileAccess(url, storage_options).cat(MANIFEST_NAME), url)
            return True
        from .filesystem import local_path

        read_manifest(local_path(path), cached=True)
        return True
    except Exception:  # a predicate: whatever fails to read or parse is not a store
        return False


def open_store(
    url_or_path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> Store | RemoteStore:
    """Open a committed store at a local path or any fsspec URL.

    Parameters
    ----------
    url_or_path
        A directory, a ``file://`` URL (both memory-mapped), or any other fsspec URL
        (``s3://bucket/a.bigarray``, ``memory://a``, ``https://host/a.bigarray``, ...).
        A local file written by the 2020 library opens read-only in place.
    storage_options
        Options for the fsspec filesystem of a URL (credentials, endpoint). Refused for a
        local path, where they would be ignored.

    Returns
    -------
    Store or RemoteStore
        Both offer ``manifest``, ``index``, ``variable()``, ``read_rows()``,
        ``read_ranges()`` and ``close()``; ``is_remote`` tells them apart.

    Raises
    ------
    StoreNotFoundError
        Nothing at ``url_or_path`` (the URL names it).
    StoreAccessError
        The service refused access (credentials, bucket policy).
    StorageOptionsError
        ``storage_options`` given for a local path.

    Examples
    --------
    >>> s = open_store("s3://bucket/audio.bigarray", {"anon": True})   # doctest: +SKIP
    >>> s.read_rows("data", *s.index["utt1"])                          # doctest: +SKIP
    """
    from .filesystem import check_local_options, is_local, local_path

    if is_local(url_or_path):
        check_local_options(url_or_path, storage_options)
        return open_local(local_path(url_or_path))
    return RemoteStore(os.fspath(url_or_path), storage_options)


def open_cached(
    url_or_path: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    *,
    commit: Any = None,
) -> StoreReader:
    """A reader of the store at ``url_or_path`` shared through the per-process cache of open
    stores (:data:`bigarray.core.cache.OPEN_STORES`). Do not close it: it is shared.

    Parameters
    ----------
    url_or_path, storage_options
        As for :func:`open_store`.
    commit
        The ``fingerprint()`` of the commit the caller read (a Dataset or dataset opened
        earlier, maybe in another process): the entry is kept per commit, so a store
        committed again is never served from a reader of the old commit. On a miss the
        store is opened as it is now; compare its ``fingerprint()`` with ``commit`` to
        refuse one that changed. Without it, the reader first opened in this process
        (a local store whose manifest changed since is opened again).

    Returns
    -------
    StoreReader
    """
    from .cache import OPEN_STORES, store_key

    key = store_key(url_or_path, storage_options, commit, "reader")
    hit = OPEN_STORES.get(key)
    if hit is not None:
        if not (
            commit is None
            and isinstance(hit, Store)
            and hit._manifest_id != _manifest_identity(hit.path)
        ):
            return hit
        OPEN_STORES.discard(key)  # committed again since: open the commit there now
    return OPEN_STORES.put(key, open_store(url_or_path, storage_options))


#: Parsed manifests by (store path, manifest bytes): opening a store again reads the file
#: (a commit replaces it) but skips the JSON validation when its bytes did not change.
_PARSED: dict[tuple[str, bytes], Manifest] = {}
_PARSED_MAX = 64
_PARSED_MAX_BYTES = 256 << 10
_MANIFEST_LIMIT = 64 << 20  # bytes read of a manifest (a hostile one may be endless)


def read_manifest(
    path: str, *, cached: bool = False, identity: list[tuple[int, int, int]] | None = None
) -> Manifest:
    """Read and validate the committed manifest of the store at ``path``.

    ``cached=True`` returns the same :class:`Manifest` object as an earlier call that read
    the same bytes (validation is most of the cost of a warm open); callers must treat it as
    read-only, as every reader does. ``identity`` receives the manifest file's (device,
    inode, mtime) as read (see :meth:`Store.fingerprint`).
    """
    mpath = os.path.join(path, MANIFEST_NAME)
    try:
        # O_NONBLOCK: a FIFO planted as the manifest must not hang the reader
        fd = os.open(mpath, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if identity is not None:
                identity.append((st.st_dev, st.st_ino, st.st_mtime_ns))
            if not stat.S_ISREG(st.st_mode):
                raise NotAStoreError(
                    f"{mpath!r} is not a regular file; a bigarray manifest is a plain JSON file"
                )
            # Reads sized by fstat: a buffered read(64 MiB) allocated (and faulted in) a 64 MiB
            # buffer for a manifest of a few kB, a third of a warm open. A manifest is never
            # changed in place (commits replace it), so the size holds; a bigger one reads on.
            parts = [os.read(fd, min(st.st_size, _MANIFEST_LIMIT) + 1)]
            got = len(parts[0])
            while parts[-1] and got <= _MANIFEST_LIMIT:
                parts.append(os.read(fd, 1 << 20))
                got += len(parts[-1])
            raw = b"".join(parts) if len(parts) > 1 else parts[0]
            raw = raw[:_MANIFEST_LIMIT]
        finally:
            os.close(fd)
    except FileNotFoundError:
        if not os.path.exists(path):
            raise StoreNotFoundError(
                f"no bigarray store at {path!r}: the path does not exist. Create one with "
                "PointerArrayWriter(path, ...) or check the path."
            ) from None
        if os.path.isfile(path):
            from .legacy import is_legacy_file

            hint = (
                " It is a file of the original 2020 bigarray; convert it with "
                f"`bigarray convert {path} NEW.bigarray`."
                if is_legacy_file(path)
                else ""
            )
            raise NotAStoreError(
                f"{path!r} is a file, not a bigarray store directory.{hint}"
            ) from None
        raise NotAStoreError(
            f"{path!r} is a directory without {MANIFEST_NAME}: not a bigarray store (or one "
            "whose first commit never finished)"
        ) from None
    except IsADirectoryError:
        raise NotAStoreError(f"{mpath!r} is a directory, not a manifest file") from None
    except NotADirectoryError:
        raise NotAStoreError(f"{path!r} is a file, not a bigarray store directory") from None
    if not cached or len(raw) > _PARSED_MAX_BYTES:
        return parse_manifest(raw, path)
    key = (path, raw)
    manifest = _PARSED.get(key)
    if manifest is None:
        manifest = parse_manifest(raw, path)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = manifest
    return manifest


def _index_pinned(manifest: Manifest) -> bool:
    """Whether the manifest records the CRC-32C of every file of its index generation (a
    commit with checksums does): then its bytes fix the index files' bytes, and an index
    read for the same manifest bytes before may be reused without opening them again."""
    spec = manifest.segments
    if spec is None:
        return False
    for var in manifest.variables.values():
        entry = var.checksums.get("index") if isinstance(var.checksums, dict) else None
        if (
            isinstance(entry, dict)
            and entry.get("generation") == spec.generation
            and isinstance(entry.get("files"), dict)
            and set(entry["files"]) >= set(INDEX_ROLES)
        ):
            return True
    return False


def _map_memmap(
    fd: int, full: str, dtype: np.dtype, offset: int, shape: tuple[int, ...], nbytes: int
) -> np.memmap:
    """The ``numpy.memmap(full, dtype, "r", offset, shape)`` of an open descriptor, built as
    numpy builds it but without its Python file object, seek and second size check (half
    the cost of a warm open of a store)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(fd, offset + nbytes - start, access=mmap.ACCESS_READ, offset=start)
    arr = np.ndarray.__new__(np.memmap, shape, dtype, buffer=mm, offset=offset - start)
    arr._mmap = mm  # type: ignore[attr-defined]
    arr.filename = os.path.abspath(full)
    arr.offset = offset
    arr.mode = "r"
    return arr


#: Small index files read for a cached manifest (see :meth:`Store._open_index`), by the id of
#: that Manifest object (kept alive by the entry, so the id is not reused).
_INDEX_BYTES: dict[int, tuple[Manifest, dict[str, Any], Any]] = {}
_INDEX_CACHE_BYTES = 1 << 20  # larger indexes are read anew (at most 32 MiB held in all)
_INDEX_CACHE_ENTRIES = 32


def file_size(full: str, where: str) -> int:
    """Size of a file the manifest names; missing or not a regular file is corruption."""
    try:
        st = os.stat(full)
    except FileNotFoundError:
        raise StoreCorruptedError(
            f"{where}: file {full!r} listed in the manifest is missing; the store was damaged "
            "after its last commit. Restore the file or the whole store from a copy."
        ) from None
    _require_regular(st, full, where)
    return st.st_size


def _require_regular(st: os.stat_result, full: str, where: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise StoreCorruptedError(
            f"{where}: {full!r} listed in the manifest is not a regular file (a directory, "
            "device or pipe); the store was damaged or tampered with after its last commit"
        )


def _open_regular(full: str, where: str) -> tuple[int, os.stat_result]:
    """Open a file the manifest names, read-only, and check it is a regular file; the
    caller closes the descriptor. O_NONBLOCK: a FIFO planted there must not hang the
    reader; a missing file raises the clear error of :func:`file_size`."""
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        file_size(full, where)  # raises the clear error
        raise
    try:
        st = os.fstat(fd)
        _require_regular(st, full, where)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _dir_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the directory at ``path`` (None when there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _manifest_identity(path: str) -> tuple[int, int, int]:
    """(device, inode, mtime) of a store's manifest file: every commit renames a new one
    into place, so this changes with every commit."""
    try:
        st = os.stat(os.path.join(path, MANIFEST_NAME))
    except OSError:
        return (-1, -1, -1)
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


class _CommittedReader:
    """What the local and the remote reader share: the segment index opened on first use,
    the variable lookup, and ``with`` closing the reader."""

    path: str
    manifest: Manifest
    _index: SegmentIndex | None

    @property
    def index(self) -> SegmentIndex | None:
        """The segment index (``None`` for a store written without names)."""
        if self._index is None and self.manifest.segments is not None:
            self._index = self._open_index()
        return self._index

    def _open_index(self) -> SegmentIndex:
        raise NotImplementedError

    def variable(self, name: str | None = None) -> Variable:
        """The manifest entry of variable ``name`` (default: ``data`` or the only one)."""
        vars_ = self.manifest.variables
        if name is None:
            if DEFAULT_VARIABLE in vars_:
                name = DEFAULT_VARIABLE
            elif len(vars_) == 1:
                name = next(iter(vars_))
            else:
                raise _no_variable(self.path, name, vars_)
        if name not in vars_:
            raise _no_variable(self.path, name, vars_)
        return vars_[name]

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(_CommittedReader):
    """A committed store opened for reading (local directory).

    Parameters
    ----------
    path
        The store directory.
    """

    #: Memory-mapped: ``shard_views`` gives numpy views of the data files.
    is_remote = False
    is_legacy = False
    storage_options: dict[str, Any] | None = None

    def __init__(self, path: str | os.PathLike[str], *, cached: bool = False) -> None:
        from .filesystem import is_local_url, local_path

        self.path = local_path(path) if is_local_url(path) else os.fspath(path)
        # the identity of the manifest file read (fstat of the descriptor read): every
        # commit renames a new file into place
        # and the directory's: a replacement (remove_exist, mode="w", cp --overwrite) puts
        # another directory at the path, whose files a lazy open must not take for ours
        for _ in range(8):
            before = _dir_identity(self.path)
            ident: list[tuple[int, int, int]] = []
            self.manifest = read_manifest(self.path, cached=cached, identity=ident)
            self._dir_id = _dir_identity(self.path)
            if self._dir_id == before:
                break
        self._manifest_id = ident[0]
        self._cached = cached
        self._index: SegmentIndex | None = None
        self._maps: list[Any] = []

    def fingerprint(self) -> tuple[Any, ...]:
        """Identity of the commit this store object reads: path, manifest generation and
        the manifest file's identity when it was read (every commit renames a new manifest
        into place, so a store rewritten or replaced at the same path gives another value,
        even at the same generation)."""
        return (self.path, self.manifest.generation, *self._manifest_id)

    # ------------------------------------------------------------------ index
    def _open_index(self) -> SegmentIndex:
        spec = self.manifest.segments
        assert spec is not None
        # A one-run index recorded with checksums is reused while its files are unchanged
        # (warm reopen of the seed arrays); an index of several runs is read anew.
        pinned = self._cached and not spec.runs and _index_pinned(self.manifest)
        if pinned:
            hit = _INDEX_BYTES.get(id(self.manifest))
            if hit is not None and hit[0] is self.manifest and hit[2] == self._index_stats(spec):
                return SegmentIndex([IndexRun(hit[1], spec, self.path)], spec)
        dirs: dict[str, str] = {}
        runs = []
        for run_spec in spec.all_runs:
            try:
                buffers = self._run_buffers(run_spec, dirs)
            except StoreCorruptedError as exc:
                self._raise_if_changed(exc)
                raise
            runs.append(IndexRun(buffers, run_spec, self.path))
            if (
                pinned
                and all(type(b) is bytes for b in buffers.values())
                and sum(len(b) for b in buffers.values()) <= _INDEX_CACHE_BYTES
            ):
                stats = self._index_stats(spec)
                if stats is not None:
                    if len(_INDEX_BYTES) >= _INDEX_CACHE_ENTRIES:
                        _INDEX_BYTES.clear()
                    _INDEX_BYTES[id(self.manifest)] = (self.manifest, buffers, stats)
        self._check_not_replaced()  # the files opened were this store's
        return SegmentIndex(runs, spec)

    def _check_not_replaced(self) -> None:
        """Raise :class:`StoreChangedError` when the directory at the path is no longer the
        one whose manifest this handle read (the store was replaced or deleted)."""
        if _dir_identity(self.path) != self._dir_id:
            raise StoreChangedError(
                f"{self.path}: the store was replaced (remove_exist=True, mode='w' or "
                "`bigarray cp --overwrite`) or deleted after this handle read its manifest; "
                "open it again to read the current store."
            )

    def _raise_if_changed(self, exc: BaseException) -> None:
        """A commit deletes the index files of the commit two before it: a handle that read
        its manifest before two later commits finds them gone. That is a changed store, not
        a damaged one: say so (:class:`StoreChangedError`) when the manifest moved on."""
        self._check_not_replaced()
        try:
            now = _manifest_identity(self.path)
        except OSError:
            return
        if now != self._manifest_id:
            raise StoreChangedError(
                f"{self.path}: the store was committed to after this handle read its manifest "
                f"(generation {self.manifest.generation}), and the index files of that commit "
                "were deleted by the commits since (a store keeps the previous commit's only). "
                "Open the store again to read the current commit."
            ) from exc

    def _inside(self, rel: str, dirs: dict[str, str]) -> str:
        """:func:`resolve_inside` with the directory resolved once per open: a run is five
        files, an index a few runs, and ``realpath`` costs a system call per component."""
        head, _, tail = rel.rpartition("/")
        if head not in dirs:
            dirs[head] = resolve_inside(self.path, head) if head else self.path
        full = os.path.join(dirs[head], tail)
        try:
            if not stat.S_ISLNK(os.lstat(full).st_mode):
                return os.path.join(self.path, rel)
        except OSError:
            pass
        return resolve_inside(self.path, rel)

    def _run_buffers(self, spec: IndexFiles, dirs: dict[str, str]) -> dict[str, Any]:
        buffers: dict[str, Any] = {}
        names_len = None
        for role in ("name_offsets", *[r for r in INDEX_ROLES if r != "name_offsets"]):
            full = self._inside(spec.files[role], dirs)
            need = spec.offsets[role] + index_nbytes(spec, role, names_len)
            buffers[role] = self._load(full, need, role)
            if role == "name_offsets":
                last = np.frombuffer(buffers[role], "<i8", 1, spec.offsets[role] + spec.count * 8)
                names_len = int(last[0])
                if names_len < 0:
                    raise StoreCorruptedError(f"{self.path}: negative segment name length")
        return buffers

    def _index_stats(self, spec: IndexFiles) -> tuple[tuple[int, int, int], ...] | None:
        """(inode, size, mtime) of each index file, never following a symlink (None when
        one is missing): a file deleted, truncated or replaced since it was read is read
        again, so damage is reported as on a first open."""
        out = []
        for role in INDEX_ROLES:
            try:
                st = os.lstat(os.path.join(self.path, spec.files[role]))
            except OSError:
                return None
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _load(self, full: str, need: int, role: str) -> Any:
        """Read (or map) the first ``need`` bytes of an index file."""
        fd, st = _open_regular(full, self.path)
        try:
            size = st.st_size
            if size < need:
                raise StoreCorruptedError(
                    f"{self.path}: index file {full!r} ({role}) holds {size:,} bytes but the "
                    f"manifest needs {need:,}; it was truncated or replaced after the last commit. "
                    f"Run `bigarray verify {self.path}` for details."
                )
            if need <= _MAP_THRESHOLD:
                return os.pread(fd, need, 0)
            m = map_readonly(fd, need)
            self._maps.append(m)
            return m
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ data
    def shard_views(self, var: Variable) -> list[np.ndarray]:
        """One read-only ``numpy.memmap`` per shard, after checking each file's size."""
        try:
            return self._shard_views(var)
        except StoreCorruptedError:
            self._check_not_replaced()  # another store at the path now (smaller): not damage
            raise

    def _shard_views(self, var: Variable) -> list[np.ndarray]:
        out = []
        for shard in var.shards:
            shape = (shard.stop - shard.start, *var.shape[1:])
            nbytes = var.row_nbytes * (shard.stop - shard.start)
            full = resolve_inside(self.path, shard.path)
            # the size checked is the size of the file mapped (one descriptor for both)
            fd, st = _open_regular(full, self.path)
            try:
                if st.st_size < shard.offset + nbytes:
                    raise StoreCorruptedError(
                        f"data file {full!r} holds {st.st_size:,} bytes but the manifest needs "
                        f"{shard.offset + nbytes:,} for shape {shape} {var.dtype}; the file was "
                        "truncated or replaced after the last commit. Restore it, or run "
                        f"`bigarray verify {self.path}` for details."
                    )
                if nbytes == 0:
                    out.append(np.zeros(shape, var.dtype))
                else:
                    out.append(_map_memmap(fd, full, var.dtype, shard.offset, shape, nbytes))
            finally:
                os.close(fd)
        self._check_not_replaced()  # the files mapped were this store's
        return out

    def read_rows(self, name: str | None, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of a variable as an array (a view when one shard holds them)."""
        var = self.variable(name)
        views = self.shard_views(var)
        parts = []
        for shard, view in zip(var.shards, views, strict=True):
            a, b = max(start, shard.start), min(stop, shard.stop)
            if a < b:
                parts.append(view[a - shard.start : b - shard.start])
        if len(parts) == 1:
            return np.asarray(parts[0])
        if not parts:
            return np.zeros((0, *var.shape[1:]), var.dtype)
        return np.concatenate(parts)

    def read_ranges(self, name: str | None, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Rows ``[start, stop)`` of each range (views where one shard holds a range)."""
        return [self.read_rows(name, int(a), int(b)) for a, b in ranges]

    def close(self) -> None:
        """Release the index maps (numpy views handed out keep their own maps alive)."""
        if self._index is not None:
            self._index.release()
            self._index = None
        for m in self._maps:
            with contextlib.suppress(BufferError):
                m.close()
        self._maps.clear()


def _no_variable(path: str, name: object, vars_: dict[str, Variable]) -> VariableNotFoundError:
    return VariableNotFoundError(
        f"{path!r} has no variable {name!r}; it holds {sorted(vars_)}. Pass variable=... "
        "with one of those."
    )


# --------------------------------------------------------------------------- remote stores


def _only_uncommitted_objects(access: Any) -> bool:
    """Whether a URL without a manifest holds nothing but a sharded write's objects."""
    try:
        access.invalidate()
        names = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in access.fs.ls(access.root)}
    except FileNotFoundError:
        return True  # deleted since (a failed write cleaning up): nothing there at all
    except Exception:
        return False
    return names <= {"shards", "index"}


#: The largest manifest a reader accepts (a manifest is small; this bounds hostile input).
_MAX_MANIFEST = 64 << 20


class RemoteStore(_CommittedReader):
    """A committed store at an fsspec URL, read by byte ranges (same interface as :class:`Store`).

    The manifest is read once at open; the segment index is fetched whole on first use
    (its files in one concurrent batch) and kept in memory; data is never cached: every
    :meth:`read_rows` fetches the byte ranges it needs, merging neighbours. Before the
    first read of a variable the size of each of its shard objects is checked against the
    manifest (one request, or one listing for many shards), so a truncated object is a
    :class:`~bigarray.errors.StoreCorruptedError` naming it.

    Parameters
    ----------
    url
        The store URL (``s3://bucket/a.bigarray``, ``memory://a``, ``https://...``).
    storage_options
        Options for the fsspec filesystem.

    Notes
    -----
    Pickles as ``(url, storage_options)``: a dask task carrying one reopens the store by URL.
    """

    #: Read by byte ranges: there are no memory maps to hand out.
    is_remote = True
    is_legacy = False

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        from .filesystem import FileAccess

        self._access = FileAccess(url, storage_options)
        self.url = self.path = self._access.url
        self.storage_options = dict(storage_options or {})
        # another process (a dask worker, a copy) may have written since fsspec listed here
        self._access.invalidate()
        self.manifest = self._read_manifest()
        self._index: SegmentIndex | None = None
        self._checked: set[str] = set()

    def __reduce__(self) -> Any:
        return (RemoteStore, (self.url, self.storage_options))

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    def fingerprint(self) -> tuple[Any, ...]:
        """Identity of the commit this store object reads: URL and manifest generation
        (per-process caches use it to tell a rewritten store from the one they opened)."""
        return (self.url, self.manifest.generation, self._manifest_crc)

    @property
    def access(self) -> Any:
        """The :class:`~bigarray.core.filesystem.FileAccess` of this store's files."""
        return self._access

    def _read_manifest(self) -> Manifest:
        url = self.url

        def missing() -> Exception:
            try:
                exists = self._access.exists("")
            except Exception:
                exists = False
            if exists and _only_uncommitted_objects(self._access):
                return StoreNotFoundError(
                    f"no committed bigarray store at {url!r}: it holds only objects of a write "
                    "that never committed (shards/, index/; a writer killed before its commit). "
                    "Write the store again; those objects can be deleted."
                )
            if exists:
                return NotAStoreError(
                    f"{url!r} exists but holds no {MANIFEST_NAME}: not a bigarray store (or one "
                    "whose first commit never finished)"
                )
            return StoreNotFoundError(
                f"no bigarray store at {url!r}: {url}/{MANIFEST_NAME} does not exist. Check the "
                "URL (bucket, prefix, host), or write a store there first."
            )

        try:
            raw = self._access.cat(MANIFEST_NAME, missing=missing)  # type: ignore[arg-type]
        except NotAStoreError:
            # a writer may have committed between the GET that missed and the listing that
            # found its objects: read once more before calling the URL foreign
            self._access.invalidate()
            raw = self._access.cat(MANIFEST_NAME, missing=missing)  # type: ignore[arg-type]
        if len(raw) > _MAX_MANIFEST:
            raise StoreCorruptedError(
                f"{url!r}: {MANIFEST_NAME} holds {len(raw):,} bytes, more than the "
                f"{_MAX_MANIFEST:,} a manifest may; it is not a bigarray manifest"
            )
        # a rewritten store may restart at generation 1: its bytes tell it apart
        self._manifest_crc = zlib.crc32(raw)
        return parse_manifest(raw, url)

    # ------------------------------------------------------------------ index
    def _open_index(self) -> SegmentIndex:
        spec = self.manifest.segments
        assert spec is not None
        runs = spec.all_runs
        rels = list(dict.fromkeys(r.files[role] for r in runs for role in INDEX_ROLES))
        got = dict(
            zip(rels, self._access.cat_many(rels, missing=self._access.missing_listed), strict=True)
        )
        out = []
        for run in runs:
            buffers = {role: got[run.files[role]] for role in INDEX_ROLES}
            off = run.offsets["name_offsets"]
            need = off + index_nbytes(run, "name_offsets")
            noff = buffers["name_offsets"]
            if len(noff) < need:
                raise self._short_index("name_offsets", len(noff), need, run)
            names_len = int(np.frombuffer(noff, "<i8", 1, off + run.count * 8)[0])
            if names_len < 0:
                raise StoreCorruptedError(f"{self.url}: negative segment name length")
            for role in INDEX_ROLES:
                need = run.offsets[role] + index_nbytes(run, role, names_len)
                if len(buffers[role]) < need:
                    raise self._short_index(role, len(buffers[role]), need, run)
            out.append(IndexRun(buffers, run, self.url))
        return SegmentIndex(out, spec)

    def _short_index(
        self, role: str, size: int, need: int, spec: IndexFiles
    ) -> StoreCorruptedError:
        return StoreCorruptedError(
            f"{self.url}: index object {self._access.where(spec.files[role])!r} ({role}) holds "
            f"{size:,} bytes but the manifest needs {need:,}; it was truncated or replaced after "
            "the last commit. Restore it, or copy the store again."
        )

    # ------------------------------------------------------------------ data
    def shard_views(self, var: Variable) -> list[np.ndarray]:
        """Not available: a remote store has no memory maps (use :meth:`read_rows`)."""
        from ..errors import BigArrayError

        raise BigArrayError(
            f"{self.url!r} is a remote store, read by byte ranges: it has no memory-mapped shard "
            "views. Use read_rows(variable, start, stop), or bigarray.dask_backend.from_bigarray."
        )

    def check_shards(self, var: Variable, shards: Sequence[Shard] | None = None) -> None:
        """Check the size of each shard object against the manifest (once per shard).

        On a listable filesystem (object stores) the first check sizes every shard of the
        variable with one listing, so a many-shard store pays one request, not one per shard;
        elsewhere (HTTP) each shard is sized when first read.
        """
        todo = [
            s for s in (var.shards if shards is None else shards) if s.path not in self._checked
        ]
        if not todo:
            return
        if len(var.shards) > 1 and (len(todo) > 1 or self._access.listable):
            todo = [s for s in var.shards if s.path not in self._checked]
        sizes = self._access.sizes([s.path for s in todo])
        for shard in todo:
            nbytes = var.row_nbytes * (shard.stop - shard.start)
            need = shard.offset + nbytes
            size = sizes.get(shard.path)
            where = self._access.where(shard.path)
            if size is None:
                raise self._access.missing_listed(shard.path)
            if 0 <= size < need:
                shape = (shard.stop - shard.start, *var.shape[1:])
                raise StoreCorruptedError(
                    f"data object {where!r} holds {size:,} bytes but the manifest needs {need:,} "
                    f"for shape {shape} {var.dtype}; the object was truncated or replaced after "
                    f"the last commit. Restore it, or copy the store again "
                    f"(`bigarray cp`) from a good copy."
                )
        self._checked.update(s.path for s in todo)

    def _pieces(self, var: Variable, start: int, stop: int) -> list[tuple[Shard, int, int]]:
        """(shard, first byte, last byte + 1) of each shard part of rows [start, stop)."""
        out = []
        rb = var.row_nbytes
        for shard in var.shards:
            a, b = max(start, shard.start), min(stop, shard.stop)
            if a < b:
                lo = shard.offset + (a - shard.start) * rb
                out.append((shard, lo, lo + (b - a) * rb))
        return out

    def read_rows(self, name: str | None, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of a variable as a new (read-only or owned) array.

        Fetches only the bytes of those rows; ranges longer than the part size go out as
        several concurrent requests.
        """
        from .filesystem import DEFAULT_PART

        var = self.variable(name)
        start, stop = max(int(start), 0), min(int(stop), var.rows)
        if stop <= start or var.row_nbytes == 0:
            return np.zeros((max(stop - start, 0), *var.shape[1:]), var.dtype)
        pieces = self._pieces(var, start, stop)
        self.check_shards(var, [p[0] for p in pieces])
        shape = (stop - start, *var.shape[1:])
        if len(pieces) == 1 and pieces[0][2] - pieces[0][1] <= DEFAULT_PART:
            shard, lo, hi = pieces[0]
            (buf,) = self._access.fetch([(shard.path, lo, hi)])
            return np.frombuffer(buf, var.dtype).reshape(shape)
        out = np.empty(shape, var.dtype)
        flat = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        jobs, pos = [], 0
        for shard, lo, hi in pieces:
            jobs.append((shard.path, lo, flat[pos : pos + hi - lo]))
            pos += hi - lo
        self._access.read_into(jobs)
        return out

    def read_ranges(self, name: str | None, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Rows ``[start, stop)`` of each range, fetched together.

        Neighbouring ranges (closer than :data:`bigarray.core.filesystem.DEFAULT_GAP` bytes) go
        out as one request and every request runs concurrently: reading 5,000 segments by
        name costs a handful of round trips, not 5,000.
        """
        var = self.variable(name)
        rows = var.rows
        plan: list[list[tuple[Shard, int, int]]] = []
        shapes = []
        for a, b in ranges:
            a, b = max(int(a), 0), min(int(b), rows)
            b = max(a, b)
            shapes.append((b - a, *var.shape[1:]))
            plan.append(self._pieces(var, a, b) if var.row_nbytes else [])
        touched = {p[0].path: p[0] for parts in plan for p in parts}
        self.check_shards(var, list(touched.values()))
        flat = [(p[0].path, p[1], p[2]) for parts in plan for p in parts]
        got = iter(self._access.fetch(flat))
        out = []
        for parts, shape in zip(plan, shapes, strict=True):
            bufs = [next(got) for _ in parts]
            if not bufs:
                out.append(np.zeros(shape, var.dtype))
            elif len(bufs) == 1:
                out.append(np.frombuffer(bufs[0], var.dtype).reshape(shape))
            else:
                out.append(np.frombuffer(b"".join(bufs), var.dtype).reshape(shape))
        return out

    def close(self) -> None:
        """Drop the cached index (the store can still be read; it is fetched again)."""
        self._index = None


#: Opens of a store whose index files a racing commit deleted before they were mapped (each
#: retry reads the newer manifest; several writers committing at once can move it again)
_OPEN_ATTEMPTS = 32


def open_local(
    path: str | os.PathLike[str], *, with_index: bool = True, cached: bool = False
) -> Store:
    """Open a local store and (``with_index``) its segment index at once.

    A file written by the 2020 library opens in place as a read-only
    :class:`~bigarray.core.legacy.LegacyStore` (same interface).

    The index files of a generation are deleted two commits later, so a reader keeps the
    index of the commit it read by mapping it right away. A commit landing between the
    manifest read and the index open can delete the files just named: then the manifest
    has moved on, and opening again gives the newer commit.
    """
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            store = Store(path, cached=cached)
        except NotAStoreError:
            legacy = _open_legacy(path, with_index)
            if legacy is None:
                raise
            return legacy
        if not with_index:
            return store
        try:
            store.index  # noqa: B018 - maps (or reads) the index files now
            return store
        except StoreChangedError:  # the files were gone because the manifest moved on
            store.close()
            if attempt == _OPEN_ATTEMPTS - 1:
                raise
        except StoreCorruptedError:  # the manifest it read still stands: damage
            store.close()
            raise
    raise AssertionError("unreachable")


def _open_legacy(path: str | os.PathLike[str], with_index: bool) -> Any:
    """A file of the 2020 library opened in place (read-only), or None for any other file.

    Tried only once ``path`` proved not to be a store directory, so opening a store pays
    nothing for it.
    """
    from .legacy import LegacyStore, is_legacy_file

    if not is_legacy_file(path):
        return None
    return LegacyStore(path, with_index=with_index)


if TYPE_CHECKING:  # mypy checks that every reader satisfies the protocol

    def _every_reader_is_a_store_reader(
        a: Store, b: RemoteStore, c: LegacyStore
    ) -> list[StoreReader]:
        return [a, b, c]
