"""Compaction: merge every run of a local store's segment index into one, in one commit."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np

from . import integrity
from .commit import commit_local
from .crash import crash_point
from .fileutil import fsync_dir, locked
from .format import INDEX_DIR, INDEX_ROLES, LOCK_NAME, IndexFiles, Variable
from .index import (
    STREAM_MIN,
    SegmentArrays,
    concat,
    follow_in_rows,
    row_order,
    write_concat,
    write_index,
)
from .store import Store, read_manifest

__all__ = ["compact"]


class _Progress:
    """Counts merged segments for a ``progress(done, total)`` callback."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int) -> None:
        self.callback, self.total, self.n = callback, total, 0

    def update(self, k: int) -> None:
        self.n = min(self.total, self.n + max(0, k))
        if self.callback is not None:
            self.callback(self.n, self.total)


def compact(
    path: str | os.PathLike[str],
    *,
    progress: Callable[[int, int], None] | None = None,
    fsync: bool = True,
) -> IndexFiles | None:
    """Merge every run of the segment index of the local store at ``path`` into one.

    A commit like any other, under the store lock: the merged run is written to new
    files, the manifest that names it replaces the old one by rename, and the old runs'
    files go once no reader can need them. A crash at any point leaves the last commit.
    Lookups then probe one table and the row-order arrays are a plain memory map again.
    Returns the new index entry (``None`` for a store without segments).

    ``progress(done, total)`` is called as the merge goes, in segments (the command line
    shows it as a progress bar).
    """

    path = os.path.abspath(os.fspath(path))
    with locked(os.path.join(path, LOCK_NAME)):
        manifest = read_manifest(path)
        spec = manifest.segments
        if spec is None or len(spec.all_runs) == 1:
            return spec
        generation = manifest.generation + 1
        with Store(path) as store:
            index = store.index
            assert index is not None
            bar = _Progress(progress, spec.count)
            prefix = f"g{generation}-"
            d = os.path.join(path, INDEX_DIR)
            for name in os.listdir(d):  # left by a compaction killed before its rename
                if name.startswith(prefix):
                    os.unlink(os.path.join(d, name))
            runs = sorted(
                (r for r in index.runs if len(r)),
                key=lambda r: (int(r.arrays.bounds[0, 0]), int(r.arrays.bounds[0, 1])),
            )
            parts = [r.arrays for r in runs]
            step = spec.count // (2 * len(INDEX_ROLES))
            if spec.count >= STREAM_MIN and follow_in_rows(parts):  # no copy in memory
                bar.update(spec.count // 2)
                new = write_concat(
                    path, generation, parts, fsync=fsync, written=lambda _r: bar.update(step)
                )
            else:
                copies = []
                for run in runs:
                    a = run.arrays
                    copies.append(
                        SegmentArrays(
                            np.array(a.names),
                            np.array(a.name_offsets),
                            np.array(a.bounds),
                            np.array(a.hashes),
                        )
                    )
                    bar.update(len(run) // 2)
                seg = row_order(concat(copies))
                del copies
                new = write_index(
                    path, generation, seg, fsync=fsync, written=lambda _r: bar.update(step)
                )
            del parts, runs
            bar.update(spec.count - bar.n)
        if fsync:
            fsync_dir(os.path.join(path, INDEX_DIR))
        crash_point("compact-after-index")
        variables = {}
        for name, var in manifest.variables.items():
            sums = var.checksums
            if isinstance(sums, Mapping) and sums.get("index") is not None:
                sums = {**sums, "index": integrity.index_entry(path, new, sums.get("index"))}
            variables[name] = Variable(
                var.name, var.dtype, var.shape, var.dims, var.shards, var.attrs, var.encoding, sums
            )
        crash_point("compact-before-manifest")
        commit_local(
            path,
            manifest,
            variables=variables,
            segments=new,
            fsync=fsync,
            published=lambda _m: crash_point("compact-after-manifest"),
        )
        return new
