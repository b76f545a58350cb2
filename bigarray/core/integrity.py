"""Checksums recorded at commit (:mod:`bigarray.core.verify` checks them).

What is summed
--------------
Every commit of a :class:`~bigarray.core.writer.StoreWriter` records, in the manifest entry of
the variable it wrote (``variables.<name>.checksums``, an object the v1 format already
allows), a CRC-32C (``google_crc32c``) of every *block* of rows of the variable's data and of every file
of the segment index generation it wrote::

    "checksums": {
      "algorithm": "crc32c",
      "block_rows": 2048,          rows per block (blocks of about 1 MiB; the last is shorter)
      "rows": 2003456,             rows covered (equals the variable's shape[0] when current)
      "layout": 1234567890,        crc32 of the canonical JSON of {dtype, shape, shards}
      "blocks": "base64...",       crc32c of each block's bytes, little-endian uint32, base64
      "index": {                   present when this variable's writer wrote the index
        "generation": 7,           the index generation summed (ignored when stale)
        "spec": 987654321,         crc32 of the canonical JSON of the manifest's "segments"
        "files": {"names": 1, "name_offsets": 2, "bounds": 3, "hashes": 4, "table": 5}
      }
    }

Blocks are counted per shard: each shard's rows are cut into blocks of ``block_rows`` from
the shard's own first row, and ``blocks`` lists them shard after shard (:func:`block_spans`).
A variable of one shard (every store the local writer makes) has the plain grid
``[k * block_rows, (k + 1) * block_rows)``; a sharded write (:mod:`bigarray.core.sharded`),
whose shards end on segment boundaries, has one short block at the end of each shard.

Block sums cover data bytes only (not the ``.npy`` header, whose row count a commit
rewrites in place); :func:`~bigarray.core.verify.verify_store` checks the header separately. ``layout`` and
``spec`` tie the sums to the manifest fields that say where the bytes are, so a manifest
rewritten to point elsewhere fails verification too.

Cost at commit
--------------
Only blocks touched since the previous commit are summed (the row ranges of the journal
records and of the owner's pending writes, plus the blocks past the previous row count);
the previous commit's sums are reused for the rest. The summing runs in background
threads while the commit ``fsync``\\ s the data, so on a durable commit it is mostly hidden.
``StoreWriter(..., checksums=False)`` turns it off (and drops the stale sums).

Caveat: rows rewritten *in place* inside the committed range by a writer that has not
committed yet make their block fail verification until that writer commits.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import IntegrityError
from .fileutil import start_writeback
from .format import INDEX_ROLES, IndexFiles, Variable, byte_view, dtype_to_str

__all__ = [
    "ALGORITHM",
    "BLOCK_BYTES",
    "DataChecksums",
    "block_spans",
    "renamed_checksums",
]

ALGORITHM = "crc32c"


def _load_crc32c() -> Any:
    """CRC-32C (Castagnoli) from google-crc32c: hardware-accelerated, ~10 GB/s here against
    ~4 GB/s for zlib.crc32, which is what lets a commit sum its data at page-cache speed.

    google-crc32c's ``extend`` releases the GIL only for ``bytes`` of 1 MiB or more; the
    blocks summed here are ndarrays, so a thread summing them held the GIL and made the
    writing thread wait for it between ``pwritev`` calls (a single 1.2 GB ``write()`` took
    1.7x as long as with no sums). Its C function called through ctypes releases the GIL.
    """
    import google_crc32c

    extend = google_crc32c.extend
    try:
        import ctypes
        import importlib

        _crc32c = importlib.import_module("google_crc32c._crc32c")
        # dlsym on the extension's handle also finds the symbol in the libcrc32c it links
        native = ctypes.CDLL(_crc32c.__file__).crc32c_extend
        native.restype = ctypes.c_uint32
        native.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    except (ImportError, OSError, AttributeError):
        return extend

    def extend_nogil(value: int, data: Any) -> int:
        if type(data) is np.ndarray and data.nbytes >= _NOGIL_BYTES and data.flags.c_contiguous:
            return int(native(value, data.ctypes.data, data.nbytes))
        return int(extend(value, data))

    return extend_nogil


_NOGIL_BYTES = 64 << 10  # below this, the ctypes call costs more than holding the GIL


extend_crc = _load_crc32c()
#: Target size of one checksummed block of rows (bytes).
BLOCK_BYTES = 1 << 20
_INLINE_BYTES = 8 << 20  # below this, sum in the calling thread (threads cost more)
_THREADS = 2
_READ_BYTES = 4 << 20
_WRITEBACK_ALIGN = 1 << 20


def block_rows_for(row_nbytes: int) -> int:
    """Rows per checksummed block for rows of ``row_nbytes`` bytes (blocks of ~1 MiB)."""
    return max(1, BLOCK_BYTES // max(int(row_nbytes), 1))


def _canonical_crc(obj: Any) -> int:
    return zlib.crc32(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def layout_crc(var: Variable) -> int:
    """crc32 of the manifest fields that say where a variable's bytes are."""
    return _canonical_crc(
        {
            "dtype": dtype_to_str(var.dtype),
            "shape": list(var.shape),
            "shards": [s.to_json() for s in var.shards],
        }
    )


