"""Read files written by the original 2020 ``bigarray`` (trungnt13/bigarray) in place.

On-disk format, confirmed from ``bigarray/mmap_array.py`` and ``bigarray/pointer_array.py`` of
github.com/trungnt13/bigarray (commits 1100e68 and ed8743f; the layout is the same in both)::

    offset 0   b"mmapdata"                    magic, 8 bytes
    offset 8   b"%8d" % len(meta)             8 ASCII bytes, decimal right-aligned with spaces,
                                              NOT binary; len(meta) <= 486 (_MAXIMUM_HEADER_SIZE)
    offset 16  meta = marshal.dumps([dtype, shape])
               dtype: str(np.dtype(d)) on creation ("float32", "<U5"), but dtype.name after a
                      resize ("float32", "str160": the original could not reopen the latter)
               shape: tuple of Python ints (rows first)
    zero padding up to the data offset
    offset O   C-order array bytes, O = ceil((8 + 8 + 486) / itemsize) * itemsize, i.e. the
               first multiple of the itemsize at or after byte 502, whatever len(meta) is
               (504 for float32/float64, 502 for bool/int16, 520 for "<U5")

A PointerArray file is the same, followed by what every ``flush()`` after a ``write()``
appends at the current end of the file::

    pickle.dumps(dict(name -> (start, stop)))     default protocol of the writer's Python
    len(pickle).to_bytes(8, "big")                8-byte big-endian unsigned length

The original reader takes the LAST 8 bytes as the length and unpickles the bytes just before
them. Several flushes (e.g. from several processes) append several (pickle, length) pairs, so
the pickle can sit anywhere after the data; only the last pair counts. Nothing in the header
says "pointer array": a file that ends exactly at the end of the data is a plain MmapArray.
(A pointer file whose writer died before flushing its index reads as a plain array.)
"""

from __future__ import annotations

import gc
import io
import itertools
import marshal
import os
import pickle
import re
import shlex
import stat
from collections.abc import ItemsView, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np

from bigarray.errors import (
    FormatError,
    HostileInputError,
    NotAStoreError,
    OverlapError,
    StoreCorruptedError,
    StoreNotFoundError,
)

__all__ = [
    "LegacyArray",
    "LegacyIndex",
    "LegacyStore",
    "check_legacy",
    "is_legacy_file",
    "read_legacy",
]

MAGIC = b"mmapdata"
_MAX_META = 486  # the original's _MAXIMUM_HEADER_SIZE
_HEADER_SPAN = len(MAGIC) + 8 + _MAX_META  # 502: data offsets are computed from this
_TRAILER = 8
CONVERT_CHUNK_BYTES = 64 << 20  # bound the memory of one write call during conversion
_MAX_NDIM = 64  # numpy's own limit (NPY_MAXDIMS in numpy 2)

# marshal type codes (CPython Python/marshal.c) that [dtype, shape] legitimately uses.
_FLAG_REF = 0x80
_SEQ = {ord("["): 4, ord("("): 4, ord(")"): 1}  # list, tuple, small tuple -> width of count
_STR = {ord("a"): 4, ord("A"): 4, ord("u"): 4, ord("t"): 4, ord("s"): 4, ord("z"): 1, ord("Z"): 1}
_INT, _LONG, _REF, _CODE = ord("i"), ord("l"), ord("r"), ord("c")
_FLEXIBLE_NAMES = {"str": ("U", 32), "bytes": ("S", 8), "void": ("V", 8)}


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise
class LegacyArray:
    """A legacy file opened read-only.

    Attributes
    ----------
    array : numpy.memmap
        The whole data region, read-only, with the file's dtype and shape.
    indices : dict of str to (int, int), or None
        ``name -> (start, stop)`` rows for a PointerArray file; ``None`` for a plain MmapArray.
    path : pathlib.Path
        The file that was read.
    """

    array: np.memmap
    indices: dict[str, tuple[int, int]] | None
    path: Path


