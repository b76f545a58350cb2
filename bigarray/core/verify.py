"""Verification: read every block a commit summed and compare (``bigarray verify``).

The sums are recorded by every commit (:mod:`bigarray.core.integrity` says what is summed);
:func:`verify_store` reads a local store's data and index files back and reports the first
block that disagrees, and checks the ``.npy`` headers, the layout and the index spec.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BigArrayError, IntegrityError, NotAStoreError, StoreNotFoundError
from .fileutil import resolve_inside
from .format import INDEX_ROLES, IndexFiles, Manifest, Variable
from .rows import unwritten_rows

__all__ = ["BadBlock", "VerifyReport", "check_index_sums", "verify_store"]

from .integrity import (
    DataChecksums,
    block_spans,
    crc_range,
    entry_runs,
    file_crc,
    layout_crc,
    spec_crc,
    valid_index_entry,
)


@dataclass
class BadBlock:
    """The first block of a variable whose bytes disagree with the recorded sum."""

    variable: str
    block: int
    rows: tuple[int, int]  # [start, stop)
    file: str
    bytes: tuple[int, int]  # [start, stop) in ``file`` (of the first shard touched)
    recorded: int
    actual: int
    segments: list[str]  # names of the segments touching these rows (at most max_segments)
    segments_total: int
    algorithm: str = "crc32"  # a local store's blocks; crc32c for a sharded (remote) one

    def __str__(self) -> str:
        names = ", ".join(repr(s) for s in self.segments)
        more = self.segments_total - len(self.segments)
        seg = (
            f"; segments touching it: {names}{f' (+{more:,} more)' if more > 0 else ''}"
            if self.segments_total
            else "; no named segment touches it"
        )
        return (
            f"variable {self.variable!r} block {self.block} (rows [{self.rows[0]:,}, "
            f"{self.rows[1]:,}), bytes [{self.bytes[0]:,}, {self.bytes[1]:,}) of {self.file!r}): "
            f"{self.algorithm} is {self.actual:#010x} but {self.recorded:#010x} was recorded at "
            f"commit{seg}"
        )


@dataclass
class VerifyReport:
    """What :func:`verify_store` found. ``ok`` is False when anything is damaged;
    ``str(report)`` is the text ``bigarray verify`` prints."""

    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bad_blocks: list[BadBlock] = field(default_factory=list)  # first bad block per variable
    bad_block_count: int = 0
    blocks_checked: int = 0
    bytes_checked: int = 0
    segments: int = 0
    variables: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_block(self) -> BadBlock | None:
        return self.bad_blocks[0] if self.bad_blocks else None

    def raise_if_bad(self) -> None:
        """Raise :class:`~bigarray.errors.IntegrityError` (with this report) unless ``ok``."""
        if not self.ok:
            raise IntegrityError(str(self))

    def __str__(self) -> str:
        head = (
            f"{self.variables} variable(s), {self.blocks_checked:,} block(s) / "
            f"{self.bytes_checked:,} bytes checksummed, {self.segments:,} segment(s)"
        )
        lines = [f"bigarray verify {self.path}: {'OK' if self.ok else 'FAILED'} ({head})"]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
            if self.bad_block_count:
                lines.append(f"  ({self.bad_block_count:,} bad block(s) in all)")
            lines.append(
                "The store was damaged after its last commit: restore the damaged files (or "
                "the whole store) from a copy, or rewrite the segments named above."
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def segments_touching(
    bounds: np.ndarray | None, names: Any, a: int, b: int, limit: int
) -> tuple[list[str], int]:
    """The names (at most ``limit``) and the number of the segments with rows in ``[a, b)``."""
    if bounds is None or not len(bounds):
        return [], 0
    hit = np.flatnonzero((bounds[:, 0] < b) & (bounds[:, 1] > a) & (bounds[:, 1] > bounds[:, 0]))
    out = []
    for i in hit[:limit].tolist():
        try:
            out.append(names.name(i))
        except (UnicodeDecodeError, IndexError, ValueError):
            out.append(f"<segment #{i}: damaged name>")
    return out, len(hit)


def _check_npy_header(fd: int, var: Variable, shard_rows: int, offset: int) -> str | None:
    """A problem with a shard's ``.npy`` header (None when it agrees with the manifest)."""
    import io

    head = os.pread(fd, min(offset, 1 << 16), 0)
    try:
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f, max_header_size=1 << 16)
    except Exception as exc:  # numpy parses hostile header text with the tokenizer: any error
        return (
            f"its .npy header is damaged ({type(exc).__name__}: {exc}); numpy.load cannot open it"
        )
    if f.tell() != offset:
        return f"its .npy header ends at byte {f.tell()}, but the data starts at byte {offset}"
    if dtype != var.dtype or fortran or tuple(shape[1:]) != var.shape[1:] or not shape:
        return (
            f"its .npy header says {dtype} {tuple(shape)} fortran={fortran}, but the manifest "
            f"says {var.dtype} rows of shape {var.shape[1:]} in C order"
        )
    if shape[0] < shard_rows:
        return f"its .npy header says {shape[0]} rows, fewer than the {shard_rows} committed"
    return None