def spec_crc(spec: IndexFiles) -> int:
    """crc32 of the manifest's ``segments`` entry (count, files, offsets, table size)."""
    return _canonical_crc(spec.to_json())


@dataclass
class DataChecksums:
    """The decoded ``checksums`` object of one variable."""

    block_rows: int
    rows: int
    layout: int
    blocks: np.ndarray  # uint32, one per block
    index: dict[str, Any] | None = None

    @property
    def nblocks(self) -> int:
        return len(self.blocks)

    @classmethod
    def from_json(cls, obj: Any, where: str, shards: Sequence[Any] | None = None) -> DataChecksums:
        """Decode (and validate) a manifest ``checksums`` object; :class:`IntegrityError`
        when it is malformed. With ``shards`` (the variable's), the number of block sums is
        checked against the per-shard grid (:func:`block_spans`); without, against one shard
        from row 0."""

        def bad(why: str) -> IntegrityError:
            return IntegrityError(
                f"{where}: the recorded checksums are malformed ({why}); the manifest was "
                "damaged or edited. Restore it, or rewrite the store to record new checksums."
            )

        if not isinstance(obj, Mapping):
            raise bad(f"expected an object, got {type(obj).__name__}")
        if obj.get("algorithm") != ALGORITHM:
            raise bad(f"algorithm {obj.get('algorithm')!r}, expected {ALGORITHM!r}")
        ints = {}
        for key in ("block_rows", "rows", "layout"):
            v = obj.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(f"{key} is {v!r}, expected an int >= 0")
            ints[key] = v
        if ints["block_rows"] == 0:
            raise bad("block_rows is 0")
        text = obj.get("blocks")
        if not isinstance(text, str):
            raise bad(f"blocks is {type(text).__name__}, expected a base64 string")
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise bad(f"blocks is not base64: {exc}") from None
        if len(raw) % 4:
            raise bad(f"blocks holds {len(raw)} bytes, not a whole number of uint32")
        blocks = np.frombuffer(raw, "<u4").astype(np.uint32)
        if shards is not None and len(shards) > 1:
            want = sum(-(-(int(x.stop) - int(x.start)) // ints["block_rows"]) for x in shards)
        else:
            want = -(-ints["rows"] // ints["block_rows"])
        if len(blocks) != want:
            raise bad(f"{len(blocks)} block sums for {ints['rows']} rows of {ints['block_rows']}")
        index = obj.get("index")
        if index is not None and not valid_index_entry(index):
            raise bad(f"index entry {index!r} is not {{generation, spec, files}}")
        return cls(ints["block_rows"], ints["rows"], ints["layout"], blocks, index)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "algorithm": ALGORITHM,
            "block_rows": int(self.block_rows),
            "rows": int(self.rows),
            "layout": int(self.layout),
            "blocks": base64.b64encode(np.asarray(self.blocks, "<u4").tobytes()).decode("ascii"),
        }
        if self.index is not None:
            out["index"] = self.index
        return out


def block_spans(shards: Sequence[Any], block_rows: int) -> list[tuple[int, int, int]]:
    """The checksummed blocks of a variable, in the order of its ``blocks``:
    ``(shard number, first row, stop row)``, each shard cut from its own first row."""
    out = []
    for i, s in enumerate(shards):
        start, stop = int(s.start), int(s.stop)
        out += [(i, a, min(a + block_rows, stop)) for a in range(start, stop, block_rows)]
    return out


def renamed_checksums(
    old: Variable,
    new: Variable,
    old_spec: IndexFiles | None,
    new_spec: IndexFiles | None,
) -> dict[str, Any] | None:
    """``old.checksums`` for ``new``, the same variable with its files renamed (a copy).

    The bytes are the same, so the block and file sums stay; ``layout`` and the index
    ``spec`` name the files, so they are recomputed, but only where they agreed with
    ``old`` and ``old_spec``: sums that did not match the source (a damaged manifest) stay
    as they were, so the copy fails verification as its source does.
    """
    sums = old.checksums
    if not isinstance(sums, Mapping):
        return sums
    out = dict(sums)
    if out.get("layout") == layout_crc(old):
        out["layout"] = layout_crc(new)
    entry = out.get("index")
    if (
        isinstance(entry, Mapping)
        and old_spec is not None
        and new_spec is not None
        and entry.get("spec") == spec_crc(old_spec)
    ):
        out["index"] = {**entry, "spec": spec_crc(new_spec)}
    return out


def valid_index_entry(index: Any) -> bool:
    if not isinstance(index, Mapping):
        return False

    def is_u(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def valid_files(files: Any) -> bool:
        return (
            isinstance(files, Mapping)
            and set(files) == set(INDEX_ROLES)
            and all(is_u(v) for v in files.values())
        )

    runs = index.get("runs")
    if runs is not None:  # an index of several runs: the sums of each run's files
        return (
            is_u(index.get("generation"))
            and is_u(index.get("spec"))
            and isinstance(runs, list)
            and len(runs) >= 1
            and all(
                isinstance(r, Mapping) and is_u(r.get("generation")) and valid_files(r.get("files"))
                for r in runs
            )
        )
    return (
        is_u(index.get("generation"))
        and is_u(index.get("spec"))
        and valid_files(index.get("files"))
    )


def entry_runs(index: Any) -> list[Mapping[str, Any]]:
    """``[{"generation", "files"}]`` of a (valid) index checksums entry, either form."""
    if not valid_index_entry(index):
        return []
    if index.get("runs") is not None:
        return list(index["runs"])
    return [{"generation": index["generation"], "files": index["files"]}]


# --------------------------------------------------------------------------- summing


_scratch = threading.local()


def _read_buffer() -> np.ndarray:
    """This thread's reusable read buffer. Why not ``os.pread`` (a new bytes object per read):
    in a dask worker each new 1 MiB object came as fresh pages from the kernel, and the page
    faults made summing 6x slower than reading into one buffer. (google-crc32c takes an
    ndarray but not a memoryview.)"""
    buf = getattr(_scratch, "buf", None)
    if buf is None:
        buf = _scratch.buf = np.empty(_READ_BYTES, np.uint8)
    return buf


def crc_range(fd: int, offset: int, nbytes: int, value: int = 0) -> int:
    """crc32 of ``nbytes`` bytes of ``fd`` from ``offset`` (read with ``preadv``: a file that
    shrank under us gives a short read, never SIGBUS)."""
    buf = _read_buffer()
    while nbytes > 0:
        n = os.preadv(fd, [byte_view(buf[: min(nbytes, _READ_BYTES)])], offset)
        if not n:
            raise IntegrityError(
                f"file ended {nbytes:,} bytes early at byte {offset:,} while checksumming"
            )
        value = extend_crc(value, buf[:n])
        offset += n
        nbytes -= n
    return value


def sum_blocks(
    fd: int, data_offset: int, row_nbytes: int, rows: int, block_rows: int, which: np.ndarray
) -> np.ndarray:
    """crc32 of the blocks ``which`` of a single-file variable (one thread)."""
    out = np.empty(len(which), np.uint32)
    for j, k in enumerate(which.tolist()):
        a = k * block_rows
        b = min(a + block_rows, rows)
        out[j] = crc_range(fd, data_offset + a * row_nbytes, (b - a) * row_nbytes)
    return out


class BlockSums:
    """crc32 of some row blocks of one data file, computed in background threads.

    Started before the commit's ``fsync`` so that both proceed together; :meth:`result`
    waits. Small jobs run inline (a thread costs more than summing a few MiB).
    """

    def __init__(
        self,
        fd: int,
        data_offset: int,
        row_nbytes: int,
        rows: int,
        block_rows: int,
        which: np.ndarray,
    ) -> None:
        self.which = np.asarray(which, np.int64)
        args = (fd, data_offset, row_nbytes, rows, block_rows)
        nbytes = len(self.which) * block_rows * row_nbytes
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[np.ndarray]] = []
        self._inline: np.ndarray | None = None
        if nbytes <= _INLINE_BYTES or len(self.which) < 2:
            self._inline = sum_blocks(*args, self.which)
            return
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="bigarray-crc")
        # interleaved halves keep both threads on neighbouring blocks (sequential reads)
        parts = [self.which[i::_THREADS] for i in range(_THREADS)]
        self._futures = [self._pool.submit(sum_blocks, *args, p) for p in parts]
        self._parts = parts

    def result(self) -> np.ndarray:
        """The sums, in the order of ``which``."""
        if self._inline is not None:
            return self._inline
        assert self._pool is not None
        try:
            out = np.empty(len(self.which), np.uint32)
            for i, fut in enumerate(self._futures):
                out[i::_THREADS] = fut.result()
            return out
        finally:
            self._pool.shutdown(wait=True)


@dataclass
class WrittenSums:
    """Sums of the whole blocks one ``write`` covered, computed by the writing process."""

    block_rows: int
    blocks: np.ndarray  # int64 block numbers
    crcs: np.ndarray  # uint32, one per block


#: A write summed by its own process only from this many whole blocks (smaller writes
#: leave their blocks to the commit: a thread costs more than it saves).
FOLLOW_MIN_BLOCKS = 8


class WriteFollower:
    """Sum the whole blocks of one ``write`` while the write goes on.

    The writer calls :meth:`advance` after each ``pwritev``; one background thread reads back
    the blocks completed so far (from the page cache, where they were just written) and sums
    them, and with ``writeback`` asks the kernel to start writing those bytes to disk. The
    commit then reuses the sums instead of re-reading the data, and its ``fsync`` finds most
    of the data already on disk. On a 2-core machine the thread runs on the core that the
    writing thread, busy in the kernel copying pages, leaves idle.

    With ``defer_sums`` (the owner's writes, whose caller need not wait for the sums), only
    the writeback follows the write; :meth:`finish` starts summing once the write is done,
    in two threads, and the commit waits for them. Then ``write()`` itself costs what a
    plain ``pwrite`` of the bytes costs even when no core is idle (a loaded machine, or a
    summing thread competing with the copy for memory bandwidth made a 1.2 GB ``write()``
    2x slower than h5py's).
    """

    def __init__(
        self,
        fd: int,
        data_offset: int,
        row_nbytes: int,
        start: int,
        stop: int,
        *,
        writeback: bool,
        checksum: bool,
        defer_sums: bool = False,
    ) -> None:
        self.block_rows = br = block_rows_for(row_nbytes)
        self._checksum = checksum
        self._defer = defer_sums and checksum
        self._args = (fd, data_offset, row_nbytes)
        self._start = start
        self._first = -(-start // br)  # the whole blocks inside [start, stop)
        self._end = max(self._first, stop // br)
        self._next = self._first
        self._ready = self._first  # whole blocks written (summed later when deferring)
        self._synced = data_offset + start * row_nbytes
        self._writeback = writeback
        self._pool = ThreadPoolExecutor(
            _THREADS if self._defer else 1, thread_name_prefix="bigarray-write-crc"
        )
        self._futures: list[Future[np.ndarray]] = []

    @staticmethod
    def wanted(row_nbytes: int, start: int, stop: int) -> bool:
        """Whether a write of rows ``[start, stop)`` covers enough whole blocks to follow."""
        br = block_rows_for(row_nbytes)
        return stop // br - -(-start // br) >= FOLLOW_MIN_BLOCKS

    def advance(self, nbytes: int) -> None:
        """The first ``nbytes`` bytes of the write are in the file."""
        _, data_offset, row_nbytes = self._args
        upto = min((self._start + nbytes // row_nbytes) // self.block_rows, self._end)
        end_byte = data_offset + self._start * row_nbytes + nbytes
        # Write back whole MiBs only: a page under writeback that the next call writes into
        # (the partial page at the write head) makes that call wait for the disk.
        end_byte -= end_byte % _WRITEBACK_ALIGN
        if self._defer:
            self._ready = max(self._ready, upto)
            if self._writeback and end_byte > self._synced:  # writeback only: no blocks
                self._futures.append(
                    self._pool.submit(self._job, self._next, self._next, self._synced, end_byte)
                )
                self._synced = end_byte
            return
        if upto > self._next or (self._writeback and end_byte > self._synced):
            self._futures.append(
                self._pool.submit(self._job, self._next, upto, self._synced, end_byte)
            )
            self._next = max(self._next, upto)
            self._synced = max(self._synced, end_byte)

    def _job(self, a: int, b: int, sync_from: int, sync_to: int) -> np.ndarray:
        fd, data_offset, row_nbytes = self._args
        br = self.block_rows
        which = np.arange(a, b, dtype=np.int64) if self._checksum else np.zeros(0, np.int64)
        out = sum_blocks(fd, data_offset, row_nbytes, b * br, br, which)
        if self._writeback:
            start_writeback(fd, sync_from, sync_to - sync_from)
        return out

    def finish(self) -> None:
        """The write is complete: with ``defer_sums``, start summing its whole blocks (two
        threads, each on one half); otherwise nothing (they were summed as it went)."""
        a, b = self._next, self._ready
        if not self._defer or b <= a:
            return
        mid = (a + b) // 2
        for lo, hi in ((a, mid), (mid, b)):
            if lo < hi:
                self._futures.append(self._pool.submit(self._job, lo, hi, 0, 0))
        self._next = b

    def result(self) -> WrittenSums | None:
        """Wait for the sums of every whole block written (None when not summing)."""
        try:
            crcs = [f.result() for f in self._futures]
        finally:
            self._pool.shutdown(wait=True)
        if not self._checksum:
            return None
        out = np.concatenate(crcs) if crcs else np.zeros(0, np.uint32)
        return WrittenSums(self.block_rows, np.arange(self._first, self._next, dtype=np.int64), out)

    def cancel(self) -> None:
        """The write failed: stop summing (waits for the block being summed)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def reuse_written_sums(
    plan: DataChecksums,
    todo: np.ndarray,
    ranges: Sequence[tuple[int, int]],
    written: Sequence[WrittenSums | None],
) -> np.ndarray:
    """Fill ``plan.blocks`` with the sums the writers computed; return the blocks still to sum.

    ``ranges[i]`` are the rows of the commit's record ``i`` and ``written[i]`` its sums. A
    writer's sum of a block is used only when no other record of the commit touches that
    block: a block written twice before a commit (two calls, two processes) is read back.
    """
    if not any(w is not None and len(w.blocks) for w in written):
        return todo
    br, nblocks = plan.block_rows, plan.nblocks
    pending = np.zeros(nblocks, bool)
    pending[todo] = True
    touch = np.zeros(nblocks + 1, np.int64)
    for start, stop in ranges:
        a, b = max(0, start // br), min(nblocks, -(-stop // br))
        if a < b:
            touch[a] += 1
            touch[b] -= 1
    alone = np.cumsum(touch)[:nblocks] == 1
    for w in written:
        if w is None or w.block_rows != br or not len(w.blocks):
            continue
        inside = (w.blocks >= 0) & ((w.blocks + 1) * br <= plan.rows)
        blocks, crcs = w.blocks[inside], w.crcs[inside]
        ok = alone[blocks] & pending[blocks]
        plan.blocks[blocks[ok]] = crcs[ok]
        pending[blocks[ok]] = False
    return np.flatnonzero(pending)


def dirty_blocks(ranges: Iterable[tuple[int, int]], block_rows: int, nblocks: int) -> np.ndarray:
    """Boolean mask of the blocks that the row ranges ``[start, stop)`` touch."""
    mask = np.zeros(nblocks, bool)
    for start, stop in ranges:
        if stop <= start:
            continue
        a = max(0, start // block_rows)
        b = min(nblocks, -(-stop // block_rows))
        if a < b:
            mask[a:b] = True
    return mask


def plan_commit(
    previous: Variable | None,
    new: Variable,
    ranges: Sequence[tuple[int, int]] | None,
) -> tuple[DataChecksums, np.ndarray]:
    """What a commit must sum: a :class:`DataChecksums` for ``new`` whose reusable block sums
    are filled in from ``previous``, and the indices of the blocks still to compute.

    ``ranges`` are the rows written since the previous commit (``None``: unknown, sum all).
    """
    block_rows = block_rows_for(new.row_nbytes)
    nblocks = -(-new.rows // block_rows)
    blocks = np.zeros(nblocks, np.uint32)
    todo = np.ones(nblocks, bool)
    prev = None
    if previous is not None and previous.checksums is not None and ranges is not None:
        try:
            prev = DataChecksums.from_json(previous.checksums, previous.name)
        except IntegrityError:
            prev = None
        if prev is not None and (
            prev.block_rows != block_rows
            or prev.rows != previous.rows
            or prev.rows > new.rows
            or prev.layout != layout_crc(previous)
        ):
            prev = None  # sums from another layout or a commit that did not update them
    if prev is not None and ranges is not None:
        blocks[: prev.nblocks] = prev.blocks
        todo = dirty_blocks(ranges, block_rows, nblocks)
        todo[prev.rows // block_rows :] = True  # the old partial last block and all new ones
    sums = DataChecksums(block_rows, new.rows, layout_crc(new), blocks, None)
    return sums, np.flatnonzero(todo)


def file_crc(path: str) -> int:
    """crc32 of a whole file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return crc_range(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def index_entry(store_dir: str, spec: IndexFiles, previous: Any = None) -> dict[str, Any]:
    """The ``index`` part of a variable's checksums for the index ``spec``.

    Runs are immutable: the sums of a run that ``previous`` (the entry recorded by the last
    commit) already holds are kept, so a commit sums only the files of its new run.
    """
    known = {int(r["generation"]): r["files"] for r in entry_runs(previous)}
    runs = []
    for run in spec.all_runs:
        files = known.get(run.generation)
        if files is None:
            files = {r: file_crc(os.path.join(store_dir, run.files[r])) for r in INDEX_ROLES}
        runs.append({"generation": run.generation, "files": dict(files)})
    if not spec.runs:
        return {"generation": spec.generation, "spec": spec_crc(spec), "files": runs[0]["files"]}
    return {"generation": spec.generation, "spec": spec_crc(spec), "runs": runs}


# --------------------------------------------------------------------------- verify
