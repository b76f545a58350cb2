"""Copy a committed store between any two places (``bigarray cp SRC DST``).

Only what the manifest names is copied: every shard of every variable, the index files
of the committed generation, and last the manifest itself (the copy's commit), so a copy
interrupted at any point leaves the destination as it was (no store, or the store it
replaces, whole), never half of one. Each
file is streamed in blocks (never whole in memory), several files at a time, and its
size is checked at the destination before the manifest is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .core.commit import (
    put_manifest,
    remove_replaced,
    snapshot,
)
from .core.crash import remote_crash_point
from .core.destination import Destination, prepare_destination
from .core.filesystem import FileAccess, check_local_options, is_local, local_path
from .core.format import INDEX_ROLES, MANIFEST_NAME, IndexFiles, Manifest, parse_manifest
from .core.integrity import renamed_checksums
from .errors import BigArrayError, StoreChangedError, StoreCorruptedError, StoreExistsError

__all__ = ["CopyReport", "copy_store"]

#: Bytes per block streamed from source to destination (one ranged GET, one part upload).
BLOCK = 32 << 20
#: Files copied at once (each file streams its blocks in order).
WORKERS = 4


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_store` did: files and bytes copied, and how long it took."""

    src: str
    dst: str
    files: int
    nbytes: int
    seconds: float

    def __str__(self) -> str:
        rate = self.nbytes / self.seconds / 1e6 if self.seconds > 0 else float("inf")
        return (
            f"copied {self.files} files, {self.nbytes:,} bytes from {self.src} to {self.dst} "
            f"in {self.seconds:.2f} s ({rate:,.1f} MB/s); sizes verified"
        )


def _access(url: str | os.PathLike[str], options: dict[str, Any] | None) -> FileAccess:
    if is_local(url):
        check_local_options(url, options)
        return FileAccess(local_path(url))
    return FileAccess(os.fspath(url), options)


