"""``bigarray verify URL``: check a store behind an fsspec URL as far as its manifest allows.

Every object the manifest names must exist with at least the size it needs; the segment
index must load and lie inside the rows; every row of every variable is read. Where the
manifest records checksums (a store written locally and copied with ``bigarray cp``), every
block's CRC-32C is recomputed from the bytes read and compared. A sharded store written by
``to_bigarray`` on a URL records no checksums yet: the report says so in a note.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BigArrayError, NotAStoreError, StoreNotFoundError
from .integrity import DataChecksums, block_rows_for
from .verify import BadBlock, VerifyReport

__all__ = ["verify_remote"]

#: Bytes read per request while verifying (rows are read in blocks of about this size).
READ_BYTES = 64 << 20


def verify_remote(url: str, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Verify the store at ``url`` (see the module docstring).

    Raises
    ------
    StoreNotFoundError, NotAStoreError
        Nothing to verify at ``url``.
    """
    from .integrity import extend_crc
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
    try:
        index = store.index
        if index is not None:
            bounds = np.asarray(index.arrays.bounds)
            report.segments = len(bounds)
            rows = manifest.rows
            if len(bounds) and (int(bounds[:, 1].max()) > rows or int(bounds[:, 0].min()) < 0):
                report.problems.append(
                    f"the segment index names rows outside the {rows:,} rows of the store"
                )
    except BigArrayError as exc:
        report.problems.append(f"segment index: {exc}")
    for var in manifest.variables.values():
        where = f"variable {var.name!r}"
        try:
            store.check_shards(var)
        except BigArrayError as exc:
            report.problems.append(f"{where}: {exc}")
            continue
        sums = None
        if var.checksums is not None:
            try:
                sums = DataChecksums.from_json(var.checksums, f"{url}: {where}")
            except BigArrayError as exc:
                report.problems.append(str(exc))
                continue
        else:
            report.notes.append(
                f"{where} has no recorded checksums (a sharded store written to a URL): every "
                "object was sized and every row read, but bytes changed in place would not show"
            )
        block = sums.block_rows if sums is not None else block_rows_for(var.row_nbytes)
        step = max(block, (READ_BYTES // max(var.row_nbytes, 1)) // block * block)
        try:
            for a in range(0, var.rows, step):
                b = min(var.rows, a + step)
                rows_ = np.ascontiguousarray(store.read_rows(var.name, a, b))
                raw = memoryview(rows_.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
                report.bytes_checked += raw.nbytes
                if sums is None:
                    continue
                nb = block * var.row_nbytes
                for k, lo in enumerate(range(0, raw.nbytes, nb)):
                    i = a // block + k
                    report.blocks_checked += 1
                    got = extend_crc(0, bytes(raw[lo : lo + nb]))
                    want = int(sums.blocks[i]) if i < sums.nblocks else -1
                    if got != want:
                        report.bad_block_count += 1
                        if not any(bb.variable == var.name for bb in report.bad_blocks):
                            r0 = i * block
                            r1 = min(var.rows, r0 + block)
                            report.bad_blocks.append(
                                BadBlock(var.name, i, (r0, r1), "", (0, 0), want, got, [], 0)
                            )
                            report.problems.append(
                                f"{where} block {i} (rows [{r0:,}, {r1:,})): crc32c is "
                                f"{got:#010x} but {want:#010x} was recorded at commit"
                            )
        except BigArrayError as exc:
            report.problems.append(f"{where}: {exc}")
    return report
