"""The file-access seam: a store's files on the local disk or behind any fsspec URL.

Local stores (plain paths and ``file://`` URLs) are read through memory maps by
:class:`bigarray.core.store.Store` and never come here for reading. Everything else (``s3://``,
``memory://``, ``http(s)://``, ``gcs://``, chained URLs such as ``simplecache::s3://...``) is
reached through :class:`FileAccess`, which names files by their path relative to the store
root and talks to fsspec only in the calls object stores do well:

- whole small files (``cat``) for the manifest and the index;
- byte ranges for data (``cat_ranges``): neighbouring ranges closer than a gap are merged
  into one request, large ranges are split into parts fetched concurrently;
- one ``PUT`` per file for writes (``pipe_file``), the manifest last.

Every failure of the underlying library is translated into a :class:`BigArrayError` that
names the URL: a missing object is :class:`StoreNotFoundError` (or
:class:`StoreCorruptedError` for a file the manifest lists), a refusal is
:class:`StoreAccessError`, anything else :class:`RemoteStoreError`.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from ..errors import (
    BigArrayError,
    RemoteStoreError,
    StorageOptionsError,
    StoreAccessError,
    StoreChangedError,
    StoreCorruptedError,
    StoreNotFoundError,
)

__all__ = [
    "DEFAULT_GAP",
    "DEFAULT_PART",
    "FileAccess",
    "is_local",
    "is_local_url",
    "local_path",
    "translate_error",
]

#: Ranges of one file closer than this many bytes are fetched as one request: on object
#: stores a request costs ~10-50 ms of latency, which buys megabytes of transfer.
DEFAULT_GAP = 1 << 20
#: Ranges longer than this are fetched as several concurrent requests (and merged ranges
#: never grow past it), so one large read uses the bandwidth of many connections.
DEFAULT_PART = 16 << 20
#: Above this many files to size, list their directories (one request per 1,000 objects
#: on S3) instead of asking for each file.
_LIST_THRESHOLD = 1
_LOCAL_PROTOCOLS = frozenset({"file", "local"})
# Libraries whose exceptions are I/O failures even when they do not derive from OSError.
_IO_MODULES = frozenset(
    {
        "aiohttp",
        "botocore",
        "aiobotocore",
        "requests",
        "urllib3",
        "fsspec",
        "s3fs",
        "gcsfs",
        "adlfs",
        "google",
        "azure",
    }
)


def is_local(url: str | os.PathLike[str]) -> bool:
    """True for a plain path or a ``file://``/``local://`` URL (memory-mappable).

    Examples
    --------
    >>> is_local("/data/a.bigarray"), is_local("file:///data/a"), is_local("s3://b/a")
    (True, True, False)
    """
    if not isinstance(url, str):
        return True  # os.PathLike
    if "::" in url:
        return False  # a chain (simplecache::s3://...) always goes through fsspec
    if "://" not in url:
        return True
    return url.split("://", 1)[0].lower() in _LOCAL_PROTOCOLS


def is_local_url(url: str | os.PathLike[str]) -> bool:
    """True for a local path spelled as a URL (``file:///x``, ``FILE:///x``,
    ``local:///x``, ``file:/x``), whose path :func:`local_path` gives."""
    if not isinstance(url, str) or not is_local(url):
        return False
    return "://" in url or url[:6].lower() == "file:/"


def local_path(url: str | os.PathLike[str]) -> str:
    """The filesystem path of a local path or ``file://`` URL (``file:/x`` too), made absolute."""
    text = os.fspath(url)
    for prefix in ("file://", "local://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
            break
    else:
        if text[:6].lower() == "file:/":  # RFC 8089's minimal form, file:/x
            text = text[5:]
    return os.path.abspath(text)


def check_local_options(url: str | os.PathLike[str], storage_options: Any) -> None:
    """Refuse ``storage_options`` for a local store: they would be silently ignored."""
    if storage_options:
        raise StorageOptionsError(
            f"storage_options={storage_options!r} were given for the local path {os.fspath(url)!r}, "
            "which is memory-mapped and takes no options. Drop storage_options, or give a URL "
            "of the filesystem they are meant for (e.g. 's3://bucket/store')."
        )


#: Defaults for ``s3://`` stores, used where ``storage_options["config_kwargs"]`` does not set
#: them (botocore ``Config``): a server that accepts a connection and never answers costs a
#: bounded time (about a minute over every retry) and ends in a :class:`RemoteStoreError`
#: naming the URL, instead of blocking for ever. ``read_timeout`` is the longest silence
#: within one response, not a limit on long transfers. Transient errors (throttling,
#: 5xx, dropped connections) are retried with exponential backoff by botocore's
#: ``standard`` mode and then by s3fs (:data:`S3_RETRIES` rounds).
S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 10,
    "retries": {"mode": "standard", "max_attempts": 3},
}
#: Seconds a write through an async filesystem (S3, GCS, HTTP) may take at most, plus one
#: second per :data:`WRITE_MIN_RATE` bytes written.
WRITE_TIMEOUT = 60.0
WRITE_MIN_RATE = 1 << 20
#: s3fs's own retry rounds (its default, 5, nests to 50 attempts per call); bigarray leaves
#: retrying to botocore (``config_kwargs["retries"]``), which backs off between attempts.
S3_RETRIES = 1


def _with_remote_defaults(url: str, options: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """``options`` with bigarray's timeout and retry defaults for an ``s3://`` URL (the
    user's own settings win), and the s3fs retry count to set (None: leave it)."""
    if not url.lower().startswith(("s3://", "s3a://")):
        return options, None
    given = dict(options.get("config_kwargs") or {})
    # a deep copy: botocore rewrites the "retries" dict it is given (max_attempts ->
    # total_max_attempts), which must never reach the module's defaults
    config = copy.deepcopy({**S3_CONFIG_DEFAULTS, **given})
    return {**options, "config_kwargs": config}, S3_RETRIES


def _is_io_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    return any(k.__module__.split(".", 1)[0] in _IO_MODULES for k in type(exc).__mro__)


def _status(exc: BaseException) -> int | None:
    """HTTP status carried by an exception (aiohttp, requests, botocore), if any."""
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


def translate_error(
    exc: BaseException,
    where: str,
    *,
    missing: Callable[[], BigArrayError] | None = None,
    action: str = "read",
) -> BaseException:
    """The :class:`BigArrayError` to raise for ``exc`` met while touching ``where``.

    ``missing`` builds the error for a missing file (default: :class:`StoreNotFoundError`).
    Exceptions that are not I/O failures (programming errors) are returned unchanged.
    """
    if isinstance(exc, BigArrayError) or not _is_io_error(exc):
        return exc
    status = _status(exc)
    if isinstance(exc, FileNotFoundError) or status == 404:
        if missing is not None:
            return missing()
        return StoreNotFoundError(
            f"{where!r} does not exist (the object, its bucket or its directory is missing). "
            "Check the URL, or create the store first."
        )
    if isinstance(exc, PermissionError) or status in (401, 403):
        return StoreAccessError(
            f"access to {where!r} was refused while trying to {action} it ({exc}). Check the "
            "credentials in storage_options (key/secret, token, profile) and the bucket policy; "
            "the URL itself may be right."
        )
    if _is_timeout(exc):
        return RemoteStoreError(
            f"could not {action} {where!r}: the service did not answer in time, after "
            f"retries ({type(exc).__name__}: {exc}). Check that it is reachable; to wait "
            "longer, raise storage_options={'config_kwargs': {'read_timeout': seconds, "
            "'connect_timeout': seconds}}."
        )
    return RemoteStoreError(
        f"could not {action} {where!r}: {type(exc).__name__}: {exc}. Check that the service "
        "is reachable and the storage_options are right, then retry."
    )


def _is_timeout(exc: BaseException) -> bool:
    import asyncio
    import socket

    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)):
        return True
    return any("Timeout" in k.__name__ for k in type(exc).__mro__)