def copy_store(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    src_options: dict[str, Any] | None = None,
    dst_options: dict[str, Any] | None = None,
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> CopyReport:
    """Copy the committed store at ``src`` to ``dst`` (any two paths or fsspec URLs).

    A store that writers keep committing to is copied as one whole commit: when a commit
    deletes files of the version being copied, the copy starts again on the newer one (at
    most :data:`COPY_ATTEMPTS` times).

    Parameters
    ----------
    src, dst
        Local paths, ``file://`` or any fsspec URLs (``s3://``, ``memory://``, ...).
    src_options, dst_options
        ``storage_options`` for each side's filesystem (refused for local paths).
    progress
        Show a progress bar (tqdm, on stderr) counting bytes.
    overwrite
        Replace a store already at ``dst``; otherwise that is an error. The copy is written
        beside the old store (a new directory, or objects under names of this copy) and
        replaces it at the commit: until then readers see the old store, whole, and a copy
        that fails or is killed leaves it as it was. See :mod:`bigarray.core.commit`.

    Returns
    -------
    CopyReport
        Files and bytes copied, seconds taken.

    Raises
    ------
    StoreNotFoundError, NotAStoreError
        No store at ``src``; or something that is not a store (a file, a non-empty
        directory) stands at a local ``dst``: it is never replaced nor deleted.
    StoreExistsError
        A store exists at ``dst`` and ``overwrite`` is false.
    StoreCorruptedError
        A source file is shorter than its manifest says, or a copied file has the wrong
        size at the destination (then no manifest is written there).
    StoreAccessError, RemoteStoreError
        A service refused or failed a read or a write.

    Examples
    --------
    >>> copy_store("audio.bigarray", "s3://bucket/audio.bigarray",     # doctest: +SKIP
    ...            dst_options={"profile": "lab"})
    """
    t0 = time.perf_counter()
    for attempt in range(COPY_ATTEMPTS):
        seen: list[int] = []  # the source generation this attempt copies
        try:
            return _copy_once(src, dst, src_options, dst_options, progress, overwrite, t0, seen)
        except BigArrayError:
            # A writer committed to the source meanwhile, and that commit deleted files of
            # the version being copied (or the copy began between two reads of the
            # manifest): copy the newer version. A source that stayed put is damaged.
            if attempt == COPY_ATTEMPTS - 1 or not _moved(src, src_options, seen):
                raise
    raise AssertionError("unreachable")


#: Copies of a source that writers keep committing to (each copies the newest commit)
COPY_ATTEMPTS = 10


def _moved(src: str | os.PathLike[str], options: dict[str, Any] | None, seen: list[int]) -> bool:
    """Whether the source's committed generation is no longer the one ``seen``."""
    if not seen:
        return False
    try:
        acc = _access(src, options)
        acc.invalidate()
        return parse_manifest(acc.cat(MANIFEST_NAME), acc.url).generation != seen[0]
    except BigArrayError:
        return False


def _copy_once(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    src_options: dict[str, Any] | None,
    dst_options: dict[str, Any] | None,
    progress: bool,
    overwrite: bool,
    t0: float,
    seen: list[int],
) -> CopyReport:
    """One copy of the source's current commit (:func:`copy_store`)."""
    from .core.store import open_store

    source = open_store(src, src_options)  # clear errors for a missing or foreign source
    seen.append(source.manifest.generation)
    if source.is_legacy:  # opened in place for reading, but no store
        from .core.legacy import convert_hint
        from .errors import NotAStoreError

        raise NotAStoreError(
            f"{src!r} is a file of the 2020 bigarray, not a store: `bigarray cp` copies stores. "
            f"Convert it (`{convert_hint(src)}`), then copy the new store."
        )
    s_acc = _access(src, src_options)
    d_acc = _access(dst, dst_options)
    if s_acc.local and d_acc.local:
        s_real, d_real = os.path.realpath(s_acc.root), os.path.realpath(d_acc.root)
        if d_real == s_real or d_real.startswith(s_real.rstrip(os.sep) + os.sep):
            raise StoreExistsError(
                f"cannot copy the store {s_acc.root!r} to {d_acc.root!r}, which is the store "
                "itself or a path inside it; copy it to a path outside the store"
            )
    raw = s_acc.cat(MANIFEST_NAME)
    manifest = parse_manifest(raw, s_acc.url)
    if manifest.generation != source.manifest.generation:
        source.close()
        raise StoreChangedError(
            f"{s_acc.url!r} was committed again while the copy started; run the copy again"
        )
    source.close()

    # Each file with the bytes the manifest needs of it (its whole size is copied).
    need: dict[str, int] = {}
    for var in manifest.variables.values():
        for shard in var.shards:
            n = shard.offset + var.row_nbytes * (shard.stop - shard.start)
            need[shard.path] = max(need.get(shard.path, 0), n)
    if manifest.segments is not None:
        for run in manifest.segments.all_runs:
            for role in INDEX_ROLES:
                need.setdefault(run.files[role], 0)
    # A local source: every file is opened now, so that commits landing during the copy
    # (which delete index files of the version two commits back) cannot take them away;
    # data files only grow past what the manifest needs.
    held = _hold_local(s_acc, need) if s_acc.local else {}
    try:
        sizes = (
            {rel: os.fstat(fd).st_size for rel, fd in held.items()} if held else s_acc.sizes(need)
        )
        for rel, n in need.items():
            size = sizes.get(rel)
            if size is None:
                raise s_acc.missing_listed(rel)
            if size < 0:
                raise StoreCorruptedError(
                    f"{s_acc.where(rel)!r}: the server does not tell its size, so a copy could not "
                    "be verified; copy from a filesystem that reports sizes"
                )
            if size < n:
                raise StoreCorruptedError(
                    f"{s_acc.where(rel)!r} holds {size:,} bytes but the manifest needs {n:,}; the "
                    "source store is damaged, nothing was copied"
                )

        final = d_acc
        base = None
        dest: Destination | None = None
        if d_acc.local:
            # written beside the destination and switched into place at the end: a store being
            # replaced stays whole until then; anything but a store is refused, never deleted
            dest = prepare_destination(
                d_acc.root, overwrite, option="overwrite=True (`bigarray cp --overwrite`)"
            )
            d_acc = FileAccess(dest.staging)
            renames: dict[str, str] = {}
        else:
            base = snapshot(d_acc)
            if base.raw is not None and not overwrite:
                raise StoreExistsError(
                    f"a bigarray store already exists at {d_acc.url!r}; pass overwrite=True "
                    "(`bigarray cp --overwrite`) to replace it, or copy elsewhere"
                )
            # Objects under names of this copy only: a store being replaced (or another copy
            # racing to the same URL) keeps every object its manifest names until the switch.
            session = uuid.uuid4().hex[:12]
            renames = {rel: _session_name(rel, session) for rel in need}
        dst_of = {rel: renames.get(rel, rel) for rel in need}

        total = sum(int(sizes[rel] or 0) for rel in need)
        bar = _progress(total, progress, f"{s_acc.url} -> {final.url}")
        try:
            try:
                with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                    futures = [
                        pool.submit(
                            _copy_file,
                            s_acc,
                            d_acc,
                            rel,
                            int(sizes[rel] or 0),
                            bar,
                            dst_of[rel],
                            held.get(rel),
                        )
                        for rel in need
                    ]
                    for f in futures:
                        f.result()
            finally:
                if bar is not None:
                    bar.close()
            d_acc.invalidate()
            got = d_acc.sizes(dst_of.values())
            for rel in need:
                if got.get(dst_of[rel]) != sizes[rel]:
                    raise StoreCorruptedError(
                        f"copy of {s_acc.where(rel)!r} to {d_acc.where(dst_of[rel])!r} holds "
                        f"{got.get(dst_of[rel])} bytes, not {sizes[rel]:,}; no manifest was "
                        f"written at {final.url!r}. Run the copy again."
                    )
            if renames:
                raw = _renamed(manifest, renames).dumps()
            remote_crash_point("copy-before-manifest")
            if base is not None:
                put_manifest(d_acc, raw, base)
            else:
                d_acc.commit_file(MANIFEST_NAME, raw)
        except BaseException:
            if dest is not None:  # a local staging directory: the destination is untouched
                dest.abandon()
            elif renames:
                with contextlib.suppress(Exception):
                    d_acc.remove(list(dst_of.values()))
            raise
        if dest is not None:
            dest.commit()
        elif base is not None and base.raw is not None:
            remove_replaced(d_acc, base.manifest, parse_manifest(raw, final.url))
        return CopyReport(
            s_acc.url, final.url, len(need) + 1, total + len(raw), time.perf_counter() - t0
        )
    finally:
        for fd in held.values():
            os.close(fd)


def _session_name(rel: str, session: str) -> str:
    head, _, tail = rel.rpartition("/")
    return f"{head}/c{session}-{tail}" if head else f"c{session}-{tail}"


def _renamed(manifest: Manifest, renames: dict[str, str]) -> Manifest:
    """The manifest with every file it names renamed as ``renames`` says."""
    variables = {
        name: dataclasses.replace(
            var,
            shards=tuple(dataclasses.replace(s, path=renames[s.path]) for s in var.shards),
        )
        for name, var in manifest.variables.items()
    }
    segments = manifest.segments
    if segments is not None:

        def run_renamed(run: IndexFiles) -> IndexFiles:
            return dataclasses.replace(run, files={r: renames[f] for r, f in run.files.items()})

        if segments.runs:  # an index of several runs: each run's files
            segments = dataclasses.replace(
                segments, runs=tuple(run_renamed(r) for r in segments.runs)
            )
        else:
            segments = run_renamed(segments)
    # the checksums name the files (layout, index spec): tie them to the new names
    variables = {
        name: dataclasses.replace(
            var,
            checksums=renamed_checksums(manifest.variables[name], var, manifest.segments, segments),
        )
        for name, var in variables.items()
    }
    return dataclasses.replace(manifest, variables=variables, segments=segments)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=True)


