"""Copy a committed store between any two places (``bigarray cp SRC DST``).

Only what the manifest names is copied: every shard of every variable, the index files
of the committed generation, and last the manifest itself (the copy's commit), so a copy
interrupted at any point leaves no store at the destination, never half of one. Each
file is streamed in blocks (never whole in memory), several files at a time, and its
size is checked at the destination before the manifest is written.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import StoreCorruptedError, StoreExistsError
from .filesystem import FileAccess, check_local_options, is_local, local_path
from .format import INDEX_ROLES, MANIFEST_NAME, parse_manifest

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

    Parameters
    ----------
    src, dst
        Local paths, ``file://`` or any fsspec URLs (``s3://``, ``memory://``, ...).
    src_options, dst_options
        ``storage_options`` for each side's filesystem (refused for local paths).
    progress
        Show a progress bar (tqdm, on stderr) counting bytes.
    overwrite
        Replace a store already at ``dst`` (it is deleted first); otherwise that is an error.

    Returns
    -------
    CopyReport
        Files and bytes copied, seconds taken.

    Raises
    ------
    StoreNotFoundError, NotAStoreError
        No store at ``src``.
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
    from .store import open_store

    t0 = time.perf_counter()
    source = open_store(src, src_options)  # clear errors for a missing or foreign source
    if getattr(source, "is_legacy", False):  # opened in place for reading, but no store
        from .errors import NotAStoreError
        from .legacy import convert_hint

        raise NotAStoreError(
            f"{src!r} is a file of the 2020 bigarray, not a store: `bigarray cp` copies stores. "
            f"Convert it (`{convert_hint(src)}`), then copy the new store."
        )
    s_acc = _access(src, src_options)
    d_acc = _access(dst, dst_options)
    raw = s_acc.cat(MANIFEST_NAME)
    manifest = parse_manifest(raw, s_acc.url)
    if manifest.generation != source.manifest.generation:
        raise StoreCorruptedError(
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
    sizes = s_acc.sizes(need)
    for rel, n in need.items():
        size = sizes.get(rel)
        if size is None:
            raise s_acc._missing_listed(rel)
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

    if d_acc.exists(MANIFEST_NAME):
        if not overwrite:
            raise StoreExistsError(
                f"a bigarray store already exists at {d_acc.url!r}; pass overwrite=True "
                "(`bigarray cp --overwrite`) to replace it, or copy elsewhere"
            )
        d_acc.remove_tree()

    total = sum(int(sizes[rel] or 0) for rel in need)
    bar = _progress(total, progress, f"{s_acc.url} -> {d_acc.url}")
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [
                pool.submit(_copy_file, s_acc, d_acc, rel, int(sizes[rel] or 0), bar)
                for rel in need
            ]
            for f in futures:
                f.result()
    finally:
        if bar is not None:
            bar.close()
    d_acc.invalidate()
    got = d_acc.sizes(need)
    for rel in need:
        if got.get(rel) != sizes[rel]:
            raise StoreCorruptedError(
                f"copy of {s_acc.where(rel)!r} to {d_acc.where(rel)!r} holds {got.get(rel)} bytes, "
                f"not {sizes[rel]:,}; no manifest was written at {d_acc.url!r}. Run the copy again."
            )
    d_acc.commit_file(MANIFEST_NAME, raw)
    return CopyReport(
        s_acc.url, d_acc.url, len(need) + 1, total + len(raw), time.perf_counter() - t0
    )


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=True)


def _copy_file(s_acc: FileAccess, d_acc: FileAccess, rel: str, size: int, bar: Any) -> None:
    """Stream one file in :data:`BLOCK`-byte blocks (one block in memory at a time)."""
    if size <= BLOCK:
        data = s_acc.cat(rel, missing=lambda: s_acc._missing_listed(rel)) if size else b""
        d_acc.pipe(rel, data)
        if bar is not None:
            bar.update(len(data))
        return
    full = d_acc.full(rel)

    def run() -> None:
        if d_acc.local:
            d_acc.fs.makedirs(full.rpartition("/")[0], exist_ok=True)
        with d_acc.fs.open(full, "wb") as out:
            for off in range(0, size, BLOCK):
                end = min(size, off + BLOCK)
                (buf,) = s_acc.fetch([(rel, off, end)], gap=0, part=BLOCK)
                out.write(buf)
                if bar is not None:
                    bar.update(end - off)

    d_acc._call(run, rel, action="write")