class FileAccess:
    """The files of one store, by path relative to its root, on any fsspec filesystem.

    Parameters
    ----------
    url
        The store root: a local path, ``file://``, or any fsspec URL.
    storage_options
        Passed to the fsspec filesystem (credentials, endpoint, ...).

    Notes
    -----
    A ``FileAccess`` pickles as ``(url, storage_options)``; fsspec rebuilds (and caches) the
    filesystem in the receiving process, so dask tasks can carry one.
    """

    def __init__(self, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        import fsspec.core

        text = os.fspath(url)
        self.url = text.rstrip("/") or text
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        options, s3_retries = _with_remote_defaults(self.url, self.storage_options)
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError) as exc:
            raise RemoteStoreError(
                f"cannot open {self.url!r}: {exc}. Use a protocol fsspec knows (s3://, gcs://, "
                "memory://, http://, ...) and install its package (e.g. `pip install s3fs`)."
            ) from None
        except Exception as exc:  # a filesystem constructor that failed on the options
            raise translate_error(exc, self.url, action="connect to") from exc
        if s3_retries is not None and getattr(fs, "retries", None) != s3_retries:
            # s3fs retries each request ``retries`` times in two nested loops, on top of
            # botocore's own attempts: 5 (its default) makes a stalled server cost 50 read
            # timeouts. The instance is bigarray's (fsspec caches it under these options).
            fs.retries = s3_retries
        self.fs = fs
        self.root = str(root).rstrip("/")
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.local = bool(_LOCAL_PROTOCOLS.intersection(protocols))
        self.listable = not {"http", "https"}.intersection(protocols)

    def __reduce__(self) -> Any:
        return (FileAccess, (self.url, self.storage_options))

    def __repr__(self) -> str:
        return f"FileAccess({self.url!r})"

    # ------------------------------------------------------------------ names
    def full(self, rel: str) -> str:
        """The filesystem's path of ``rel`` (as fsspec calls it)."""
        return f"{self.root}/{rel}" if rel else self.root

    def where(self, rel: str = "") -> str:
        """``rel`` as a URL, for messages."""
        return f"{self.url}/{rel}" if rel else self.url

    def _norm(self, path: str) -> str:
        return str(self.fs._strip_protocol(path)).rstrip("/")

    def _call(
        self,
        fn: Callable[[], Any],
        rel: str,
        *,
        missing: Callable[[], BigArrayError] | None = None,
        action: str = "read",
    ) -> Any:
        try:
            return fn()
        except Exception as exc:
            err = translate_error(exc, self.where(rel), missing=missing, action=action)
            if err is exc:
                raise
            raise err from exc

    # ------------------------------------------------------------------ reads
    def cat(self, rel: str, *, missing: Callable[[], BigArrayError] | None = None) -> bytes:
        """The whole file ``rel``."""
        # start=0 makes it one open-ended ranged GET; with no range s3fs first asks the size
        return bytes(
            self._call(lambda: self.fs.cat_file(self.full(rel), start=0), rel, missing=missing)
        )

    def cat_many(
        self, rels: Sequence[str], *, missing: Callable[[str], BigArrayError] | None = None
    ) -> list[bytes]:
        """Several whole files, fetched concurrently where the filesystem can."""
        if not rels:
            return []
        paths = [self.full(r) for r in rels]

        def run() -> list[bytes]:
            # [0, None): open-ended ranged GETs (no size request first), all at once
            out = self.fs.cat_ranges(
                paths, [0] * len(paths), [None] * len(paths), on_error="return"
            )
            for rel, item in zip(rels, out, strict=True):
                if isinstance(item, BaseException):
                    miss = (lambda r=rel: missing(r)) if missing is not None else None
                    err = translate_error(item, self.where(rel), missing=miss)
                    raise err from item
            return [bytes(b) for b in out]

        return self._call(run, rels[0])

    def fetch(
        self,
        requests: Sequence[tuple[str, int, int]],
        *,
        gap: int = DEFAULT_GAP,
        part: int = DEFAULT_PART,
    ) -> list[memoryview]:
        """Bytes ``[start, stop)`` of each ``(rel, start, stop)``, in the order asked.

        Requests of one file closer than ``gap`` bytes are merged (up to ``part`` bytes per
        merged range) and every merged range is fetched concurrently in one ``cat_ranges``
        call; the results are zero-copy views into the merged buffers. A short answer (the
        object is smaller than asked) is a :class:`StoreCorruptedError`.
        """
        n = len(requests)
        if n == 0:
            return []
        order = sorted(range(n), key=lambda i: (requests[i][0], requests[i][1]))
        merged: list[list[Any]] = []  # [rel, start, stop]
        where_of: list[tuple[int, int]] = [(0, 0)] * n
        for i in order:
            rel, a, b = requests[i]
            if b < a or a < 0:
                raise ValueError(f"bad byte range [{a}, {b}) of {rel!r}")
            if merged:
                m = merged[-1]
                if m[0] == rel and a <= m[2] + gap and max(b, m[2]) - m[1] <= part:
                    m[2] = max(m[2], b)
                    where_of[i] = (len(merged) - 1, a - m[1])
                    continue
            merged.append([rel, a, b])
            where_of[i] = (len(merged) - 1, 0)
        bufs = self._cat_ranges([(m[0], m[1], m[2]) for m in merged])
        out = []
        for i, (j, off) in enumerate(where_of):
            rel, a, b = requests[i]
            out.append(bufs[j][off : off + (b - a)])
        return out

    def read_into(
        self, pieces: Sequence[tuple[str, int, memoryview]], *, part: int = DEFAULT_PART
    ) -> None:
        """Fill each writable byte buffer ``out`` with the bytes of ``rel`` from ``start``.

        Long pieces are split into ``part``-byte requests fetched concurrently, so a large
        read keeps several connections busy instead of waiting on one.
        """
        reqs: list[tuple[str, int, int]] = []
        targets: list[memoryview] = []
        for rel, start, out in pieces:
            size = out.nbytes
            for off in range(0, size, part):
                end = min(size, off + part)
                reqs.append((rel, start + off, start + end))
                targets.append(out[off:end])
        for buf, target in zip(self._cat_ranges(reqs), targets, strict=True):
            target[:] = buf

    def _cat_ranges(self, reqs: Sequence[tuple[str, int, int]]) -> list[memoryview]:
        if not reqs:
            return []
        paths = [self.full(r[0]) for r in reqs]
        starts = [r[1] for r in reqs]
        ends = [r[2] for r in reqs]

        def run() -> list[Any]:
            if len(reqs) == 1:
                return [self.fs.cat_file(paths[0], start=starts[0], end=ends[0])]
            return list(self.fs.cat_ranges(paths, starts, ends, on_error="return"))

        got = self._call(run, reqs[0][0], missing=lambda: self.missing_listed(reqs[0][0]))
        out = []
        for (rel, a, b), item in zip(reqs, got, strict=True):
            if isinstance(item, BaseException):
                err = translate_error(item, self.where(rel), missing=self._missing_for(rel))
                raise err from item
            view = memoryview(item)
            if view.nbytes != b - a:
                raise StoreCorruptedError(
                    f"{self.where(rel)!r}: asked for bytes [{a:,}, {b:,}) and got {view.nbytes:,}; "
                    "the object is shorter than the manifest says (truncated or replaced after "
                    "the last commit). Restore it, or copy the store again."
                )
            out.append(view)
        return out

    def _missing_for(self, rel: str) -> Callable[[], BigArrayError]:
        return partial(self.missing_listed, rel)

    def missing_listed(self, rel: str) -> StoreCorruptedError | StoreChangedError:
        """The error for a file the manifest lists that is missing: the store was replaced
        since it was read (:class:`StoreChangedError`), or it is damaged."""
        replaced = self._replaced(rel)
        if replaced is not None:
            return replaced
        return StoreCorruptedError(
            f"{self.where(rel)!r} is listed in the manifest of {self.url!r} but does not exist; "
            "the store was damaged after its last commit (or a copy of it is incomplete). "
            "Restore the object or the whole store from a copy."
        )

    # the old private name, for branches written before it became public
    _missing_listed = missing_listed

    def _replaced(self, rel: str) -> StoreChangedError | None:
        """The error for an object a reader's manifest names that is gone because the store
        was committed again since (its manifest names other objects now), else None."""
        from .format import MANIFEST_NAME, manifest_objects, parse_manifest

        try:
            self.invalidate()
            raw = bytes(self.fs.cat_file(self.full(MANIFEST_NAME)))
            manifest = parse_manifest(raw, self.url)
        except Exception:
            return None

        if rel in manifest_objects(manifest):
            return None
        return StoreChangedError(
            f"{self.where(rel)!r} is gone because {self.url!r} was replaced (committed again, "
            f"now generation {manifest.generation}) after this array or store was opened; the "
            "store is not damaged. Open it again to read the current version."
        )

    # ------------------------------------------------------------------ metadata
    def exists(self, rel: str = "") -> bool:
        """Whether ``rel`` (or the root, for ``""``) exists."""
        return bool(self._call(lambda: self.fs.exists(self.full(rel)), rel))

    def sizes(self, rels: Iterable[str]) -> dict[str, int | None]:
        """Size in bytes of each file: ``None`` where it is missing, ``-1`` where the server
        does not say (an HTTP server that sends no ``Content-Length``).

        Many files of a listable filesystem are sized by listing their directories (one
        request per 1,000 objects on S3) rather than one request each.
        """
        rels = list(dict.fromkeys(rels))
        out: dict[str, int | None] = {}
        if len(rels) > _LIST_THRESHOLD and self.listable:
            by_dir: dict[str, list[str]] = {}
            for rel in rels:
                by_dir.setdefault(rel.rpartition("/")[0], []).append(rel)
            for d, members in by_dir.items():
                listing = self._call(
                    partial(self.fs.ls, self.full(d), detail=True),
                    d,
                    missing=self._missing_for(d or members[0]),
                )
                found = {self._norm(e["name"]): e.get("size") for e in listing}
                for rel in members:
                    key = self._norm(self.full(rel))
                    if key not in found:
                        out[rel] = None
                    else:
                        out[rel] = -1 if found[key] is None else int(found[key])
            return out
        for rel in rels:
            try:
                info = self._call(partial(self.fs.info, self.full(rel)), rel)
            except StoreNotFoundError:
                out[rel] = None
                continue
            size = info.get("size")
            out[rel] = int(size) if size is not None else -1
        return out

    # ------------------------------------------------------------------ writes
    def pipe(self, rel: str, data: bytes | bytearray | memoryview | Sequence[Any]) -> int:
        """Write the whole file ``rel`` in one call (one PUT on an object store).

        ``data`` may be a list of byte-like parts, joined here once. Returns the bytes written.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = b"".join(data)  # type: ignore[arg-type]
        full = self.full(rel)
        kwargs = self.write_deadline(memoryview(data).nbytes)

        def run() -> None:
            if self.local:
                self.fs.makedirs(full.rpartition("/")[0], exist_ok=True)
            self.fs.pipe_file(full, data, **kwargs)

        self._call(run, rel, action="write")
        return memoryview(data).nbytes

    def write_deadline(self, nbytes: int) -> dict[str, Any]:
        """``{"timeout": seconds}`` for one write of ``nbytes`` through an async filesystem
        (fsspec cancels the call then): a server that accepts a request and never answers
        does not trip the read timeout of a PUT, so writes get an overall deadline of
        :data:`WRITE_TIMEOUT` seconds plus one second per :data:`WRITE_MIN_RATE` bytes."""
        if not getattr(self.fs, "async_impl", False):
            return {}
        return {"timeout": WRITE_TIMEOUT + nbytes / WRITE_MIN_RATE}

    def commit_file(self, rel: str, data: bytes) -> None:
        """Write ``rel`` so that readers see the old file or the new one, never a part.

        A PUT is atomic on object stores; on a local disk write beside it, fsync, rename.
        """
        if not self.local:
            self.pipe(rel, data)
            return
        from .fileutil import atomic_write, fsync_dir

        full = self.full(rel)
        self._call(lambda: os.makedirs(os.path.dirname(full), exist_ok=True), rel, action="write")
        self._call(lambda: atomic_write(full, data, fsync=True), rel, action="write")
        self._call(lambda: fsync_dir(os.path.dirname(full)), rel, action="write")

    def remove(self, rels: Iterable[str]) -> None:
        """Delete files (missing ones are ignored)."""
        paths = [self.full(r) for r in rels]
        if not paths:
            return
        try:
            self.fs.rm(paths, **self.write_deadline(0))
        except FileNotFoundError:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(p)
        except Exception as exc:
            err = translate_error(exc, self.url, action="delete files of")
            if err is exc:
                raise
            raise err from exc

    def remove_tree(self) -> None:
        """Delete the store root and everything under it (missing is fine)."""
        try:
            if self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:
            err = translate_error(exc, self.url, action="delete")
            if err is exc:
                raise
            raise err from exc
        self.fs.invalidate_cache(self.root)

    def invalidate(self) -> None:
        """Forget listings fsspec cached for this store (another process may have written)."""
        with contextlib.suppress(Exception):  # a filesystem without caches
            self.fs.invalidate_cache(self.root)
