"""``bigarray verify URL``: check a store behind an fsspec URL as far as its manifest allows.

Every object the manifest names must exist with at least the size it needs; the segment
index must load and lie inside the rows; every row of every variable is read. Where the
manifest records checksums (every store the storage core commits: a sharded write to a
URL, a local store copied with ``bigarray cp``), every block's CRC-32C is recomputed from
the bytes read and compared, shard by shard (the block grid of
:mod:`bigarray.core.integrity`), and so is the CRC-32C of every file of the segment index.
A store written before sharded writes recorded checksums is checked as far as its sizes
and rows go; the report says so in a note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import BigArrayError, NotAStoreError, StoreNotFoundError
from .format import Manifest, Variable
from .integrity import (
    DataChecksums,
    block_rows_for,
    extend_crc,
    layout_crc,
    spec_crc,
    valid_index_entry,
)
from .verify import BadBlock, VerifyReport, check_index_sums, segments_touching

__all__ = ["verify_remote"]

#: Bytes read per request while verifying (rows are read in blocks of about this size).
READ_BYTES = 64 << 20


def verify_remote(
    url: str, storage_options: dict[str, Any] | None = None, *, max_segments: int = 20
) -> VerifyReport:
    """Verify the store at ``url`` (see the module docstring); ``max_segments``: how many
    segment names to list for the first bad block of each variable.

    Raises
    ------
    StoreNotFoundError, NotAStoreError
        Nothing to verify at ``url``.
    """
    from .store import RemoteStore

    report = VerifyReport(url)
    try:
        store = RemoteStore(url, storage_options)
    except (StoreNotFoundError, NotAStoreError):
        raise
    except BigArrayError as exc:
        report.problems.append(f"the manifest is unusable: {exc}")
        return report
    manifest = store.manifest
    report.variables = len(manifest.variables)
    _verify_index_files(report, store, manifest)
    bounds = arrays = None
    try:
        index = store.index
        if index is not None:
            arrays = index.arrays
            bounds = np.asarray(arrays.bounds)
            report.segments = len(bounds)
            rows = manifest.rows
            if len(bounds) and (int(bounds[:, 1].max()) > rows or int(bounds[:, 0].min()) < 0):
                report.problems.append(
                    f"the segment index names rows outside the {rows:,} rows of the store"
                )
    except BigArrayError as exc:
        report.problems.append(f"segment index: {exc}")
        bounds = arrays = None
    for var in manifest.variables.values():
        _verify_variable(report, store, url, var, bounds, arrays, max_segments)
    return report


def _verify_index_files(report: VerifyReport, store: Any, manifest: Manifest) -> None:
    """Compare the CRC-32C of every index file with the one recorded at commit."""
    spec = manifest.segments
    if spec is None:
        return
    entries = [
        v.checksums["index"]
        for v in manifest.variables.values()
        if isinstance(v.checksums, Mapping)
        and isinstance(v.checksums.get("index"), Mapping)
        and v.checksums["index"].get("generation") == spec.generation
    ]
    if not entries:
        report.notes.append(
            f"the segment index (generation {spec.generation}) has no recorded checksums: only "
            "its structure was checked"
        )
        return
    entry = entries[-1]
    if not valid_index_entry(entry):
        report.problems.append(f"the index checksums entry {entry!r} is malformed")
        return
    if entry["spec"] != spec_crc(spec):
        report.problems.append(
            "the manifest's segments entry (count, files, offsets) differs from the one whose "
            "checksums were recorded; the manifest was edited or damaged"
        )
        return
    check_index_sums(
        report,
        spec,
        entry,
        lambda rel: int(extend_crc(0, bytes(store.access.cat(rel)))),
        "crc32c",
    )


def _verify_variable(
    report: VerifyReport,
    store: Any,
    url: str,
    var: Variable,
    bounds: np.ndarray | None,
    arrays: Any,
    max_segments: int,
) -> None:
    where = f"variable {var.name!r}"
    try:
        store.check_shards(var)
    except BigArrayError as exc:
        report.problems.append(f"{where}: {exc}")
        return
    sums = None
    if var.checksums is not None:
        try:
            sums = DataChecksums.from_json(var.checksums, f"{url}: {where}", var.shards)
        except BigArrayError as exc:
            report.problems.append(str(exc))
            return
        if sums.layout != layout_crc(var):
            report.problems.append(
                f"{where}: its dtype, shape or shard list differ from those its checksums were "
                "recorded for; the manifest was edited or damaged after the commit"
            )
            return
        if sums.rows != var.rows:
            report.problems.append(
                f"{where}: checksums cover {sums.rows:,} rows but the variable has "
                f"{var.rows:,}; the manifest was edited or damaged after the commit"
            )
            return
    else:
        report.notes.append(
            f"{where} has no recorded checksums (a store written before sharded writes recorded "
            "them): every object was sized and every row read, but bytes changed in place would "
            "not show"
        )
    rb = var.row_nbytes
    block = sums.block_rows if sums is not None else block_rows_for(rb)
    step = max(block, (READ_BYTES // max(rb, 1)) // block * block)
    k = 0  # the running block number: blocks are listed shard after shard
    try:
        for shard in var.shards:
            for a in range(shard.start, shard.stop, step):
                b = min(shard.stop, a + step)
                rows_ = np.ascontiguousarray(store.read_rows(var.name, a, b))
                raw = rows_.reshape(-1).view(np.uint8)
                report.bytes_checked += raw.nbytes
                if sums is None:
                    continue
                for r0 in range(a, b, block):  # by rows: rows of zero bytes make blocks too
                    r1 = min(b, r0 + block)
                    report.blocks_checked += 1
                    got = int(extend_crc(0, raw[(r0 - a) * rb : (r1 - a) * rb]))
                    want = int(sums.blocks[k]) if k < sums.nblocks else -1
                    if got != want:
                        report.bad_block_count += 1
                        if not any(bb.variable == var.name for bb in report.bad_blocks):
                            p0 = shard.offset + (r0 - shard.start) * rb
                            names, total = segments_touching(bounds, arrays, r0, r1, max_segments)
                            bad = BadBlock(
                                var.name,
                                k,
                                (r0, r1),
                                shard.path,
                                (p0, p0 + (r1 - r0) * rb),
                                want,
                                got,
                                names,
                                total,
                                "crc32c",
                            )
                            report.bad_blocks.append(bad)
                            report.problems.append(str(bad))
                    k += 1
    except BigArrayError as exc:
        report.problems.append(f"{where}: {exc}")