def _verify_variable(
    report: VerifyReport, path: str, var: Variable, bounds: Any, arrays: Any, max_segments: int
) -> None:

    where = f"variable {var.name!r}"
    fds: list[tuple[int, int, int, int, str]] = []  # fd, start row, stop row, offset, rel
    try:
        for shard in var.shards:
            try:
                full = resolve_inside(path, shard.path)
                fd = os.open(full, os.O_RDONLY)
            except BigArrayError as exc:
                report.problems.append(f"{where}: {exc}")
                return
            except OSError as exc:
                report.problems.append(f"{where}: data file {shard.path!r}: {exc.strerror}")
                return
            fds.append((fd, shard.start, shard.stop, shard.offset, shard.path))
            size = os.fstat(fd).st_size
            need = shard.offset + (shard.stop - shard.start) * var.row_nbytes
            if size < need:
                report.problems.append(
                    f"{where}: data file {shard.path!r} holds {size:,} bytes but the manifest "
                    f"needs {need:,}; it was truncated after the last commit"
                )
                return
            if shard.offset:
                bad = _check_npy_header(fd, var, shard.stop - shard.start, shard.offset)
                if bad:
                    report.problems.append(f"{where}: data file {shard.path!r}: {bad}")
        if var.checksums is None:
            report.notes.append(
                f"{where} has no recorded checksums (written with checksums=False or by an "
                "older writer): only file sizes, headers and the index structure were checked"
            )
            return
        try:
            sums = DataChecksums.from_json(var.checksums, where, var.shards)
        except IntegrityError as exc:
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
                f"{where}: checksums cover {sums.rows:,} rows but the variable has {var.rows:,}; "
                "the manifest was edited or damaged after the commit"
            )
            return
        rb, br = var.row_nbytes, sums.block_rows
        first: BadBlock | None = None
        # Rows the manifest records as written by no commit yet: another writer's appends in
        # flight (committed by that writer later, which sums their blocks again) or left by
        # one that died. Their bytes may change after the commit that summed their block.
        holes = np.array(unwritten_rows(var), np.int64).reshape(-1, 2)
        unsettled = 0
        # blocks are cut per shard, from each shard's first row (integrity.block_spans)
        for k, (i, a, b) in enumerate(block_spans(var.shards, br)):
            fd, s0, _s1, off, rel = fds[i]
            pos = off + (a - s0) * rb
            try:
                crc = crc_range(fd, pos, (b - a) * rb)
            except (IntegrityError, OSError) as exc:
                report.problems.append(f"{where}: reading rows [{a}, {b}) failed: {exc}")
                return
            report.blocks_checked += 1
            report.bytes_checked += (b - a) * rb
            if crc == int(sums.blocks[k]):
                continue
            if bool(((holes[:, 0] < b) & (holes[:, 1] > a)).any()):
                unsettled += 1
            else:
                report.bad_block_count += 1
                if first is None:
                    names, total = segments_touching(bounds, arrays, a, b, max_segments)
                    first = BadBlock(
                        var.name,
                        k,
                        (a, b),
                        rel,
                        (pos, pos + (b - a) * rb),
                        int(sums.blocks[k]),
                        crc,
                        names,
                        total,
                    )
        if unsettled:
            report.notes.append(
                f"{where}: {unsettled:,} block(s) differ from their recorded sums but hold rows "
                "no commit has written yet (another writer's appends in flight, or rows a "
                "writer that died left): not counted as damage; verify again once the "
                "writers closed"
            )
        if first is not None:
            report.bad_blocks.append(first)
            report.problems.append(str(first))
    finally:
        for fd, *_ in fds:
            os.close(fd)