def is_legacy_file(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a file starting with the legacy ``b"mmapdata"`` magic.

    Never raises: a missing, unreadable or foreign path gives ``False``.
    """
    try:
        with _open_regular(os.fspath(path)) as f:  # a FIFO must not hang the check
            return f.read(len(MAGIC)) == MAGIC
    except (OSError, TypeError, ValueError):  # NotAStoreError is a ValueError
        return False


def _corrupt(path: Path, what: str) -> NoReturn:
    raise StoreCorruptedError(
        f"legacy bigarray file {str(path)!r} is truncated or damaged: {what}; "
        "restore it from a backup or re-create it with the original writer"
    )


def _check_marshal(path: Path, meta: bytes) -> None:
    """Walk the marshal bytes and refuse anything but a list/tuple of str and ints.

    ``marshal`` is documented as unsafe on hostile data: it can build code objects (which a
    later careless call could run) and malformed streams have crashed the interpreter. So
    ``marshal.loads`` only ever sees a stream whose every type byte this walk has approved.
    """
    pos = 0
    kinds: list[str] = []  # kind of each FLAG_REF-registered object, for TYPE_REF checks

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(meta):
            _corrupt(path, f"the marshal header ends early (at byte {pos} of {len(meta)})")
        pos += n
        return meta[pos - n : pos]

    def walk(depth: int) -> str:
        code = take(1)[0]
        flagged, code = code & _FLAG_REF, code & ~_FLAG_REF
        if code == _CODE:
            raise HostileInputError(
                f"legacy file {str(path)!r} has a code object in its marshal header; a real "
                "bigarray file holds only [dtype, shape], so this file was crafted: refusing it"
            )
        if code == _REF:
            idx = int.from_bytes(take(4), "little")
            # Only leaves may be shared; a reference to a container could build a cycle.
            if idx >= len(kinds) or kinds[idx] == "seq":
                _corrupt(path, f"bad marshal back-reference {idx}")
            return kinds[idx]
        if code in _SEQ:
            kind = "seq"
        elif code in _STR:
            kind = "str"
        elif code in (_INT, _LONG):
            kind = "int"
        else:
            _corrupt(path, f"unexpected marshal type {chr(code)!r} in the [dtype, shape] header")
        if flagged:
            kinds.append(kind)
        if code in _SEQ:
            n = int.from_bytes(take(_SEQ[code]), "little")
            if depth >= 2 or n > _MAX_NDIM:
                _corrupt(path, "the marshal header is not [dtype, shape]")
            for _ in range(n):
                walk(depth + 1)
        elif code in _STR:
            take(int.from_bytes(take(_STR[code]), "little"))
        elif code == _INT:
            take(4)
        else:  # arbitrary-precision int in 15-bit digits; over 5 digits (75 bits) is no shape
            ndigits = abs(int.from_bytes(take(4), "little", signed=True))
            if ndigits > 5:
                _corrupt(path, f"shape value with {ndigits} marshal digits")
            take(2 * ndigits)
        return kind

    if walk(0) != "seq" or pos != len(meta):
        _corrupt(path, "the marshal header is not a [dtype, shape] list")


def _parse_dtype(path: Path, name: object) -> np.dtype[Any]:
    if isinstance(name, bytes):  # Python 2 marshal wrote str as bytes ("s"/"t")
        name = name.decode("ascii", "replace")
    if not isinstance(name, str):
        _corrupt(path, f"dtype is {name!r}, expected a string like 'float32'")
    # dtype.name of flexible types ("str160", "bytes40", "void32") counts bits; numpy rejects it.
    flexible = re.fullmatch(r"(str|bytes|void)(\d+)", name)
    if flexible:
        letter, bits_per_char = _FLEXIBLE_NAMES[flexible.group(1)]
        name = f"{letter}{int(flexible.group(2)) // bits_per_char}"
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        raise FormatError(
            f"legacy file {str(path)!r} has dtype {name!r}, which numpy does not know"
        ) from None
    if dtype.hasobject:  # object arrays hold raw pointers: mapping them from a file is unsafe
        raise HostileInputError(
            f"legacy file {str(path)!r} declares object dtype {name!r}: refusing it"
        )
    # The original wrote str(dtype), which numpy cannot parse back for structured types, so
    # no readable legacy file has one; sub-array dtypes would silently change the shape.
    if dtype.itemsize == 0 or dtype.subdtype is not None or dtype.names is not None:
        raise FormatError(f"legacy file {str(path)!r} has unsupported dtype {name!r}")
    return dtype


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler that can build only dict/list/tuple/str/bytes/int/float/bool/None.

    Those need no ``find_class``; everything that can call code (GLOBAL, STACK_GLOBAL, INST,
    OBJ, REDUCE on an imported callable, EXT* via the copyreg registry) must go through it.
    """

    def find_class(self, module: str, name: str) -> NoReturn:
        raise HostileInputError(
            f"the index of a legacy bigarray file asks to import {module}.{name}; a real index "
            "is a plain dict of name -> (start, stop), so this file was crafted: refusing it"
        )


def _load_index(path: Path, blob: bytes, nrows: int) -> dict[str, tuple[int, int]]:
    stream = io.BytesIO(blob)
    try:
        obj = _NoGlobalsUnpickler(stream).load()
    except HostileInputError:
        raise
    except Exception as exc:  # any other unpickling failure means damaged bytes
        _corrupt(path, f"the pickled index does not load ({type(exc).__name__}: {exc})")
    if stream.tell() != len(blob):
        _corrupt(path, "bytes follow the pickled index")
    if not isinstance(obj, dict):
        _corrupt(path, f"the pickled index is a {type(obj).__name__}, expected a dict")
    for name, span in obj.items():  # type() not isinstance(): bool and subclasses are refused
        if type(name) is str and type(span) is tuple and len(span) == 2:
            start, stop = span
            if type(start) is int and type(stop) is int and 0 <= start <= stop <= nrows:
                continue
        _corrupt(path, f"index entry {name!r}: {span!r} is not (start, stop) in [0, {nrows}]")
    return obj


def read_legacy(path: str | os.PathLike[str]) -> LegacyArray:
    """Open a file written by the original ``MmapArrayWriter`` or ``PointerArrayWriter``.

    Every size is checked against the file before mapping, so a damaged file raises
    instead of crashing the process with SIGBUS when a page past its end is touched.

    Parameters
    ----------
    path : str or os.PathLike
        The legacy file.

    Returns
    -------
    LegacyArray
        Read-only memmap of the data plus the segment index (``None`` for a plain array).

    Raises
    ------
    StoreNotFoundError
        ``path`` does not exist.
    NotAStoreError
        The file does not start with ``b"mmapdata"``.
    StoreCorruptedError
        The file is truncated or its header/index is damaged.
    HostileInputError
        The header holds a code object or object dtype, or the index pickle imports anything.
    FormatError
        The dtype is one numpy cannot map.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:  # one descriptor for checks and mapping
            return _read_open(path, f)
    except FileNotFoundError:
        raise StoreNotFoundError(f"no legacy bigarray file at {str(path)!r}") from None
    except IsADirectoryError:
        raise NotAStoreError(f"{str(path)!r} is a directory, not a legacy bigarray file") from None


@dataclass(frozen=True)
class _Layout:
    """Where everything lies in a legacy file (checked against its size)."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int  # first byte of the data
    size: int  # of the file
    blob: tuple[int, int] | None  # (first byte, length) of the last index pickle, or None


def _layout(path: Path, f: BinaryIO) -> _Layout:
    """Parse and check the header and trailer; read nothing past them."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(_HEADER_SPAN)
    if head[: len(MAGIC)] != MAGIC:
        if head and MAGIC.startswith(head):
            _corrupt(path, f"the file ends inside the magic, after {size} bytes")
        raise NotAStoreError(
            f"{str(path)!r} is not a legacy bigarray file: it does not start with {MAGIC!r}"
        )
    field = head[8:16]
    digits = field.lstrip(b" ")
    if len(field) < 8 or not digits.isdigit() or not 0 < int(digits) <= _MAX_META:
        _corrupt(path, f"header length field {field!r} is not 8 ASCII digits up to {_MAX_META}")
    meta = head[16 : 16 + int(digits)]
    if len(meta) < int(digits):
        _corrupt(path, f"the header needs {16 + int(digits)} bytes, the file has {size}")
    _check_marshal(path, meta)
    try:  # safe now: only lists, tuples, str and int inside; bad UTF-8 or digits still fail
        obj = marshal.loads(meta)
    except (ValueError, EOFError, TypeError) as exc:
        _corrupt(path, f"the marshal header does not load ({exc})")
    if len(obj) != 2 or not isinstance(obj[1], (tuple, list)) or not obj[1]:
        _corrupt(path, f"header {obj!r} is not [dtype, shape]")
    dtype = _parse_dtype(path, obj[0])
    shape = tuple(obj[1])
    if not all(type(d) is int and 0 <= d < 1 << 62 for d in shape):
        _corrupt(path, f"shape {shape!r} is not a tuple of non-negative ints")
    offset = -(-_HEADER_SPAN // dtype.itemsize) * dtype.itemsize
    data_end = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size < data_end:
        _corrupt(path, f"{dtype} {shape} needs {data_end} bytes, the file has {size}")
    blob = None
    if size > data_end:  # something was appended: the pointer index and its trailer
        if size - data_end < _TRAILER:
            _corrupt(path, f"{size - data_end} bytes after the data, too few for an index")
        f.seek(size - _TRAILER)
        blob_len = int.from_bytes(f.read(_TRAILER), "big")
        if blob_len > size - _TRAILER - data_end:
            _corrupt(
                path,
                f"the trailer says the index has {blob_len} bytes, "
                f"only {size - _TRAILER - data_end} follow the data",
            )
        blob = (size - _TRAILER - blob_len, blob_len)
    return _Layout(dtype, shape, offset, size, blob)


def _read_blob(path: Path, f: BinaryIO, layout: _Layout) -> bytes:
    assert layout.blob is not None
    f.seek(layout.blob[0])
    blob = f.read(layout.blob[1])
    if len(blob) != layout.blob[1]:
        _corrupt(path, "the file was shortened while its index was read")
    return blob


def _map(path: Path, f: BinaryIO, layout: _Layout) -> np.ndarray:
    """The data region, read-only (a plain zero-filled array when it holds no bytes:
    ``mmap`` refuses an empty mapping)."""
    if 0 in layout.shape:
        array = np.zeros(layout.shape, layout.dtype)
        array.flags.writeable = False
        return array
    try:
        return np.memmap(f, dtype=layout.dtype, mode="r", offset=layout.offset, shape=layout.shape)
    except (ValueError, OverflowError, OSError) as exc:
        _corrupt(path, f"cannot map {layout.dtype} {layout.shape} at offset {layout.offset}: {exc}")


def _read_open(path: Path, f: BinaryIO) -> LegacyArray:
    layout = _layout(path, f)
    indices = None
    if layout.blob is not None:
        indices = _load_index(path, _read_blob(path, f, layout), layout.shape[0])
    return LegacyArray(array=_map(path, f, layout), indices=indices, path=path)  # type: ignore[arg-type]


def legacy_runs(
    legacy: LegacyArray, indices: dict[str, tuple[int, int]]
) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Group segments, sorted by start, into runs of back-to-back rows (one write call each).

    A 1,000,000-segment file then costs a handful of writes instead of a million; runs are
    also cut at ``CONVERT_CHUNK_BYTES`` so one call never copies much more than that. The
    sorting and cutting is vectorised: a Python sort of a million items alone takes seconds.
    """
    n = len(indices)
    if n == 0:
        return []
    array = legacy.array.view(np.ndarray)  # plain views: slicing a memmap is ~10x slower
    row_nbytes = max(1, array.itemsize * int(np.prod(array.shape[1:], dtype=object)))
    bounds = np.fromiter(itertools.chain.from_iterable(indices.values()), np.int64, 2 * n)
    order = np.lexsort((bounds[1::2], bounds[0::2]))
    starts, stops = bounds[0::2][order], bounds[1::2][order]
    names = list(indices)
    # The original never checked overlaps; the new format refuses them (empty segments aside).
    covered = np.concatenate(([0], np.maximum.accumulate(stops)[:-1]))
    bad = np.flatnonzero((starts < covered) & (stops > starts))
    if bad.size:
        i = int(bad[0])
        j = int(np.argmax(stops[:i]))  # the segment reaching furthest: it contains starts[i]
        raise OverlapError(
            f"legacy file {str(legacy.path)!r}: segment {names[order[i]]!r} "
            f"{(int(starts[i]), int(stops[i]))} overlaps {names[order[j]]!r} "
            f"{(int(starts[j]), int(stops[j]))}; the new format needs disjoint segments, "
            "drop or fix one of them before converting"
        )
    cut = np.ones(n, dtype=bool)
    cut[1:] = starts[1:] != stops[:-1]  # a gap (or an empty segment inside another) ends a run
    run_start = starts[cut][np.cumsum(cut) - 1]
    chunk = (starts - run_start) * row_nbytes // CONVERT_CHUNK_BYTES
    cut[1:] |= chunk[1:] != chunk[:-1]
    edges = [*np.flatnonzero(cut).tolist(), n]
    sorted_names = [names[k] for k in order.tolist()]
    start_list, stop_list = starts.tolist(), stops.tolist()
    return [
        (
            start_list[a],
            {sorted_names[k]: array[start_list[k] : stop_list[k]] for k in range(a, b)},
        )
        for a, b in itertools.pairwise(edges)
    ]


# --------------------------------------------------------------------------- in place
def _unpickle_index(path: Path, blob: bytes) -> dict[str, tuple[int, int]]:
    """The index dict, through the restricted unpickler; entries are checked when used.

    The collector is paused meanwhile: a million fresh tuples would otherwise trigger a
    few hundred collections that find nothing to free.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        obj = _NoGlobalsUnpickler(io.BytesIO(blob)).load()
    except HostileInputError:
        raise
    except Exception as exc:  # any other unpickling failure means damaged bytes
        _corrupt(path, f"the pickled index does not load ({type(exc).__name__}: {exc})")
    finally:
        if paused:
            gc.enable()
    if type(obj) is not dict:
        _corrupt(path, f"the pickled index is a {type(obj).__name__}, expected a dict")
    return obj


class LegacyIndex(Mapping[str, tuple[int, int]]):
    """The segment index of a 2020 file, read in place: ``name -> (start, stop)``.

    Offers what :class:`~bigarray.core.index.SegmentIndex` offers. A lookup is a dict lookup
    whose entry is checked when it is read, so opening a file and reading one segment costs
    one (restricted) unpickling; the row-ordered arrays (``arrays``, ``starts``, ``find``,
    iteration) are built and every entry checked on first use. Iteration is in row order,
    as for a store.
    """

    def __init__(self, table: dict[str, tuple[int, int]], rows: int, where: str) -> None:
        self._table = table
        self._rows = rows
        self._where = where
        self._arrays: Any = None
        self._positions: dict[str, int] | None = None

    def _bad(self, name: object, span: object) -> NoReturn:
        _corrupt(
            Path(self._where),
            f"index entry {name!r}: {span!r} is not (start, stop) in [0, {self._rows}]",
        )

    def __getitem__(self, name: str) -> tuple[int, int]:
        try:
            span = self._table[name]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            from bigarray.errors import SegmentNotFoundError

            raise SegmentNotFoundError(self._missing(name)) from None
        if type(span) is tuple and len(span) == 2:
            start, stop = span
            if type(start) is int and type(stop) is int and 0 <= start <= stop <= self._rows:
                return span
        self._bad(name, span)

    def _missing(self, name: object) -> str:
        if not isinstance(name, str):
            return f"segment names are str; got {name!r} of type {type(name).__name__}"
        first = next(iter(self._table), None)
        hint = f" (the first is {first!r})" if first is not None else ""
        return f"no segment named {name!r} among {len(self._table):,} segments{hint}"

    def __contains__(self, name: object) -> bool:
        try:
            return isinstance(name, str) and name in self._table
        except TypeError:
            return False

    def __len__(self) -> int:
        return len(self._table)

    @property
    def arrays(self) -> Any:
        """The index as :class:`~bigarray.core.index.SegmentArrays` in row order (sorted by
        start, then stop); every entry is checked here."""
        if self._arrays is None:
            from bigarray.core.index import SegmentArrays

            names = list(self._table)
            spans = list(self._table.values())
            for name, span in zip(names, spans, strict=True):
                if type(name) is not str or type(span) is not tuple or len(span) != 2:
                    self._bad(name, span)
            flat = list(itertools.chain.from_iterable(spans))
            if not all(type(v) is int for v in flat):
                i = next(k for k, v in enumerate(flat) if type(v) is not int) // 2
                self._bad(names[i], spans[i])
            try:
                bounds = np.array(flat, np.int64).reshape(-1, 2)
            except OverflowError:
                i = next(k for k, v in enumerate(flat) if not -(1 << 63) <= v < 1 << 63) // 2
                self._bad(names[i], spans[i])
            bad = np.flatnonzero(
                (bounds[:, 0] < 0) | (bounds[:, 0] > bounds[:, 1]) | (bounds[:, 1] > self._rows)
            )
            if bad.size:
                i = int(bad[0])
                self._bad(names[i], spans[i])
            order = np.lexsort((bounds[:, 1], bounds[:, 0]))
            seg = SegmentArrays.from_names(names, bounds[:, 0], bounds[:, 1])
            if len(order) and bool(np.any(order[1:] < order[:-1])):
                seg = seg.take(order)
            self._arrays = seg
        return self._arrays

    @property
    def bounds(self) -> np.ndarray:
        """``(n, 2)`` ``[start, stop)`` of every segment in row order."""
        return self.arrays.bounds

    @property
    def starts(self) -> np.ndarray:
        return self.arrays.bounds[:, 0]

    @property
    def stops(self) -> np.ndarray:
        return self.arrays.bounds[:, 1]

    def names_list(self) -> list[str]:
        """Names in row order."""
        a = self.arrays
        raw = a.names.tobytes()
        offs = a.name_offsets.tolist()
        return [
            raw[offs[i] : offs[i + 1]].decode("utf-8", "surrogatepass")
            for i in range(len(offs) - 1)
        ]

    def find(self, name: str) -> int:
        """Position (in row order) of segment ``name``, or -1."""
        if self._positions is None:
            self._positions = {n: i for i, n in enumerate(self.names_list())}
        try:
            return self._positions.get(name, -1)
        except TypeError:
            return -1

    def __iter__(self) -> Iterator[str]:
        return iter(self.names_list())

    def items(self) -> ItemsView[str, tuple[int, int]]:
        """Pairs ``(name, (start, stop))`` in row order: a reusable view, like ``dict.items()``."""
        return _LegacyItems(self)

    def release(self) -> None:
        """Nothing to release: the index lives in memory."""

    def __repr__(self) -> str:
        return f"<LegacyIndex {len(self):,} segments of {self._where!r}>"


class _LegacyItems(ItemsView[str, tuple[int, int]]):
    _mapping: LegacyIndex

    def __iter__(self) -> Iterator[tuple[str, tuple[int, int]]]:
        bounds = self._mapping.arrays.bounds.tolist()
        return zip(self._mapping.names_list(), map(tuple, bounds))


def _open_regular(path: str) -> BinaryIO:
    """Open ``path`` for reading without blocking on a FIFO; refuse anything but a file."""
    f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))  # noqa: SIM115
    try:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise NotAStoreError(f"{path!r} is not a regular file, not a legacy bigarray file")
        return f
    except BaseException:
        f.close()
        raise


def convert_hint(path: str | os.PathLike[str]) -> str:
    """The ``bigarray convert`` command line that turns the 2020 file ``path`` into a store."""
    src = os.fspath(path)
    stem, ext = os.path.splitext(src)
    dst = (stem if ext and os.path.basename(stem) else src) + ".bigarray"
    return f"bigarray convert {shlex.quote(src)} {shlex.quote(dst)}"


class LegacyStore:
    """A 2020 file opened read-only in place, with the interface of :class:`~bigarray.core.store.Store`.

    One variable, ``data``, whose single shard is the data region of the file, memory-mapped
    where it lies; the segment index (a PointerArray file) through the restricted unpickler,
    never ``pickle.load``. Generation 0 and no checksums: ``bigarray convert`` makes a store.

    Parameters
    ----------
    path
        The file.
    with_index
        Read the segment index now (otherwise on first use of ``index`` or ``manifest``).
    """

    is_remote = False
    is_legacy = True
    storage_options: dict[str, Any] | None = None

    def __init__(self, path: str | os.PathLike[str], *, with_index: bool = True) -> None:
        from bigarray.core.format import DEFAULT_ROW_DIM, DEFAULT_VARIABLE, Shard, Variable

        self.path = os.fspath(path)
        where = Path(self.path)
        try:
            f = _open_regular(self.path)
        except FileNotFoundError:
            raise StoreNotFoundError(f"no legacy bigarray file at {self.path!r}") from None
        with f:
            self._layout = layout = _layout(where, f)
            self._data = _map(where, f, layout)
            blob = _read_blob(where, f, layout) if with_index and layout.blob else None
        self._index: LegacyIndex | None = None
        if blob is not None:
            self._index = LegacyIndex(_unpickle_index(where, blob), layout.shape[0], self.path)
        ndim = len(layout.shape)
        # The shard path is absolute: os.path.join(store.path, shard.path) and
        # resolve_inside(store.path, shard.path), which readers use, give the file itself.
        shard = Shard(os.path.abspath(self.path), layout.offset, 0, layout.shape[0])
        self._variable = Variable(
            DEFAULT_VARIABLE,
            layout.dtype,
            layout.shape,
            (DEFAULT_ROW_DIM, *[f"dim_{i}" for i in range(1, ndim)]),
            (shard,),
        )
        self._manifest: Any = None

    @property
    def named(self) -> bool:
        """Whether the file holds a segment index (a PointerArray file)."""
        return self._layout.blob is not None

    @property
    def index(self) -> LegacyIndex | None:
        """The segment index (``None`` for an MmapArray file)."""
        if self._index is None and self._layout.blob is not None:
            where = Path(self.path)
            with _open_regular(self.path) as f:
                if _layout(where, f) != self._layout:
                    _corrupt(where, "it changed while it was open")
                blob = _read_blob(where, f, self._layout)
            self._index = LegacyIndex(
                _unpickle_index(where, blob), self._layout.shape[0], self.path
            )
        return self._index

    @property
    def manifest(self) -> Any:
        """A :class:`~bigarray.core.format.Manifest` describing the file (generation 0)."""
        if self._manifest is None:
            from bigarray.core.format import INDEX_ROLES, IndexFiles, Manifest

            index = self.index
            segments = None
            if index is not None:
                segments = IndexFiles(len(index), 0, 0, {}, dict.fromkeys(INDEX_ROLES, 0))
            self._manifest = Manifest(0, {self._variable.name: self._variable}, segments)
        return self._manifest

    def variable(self, name: str | None = None) -> Any:
        """The one variable, ``data`` (``name`` may be ``None`` or ``"data"``)."""
        if name is not None and name != self._variable.name:
            from bigarray.errors import VariableNotFoundError

            raise VariableNotFoundError(
                f"{self.path!r} is a 2020 bigarray file with one variable, 'data'; got "
                f"variable={name!r}"
            )
        return self._variable

    def shard_views(self, var: Any) -> list[np.ndarray]:
        """The data region, memory-mapped read-only where it lies in the file."""
        return [self._data]

    def read_rows(self, name: str | None, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` (a view of the map)."""
        self.variable(name)
        return np.asarray(self._data[max(int(start), 0) : max(int(stop), 0)])

    def read_ranges(self, name: str | None, ranges: Any) -> list[np.ndarray]:
        """Rows ``[start, stop)`` of each range (views of the map)."""
        return [self.read_rows(name, int(a), int(b)) for a, b in ranges]

    def describe(self, name: str | None = None) -> str:
        """One line: what the file is and how to convert it (``name``: the path as the user
        gave it, for the command line shown)."""
        kind = "segments" if self.named else "rows, no segment names"
        count = len(self.index) if self.named else self._layout.shape[0]  # type: ignore[arg-type]
        shape = "(" + ", ".join(f"{d:,}" for d in self._layout.shape) + ")"
        return (
            f"bigarray 2020 file: {count:,} {kind}, {self._layout.dtype} {shape}; convert it "
            f"with `{convert_hint(name or self.path)}` to write to it or to get checksums"
        )

    def fingerprint(self) -> tuple[Any, ...]:
        """Identity of the file read: path, inode, size and mtime (a 2020 file has no
        commits; one rewritten in place is another file)."""
        try:
            st = os.stat(self.path)
            return (self.path, 0, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            return (self.path, 0, -1, -1, -1)

    def close(self) -> None:
        """Drop the index (views handed out keep the data map alive)."""
        self._index = None
        self._manifest = None

    def __enter__(self) -> LegacyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LegacyStore({self.path!r})"


def check_legacy(path: str | os.PathLike[str]) -> tuple[bool, list[str]]:
    """Check what a 2020 file allows: header, sizes, every index entry (no checksums exist).

    Returns ``(ok, lines)``: the description of the file first, then any problem found.
    """
    lines: list[str] = []
    try:
        store = LegacyStore(path)
        lines.append(store.describe(os.fspath(path)))
        index = store.index
        if index is not None:
            bounds = index.arrays.bounds
            if len(bounds):
                reach = np.maximum.accumulate(bounds[:, 1])[:-1]
                overlaps = int(
                    np.count_nonzero((bounds[1:, 0] < reach) & (bounds[1:, 1] > bounds[1:, 0]))
                )
                if overlaps:
                    lines.append(
                        f"note: {overlaps:,} segment(s) share rows with another one (the 2020 "
                        "writer allowed it; `bigarray convert` refuses it)"
                    )
    except (StoreCorruptedError, HostileInputError, FormatError, NotAStoreError) as exc:
        lines.append(f"FAILED: {exc}")
        return False, lines
    lines.append("no checksums to verify in this format: every size and index entry is sound")
    return True, lines