def _hold_local(s_acc: FileAccess, need: dict[str, int]) -> dict[str, int]:
    """Open every file of a local source (read-only descriptors, by relative path)."""
    from .core.fileutil import resolve_inside

    held: dict[str, int] = {}
    try:
        for rel in need:
            try:
                held[rel] = os.open(resolve_inside(s_acc.root, rel), os.O_RDONLY)
            except FileNotFoundError:
                raise s_acc.missing_listed(rel) from None
    except BaseException:
        for fd in held.values():
            os.close(fd)
        raise
    return held


def _copy_file(
    s_acc: FileAccess,
    d_acc: FileAccess,
    rel: str,
    size: int,
    bar: Any,
    dst_rel: str = "",
    fd: int | None = None,
) -> None:
    """Stream the first ``size`` bytes of one file in :data:`BLOCK`-byte blocks (one block
    in memory at a time), from the open descriptor ``fd`` of a local source if given (a
    file that grew since it was sized is copied as it was sized)."""
    dst_rel = dst_rel or rel
    if size <= BLOCK:
        if fd is not None:
            data = os.pread(fd, size, 0)
        else:
            data = s_acc.cat(rel, missing=lambda: s_acc.missing_listed(rel)) if size else b""
            data = data[:size]
        d_acc.pipe(dst_rel, data)
        if bar is not None:
            bar.update(len(data))
        return
    full = d_acc.full(dst_rel)

    def run() -> None:
        if d_acc.local:
            d_acc.fs.makedirs(full.rpartition("/")[0], exist_ok=True)
        with d_acc.fs.open(full, "wb") as out:
            for off in range(0, size, BLOCK):
                end = min(size, off + BLOCK)
                buf: Any
                if fd is not None:
                    buf = os.pread(fd, end - off, off)
                else:
                    (buf,) = s_acc.fetch([(rel, off, end)], gap=0, part=BLOCK)
                out.write(buf)
                if bar is not None:
                    bar.update(end - off)

    d_acc._call(run, dst_rel, action="write")