def _verify_index(report: VerifyReport, path: str, manifest: Manifest, store: Any) -> Any:
    """Check the index files and structure; return the index arrays (None when unusable)."""

    spec = manifest.segments
    if spec is None:
        if any(
            isinstance(v.checksums, Mapping) and v.checksums.get("index") is not None
            for v in manifest.variables.values()
        ):
            report.problems.append(
                "the manifest names no segment index, but checksums were recorded for one: "
                "its segments entry was removed after the commit"
            )
        return None
    entries: list[Mapping[str, Any]] = []
    for v in manifest.variables.values():
        entry = v.checksums.get("index") if isinstance(v.checksums, Mapping) else None
        if isinstance(entry, Mapping):
            entries.append(entry)
    current = [e for e in entries if e.get("generation") == spec.generation]
    if not current:
        report.notes.append(
            f"the segment index (generation {spec.generation}) has no recorded checksums: only "
            "its structure was checked"
        )
    else:
        entry = current[-1]
        if not valid_index_entry(entry):
            report.problems.append(f"the index checksums entry {entry!r} is malformed")
        elif entry["spec"] != spec_crc(spec):
            report.problems.append(
                "the manifest's segments entry (count, files, offsets) differs from the one "
                "whose checksums were recorded; the manifest was edited or damaged"
            )
        else:
            check_index_sums(
                report, spec, entry, lambda rel: file_crc(resolve_inside(path, rel)), "crc32"
            )
    try:
        idx = store.index
    except BigArrayError as exc:
        report.problems.append(f"the segment index does not open: {exc}")
        return None
    a = idx.arrays
    report.segments = a.count
    b = np.asarray(a.bounds)
    rows = manifest.rows
    problems = []
    if len(b):
        if bool(np.any(b[:, 1] < b[:, 0])) or bool(np.any(b < 0)):
            problems.append("a segment has start > stop or a negative row")
        if int(b[:, 1].max()) > rows:
            problems.append(f"a segment ends past row {rows:,}, the end of the data")
        if bool(np.any(b[1:, 0] < b[:-1, 0])):
            problems.append("segments are not in row order")
        nz = b[b[:, 1] > b[:, 0]]
        if len(nz) > 1 and bool(np.any(nz[1:, 0] < nz[:-1, 1])):
            problems.append("two segments overlap")
    for run in idx.runs if len(idx.runs) > 1 else []:  # overlap checks bisect each run
        rb = np.asarray(run.arrays.bounds)
        if len(rb) > 1 and bool(np.any(rb[1:, 0] < rb[:-1, 0])):
            problems.append(f"the run of generation {run.spec.generation} is not in row order")
    offs = np.asarray(a.name_offsets)
    raw = np.asarray(a.names).tobytes()
    hashes = np.asarray(a.hashes)
    bad_hash = bad_utf8 = missing = 0
    for i in range(a.count):
        key = raw[offs[i] : offs[i + 1]]
        if zlib.crc32(key) != int(hashes[i]):
            bad_hash += 1
            continue
        try:
            name = key.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            bad_utf8 += 1
            continue
        if idx.find(name) != i:
            missing += 1
    if bad_hash:
        problems.append(f"{bad_hash:,} segment name(s) do not match their stored hash")
    if bad_utf8:
        problems.append(f"{bad_utf8:,} segment name(s) are not valid UTF-8")
    if missing:
        problems.append(f"{missing:,} segment name(s) cannot be found through the hash table")
    report.problems += [f"segment index: {p}" for p in problems]
    return a


def verify_store(path: str | os.PathLike[str], *, max_segments: int = 20) -> VerifyReport:
    """Check a store against the checksums recorded at its last commit.

    Reads every byte of every variable's data and index: about one second per 3 GB.

    Parameters
    ----------
    path
        Store directory.
    max_segments
        How many segment names to list for the first bad block of each variable.

    Returns
    -------
    VerifyReport
        ``.ok`` is False when anything is damaged; ``.first_bad_block`` gives the first bad
        block (variable, rows, bytes, the segments touching it); ``str(report)`` is a
        human-readable account.

    Raises
    ------
    StoreNotFoundError, NotAStoreError
        Nothing to verify at ``path``.

    Examples
    --------
    >>> report = verify_store("audio.bigarray")          # doctest: +SKIP
    >>> report.ok                                        # doctest: +SKIP
    True
    """
    from .store import Store

    path = os.fspath(path)
    for _ in range(_VERIFY_ATTEMPTS):
        report = VerifyReport(path)
        try:
            store = Store(path)
        except (StoreNotFoundError, NotAStoreError):
            raise
        except BigArrayError as exc:
            report.problems.append(f"the manifest is unusable: {exc}")
            return report
        try:
            manifest = store.manifest
            report.variables = len(manifest.variables)
            arrays = _verify_index(report, path, manifest, store)
            bounds = None if arrays is None else np.asarray(arrays.bounds)
            for var in manifest.variables.values():
                _verify_variable(report, path, var, bounds, arrays, max_segments)
        finally:
            store.close()
        if report.ok or not _committed_since(store):
            return report
        # A writer committed while this ran: the commits since may have deleted index files
        # of the commit read (a store keeps the previous one's only). Check the new commit.
    return report


#: Verifications of a store that writers keep committing to (each checks the newest commit)
_VERIFY_ATTEMPTS = 5


def _committed_since(store: Any) -> bool:
    """Whether the store at ``store.path`` was committed to since ``store`` read it."""
    from .store import Store

    try:
        with Store(store.path) as now:
            return bool(now.fingerprint() != store.fingerprint())
    except BigArrayError:
        return False


def check_index_sums(
    report: VerifyReport,
    spec: IndexFiles,
    entry: Mapping[str, Any],
    crc_of: Callable[[str], int],
    algorithm: str,
) -> None:
    """Compare every index file of ``spec`` with the sums ``entry`` recorded at commit;
    ``crc_of(rel)`` reads one file's sum (local or through fsspec)."""
    sums = {int(r["generation"]): r["files"] for r in entry_runs(entry)}
    for run in spec.all_runs:
        recorded = sums.get(run.generation)
        if recorded is None:
            report.problems.append(
                f"index run of generation {run.generation} has no recorded checksums"
            )
            continue
        for role in INDEX_ROLES:
            rel = run.files[role]
            try:
                actual = crc_of(rel)
            except BigArrayError as exc:
                report.problems.append(f"index file {rel!r} ({role}): {exc}")
                continue
            except OSError as exc:
                report.problems.append(f"index file {rel!r} ({role}): {exc.strerror}")
                continue
            if actual != recorded[role]:
                report.problems.append(
                    f"index file {rel!r} ({role}): {algorithm} is {actual:#010x} but "
                    f"{recorded[role]:#010x} was recorded at commit"
                )
