"""The on-disk format (v1): manifest schema, dtype rules, ``.npy`` headers, safe paths.

A store is a directory::

    store.bigarray/
      manifest.json            the commit point: replaced atomically by every commit
      data.npy                 one variable's rows, a standard .npy (C order, little endian)
      index/g7-bounds.npy      a run of the segment index, written by commit 7
      index/g7-names.npy ...   (see :mod:`bigarray.core.index`; an index is one or more runs)
      journal/<session>/...    segments recorded by writer processes, merged at commit
      .lock                    flock target serialising allocation and commit

Everything a reader needs is in ``manifest.json`` (JSON, never pickle); everything big is a
``.npy`` file that ``numpy.load(path, mmap_mode="r")`` opens without bigarray. This module
only describes and validates; it does no I/O beyond the helpers for ``.npy`` headers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError, HostileInputError, SchemaError

FORMAT_NAME = "bigarray"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
JOURNAL_DIR = "journal"
INDEX_DIR = "index"
DEFAULT_VARIABLE = "data"
DEFAULT_ROW_DIM = "row"

#: dtype kinds a store may hold: plain numbers, bools, datetimes and fixed-width strings.
#: Objects and structured/void types are refused: they are either pickles or raw pointers.
ALLOWED_KINDS = frozenset("biufcmMSU")
_DTYPE_RE = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248]|c(8|16)|[mM]8(\[\d*[a-zA-Z]+\])?|[SU]\d+)$")
_MAX_NDIM = 32
_MAX_BYTES = 1 << 62
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
_NPY_MAGIC = b"\x93NUMPY"
_ROW_DIGITS = 20  # room in every header for any row count we can ever write in place


def normalize_dtype(dtype: Any) -> np.dtype:
    """Return ``dtype`` in the little-endian form a store keeps, or raise :class:`SchemaError`.

    Accepts anything ``numpy.dtype`` accepts that is a plain number, bool, datetime64,
    timedelta64 or fixed-width string; refuses objects, structured and void types.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise SchemaError(f"{dtype!r} is not a numpy dtype: {exc}") from None
    if dt.kind not in ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise SchemaError(
            f"dtype {dt!r} cannot be stored: bigarray keeps plain numeric, bool, datetime64, "
            "timedelta64 and fixed-width string ('S', 'U') data. Convert objects to fixed-width "
            "strings (e.g. arr.astype('U32')) and split structured arrays into variables."
        )
    if dt.itemsize == 0:
        raise SchemaError(f"dtype {dt!r} has zero width; give strings a length, e.g. 'U16'")
    return dt.newbyteorder("<") if dt.byteorder == ">" else dt


def dtype_from_manifest(text: Any, where: str) -> np.dtype:
    """Parse a dtype string read from a manifest, refusing anything but the allowed kinds."""
    if not isinstance(text, str) or not _DTYPE_RE.match(text):
        raise HostileInputError(
            f"{where}: dtype {text!r} is not a plain numeric, bool, datetime or fixed-width "
            "string type (expected something like '<f4', '<i8', '|b1', '<M8[ns]', '<U16')"
        )
    try:
        return normalize_dtype(text)
    except SchemaError as exc:  # '<U0', '<M8[xx]': the manifest is at fault, not user data
        raise HostileInputError(f"{where}: {exc}") from None


def dtype_to_str(dt: np.dtype) -> str:
    """The manifest spelling of a dtype (numpy's ``descr``, little endian)."""
    return str(np.lib.format.dtype_to_descr(normalize_dtype(dt)))


def _check_shape(shape: Any, where: str, itemsize: int) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= _MAX_NDIM:
        raise FormatError(f"{where}: shape {shape!r} must be a list of 1 to {_MAX_NDIM} sizes")
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise FormatError(f"{where}: shape {shape!r} holds {s!r}; sizes are ints >= 0")
        out.append(s)
    if math.prod(out) * itemsize > _MAX_BYTES:
        raise HostileInputError(f"{where}: shape {shape!r} needs more than 2**62 bytes")
    return tuple(out)


def check_relpath(path: Any, where: str) -> str:
    """Refuse any manifest path that could leave the store: absolute, ``..``, odd characters."""
    if (
        not isinstance(path, str)
        or len(path) > 1024  # file systems refuse longer paths (ENAMETOOLONG), names > 255
        or any(len(part) > 255 for part in path.split("/"))
        or not _SAFE_PATH_RE.match(path)
        or any(part in (".", "..") for part in path.split("/"))
    ):
        raise HostileInputError(
            f"{where}: file name {path!r} is not a plain relative path inside the store "
            "(no '..', no leading '/', only letters, digits, '_', '-', '.')"
        )
    return path


# --------------------------------------------------------------------------- manifest model


@dataclass(frozen=True)
class Shard:
    """One data file holding rows ``[start, stop)`` of a variable, at byte ``offset``."""

    path: str
    offset: int
    start: int
    stop: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "offset": self.offset, "start": self.start, "stop": self.stop}


@dataclass(frozen=True)
class Variable:
    """A named array in a store; its rows live in one or more shards (v1 writes one)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    shards: tuple[Shard, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)
    checksums: dict[str, Any] | None = None

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_nbytes(self) -> int:
        return int(self.dtype.itemsize * math.prod(self.shape[1:]))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dtype": dtype_to_str(self.dtype),
            "shape": list(self.shape),
            "dims": list(self.dims),
            "attrs": self.attrs,
            "encoding": self.encoding,
            "shards": [s.to_json() for s in self.shards],
        }
        if self.checksums is not None:
            out["checksums"] = self.checksums
        return out


@dataclass(frozen=True)
class IndexFiles:
    """Where the segment index lives (see :mod:`bigarray.core.index`).

    An index is one or more immutable **runs**; each run is five ``.npy`` files written by
    the commit of generation ``generation``. A single-run index is described by this object
    itself (``runs`` empty: the only form before multi-run indexes, still written whenever
    the index has one run, so older readers open compacted stores). A multi-run index has
    ``runs`` (oldest first), ``count`` (all segments), the ``generation`` of its newest run
    and no files of its own.
    """

    count: int
    generation: int
    table_size: int
    files: dict[str, str]  # role -> relative path of a .npy file
    offsets: dict[str, int]  # role -> byte offset of the array in that file
    runs: tuple[IndexFiles, ...] = ()

    @property
    def all_runs(self) -> tuple[IndexFiles, ...]:
        """The runs of this index, oldest first (the index itself when it has one run)."""
        return self.runs or (self,)

    def to_json(self) -> dict[str, Any]:
        if self.runs:
            return {
                "count": self.count,
                "generation": self.generation,
                "runs": [r.to_json() for r in self.runs],
            }
        return {
            "count": self.count,
            "generation": self.generation,
            "table_size": self.table_size,
            "hash": "crc32",
            "files": self.files,
            "offsets": self.offsets,
        }


def index_of_runs(runs: Sequence[IndexFiles]) -> IndexFiles:
    """The manifest entry of an index made of ``runs`` (oldest first)."""
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise ValueError("an index has at least one run")
    flat = tuple(r for run in runs for r in run.all_runs)
    return IndexFiles(sum(r.count for r in flat), max(r.generation for r in flat), 0, {}, {}, flat)


#: Most runs an index may list (a commit keeps about log4 of the segment count).
MAX_INDEX_RUNS = 256


INDEX_ROLES = ("names", "name_offsets", "bounds", "hashes", "table")


@dataclass(frozen=True)
class Manifest:
    """The whole description of a committed store."""

    generation: int
    variables: dict[str, Variable]
    segments: IndexFiles | None
    row_dim: str = DEFAULT_ROW_DIM
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "generation": self.generation,
            "row_dim": self.row_dim,
            "attrs": self.attrs,
            "variables": {k: v.to_json() for k, v in self.variables.items()},
            "segments": None if self.segments is None else self.segments.to_json(),
        }

    def dumps(self) -> bytes:
        """The manifest as JSON bytes; :class:`SchemaError` when attributes or encodings
        hold something JSON cannot spell (NaN, numpy scalars, arrays, bytes)."""
        try:
            return json.dumps(self.to_json(), indent=1, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:  # raised before the manifest is replaced
            raise SchemaError(
                f"the store's attributes or encoding cannot be written as JSON ({exc}): they "
                "may hold str, int, finite float, bool, None, and lists and dicts of those. "
                "Convert numpy scalars with .item() and arrays with .tolist()."
            ) from None

    @property
    def rows(self) -> int:
        """Rows along the shared row dimension (0 for a store with no row variable yet)."""
        for v in self.variables.values():
            if v.dims and v.dims[0] == self.row_dim:
                return v.rows
        return 0


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise FormatError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"{where}.{key}: {value!r} has type {type(value).__name__}")
    return value


def _nonneg_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FormatError(f"{where}: {value!r} must be an int >= 0")
    return value


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Parse and validate manifest bytes; raise a :class:`FormatError` subclass on anything odd.

    Validation is strict because a manifest may come from a stranger: every path stays
    inside the store, every dtype is a plain type, every size is a sane non-negative int.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{where}: manifest is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise FormatError(f'{where}: not a bigarray manifest (no "format": "bigarray")')
    version = doc.get("version")
    if version != FORMAT_VERSION:
        raise FormatError(
            f"{where}: format version {version!r}; this bigarray reads version {FORMAT_VERSION}. "
            "Upgrade bigarray to read newer stores."
        )
    generation = _nonneg_int(doc.get("generation"), f"{where}: generation")
    row_dim = _require(doc, "row_dim", str, where)
    attrs = _require(doc, "attrs", dict, where)
    variables: dict[str, Variable] = {}
    for name, spec in _require(doc, "variables", dict, where).items():
        w = f"{where}: variable {name!r}"
        if not isinstance(spec, dict):
            raise FormatError(f"{w} is not an object")
        dtype = dtype_from_manifest(spec.get("dtype"), w)
        shape = _check_shape(spec.get("shape"), w, dtype.itemsize)
        dims = _require(spec, "dims", list, w)
        if len(dims) != len(shape) or not all(isinstance(d, str) for d in dims):
            raise FormatError(f"{w}: dims {dims!r} must be {len(shape)} strings")
        shards = []
        for i, sh in enumerate(_require(spec, "shards", list, w)):
            ws = f"{w} shard {i}"
            if not isinstance(sh, dict):
                raise FormatError(f"{ws} is not an object")
            shard = Shard(
                path=check_relpath(sh.get("path"), ws),
                offset=_nonneg_int(sh.get("offset"), f"{ws} offset"),
                start=_nonneg_int(sh.get("start"), f"{ws} start"),
                stop=_nonneg_int(sh.get("stop"), f"{ws} stop"),
            )
            shards.append(shard)
        expected = 0
        for shard in sorted(shards, key=lambda s: s.start):
            if shard.start != expected or shard.stop < shard.start:
                raise FormatError(f"{w}: shards do not tile rows [0, {shape[0]}) ({shards!r})")
            expected = shard.stop
        if expected != shape[0] and not (not shards and shape[0] == 0):
            raise FormatError(f"{w}: shards cover {expected} rows but shape says {shape[0]}")
        checksums = spec.get("checksums")
        if checksums is not None and not isinstance(checksums, dict):
            raise FormatError(f"{w}: checksums must be an object")
        variables[name] = Variable(
            name=name,
            dtype=dtype,
            shape=shape,
            dims=tuple(dims),
            shards=tuple(sorted(shards, key=lambda s: s.start)),
            attrs=_require(spec, "attrs", dict, w),
            encoding=_require(spec, "encoding", dict, w),
            checksums=checksums,
        )
    segments = None
    seg = doc.get("segments")
    if seg is not None:
        w = f"{where}: segments"
        if isinstance(seg, dict) and "runs" in seg:
            runs = _require(seg, "runs", list, w)
            if not 2 <= len(runs) <= MAX_INDEX_RUNS:
                raise FormatError(f"{w}: {len(runs)} runs; expected 2 to {MAX_INDEX_RUNS}")
            parsed = tuple(_parse_run(r, f"{w} run {i}") for i, r in enumerate(runs))
            if len({r.generation for r in parsed}) != len(parsed):
                raise FormatError(f"{w}: two runs have the same generation (the same files)")
            count = _nonneg_int(seg.get("count"), f"{w} count")
            if count != sum(r.count for r in parsed):
                raise FormatError(f"{w}: count {count} is not the sum of its runs' counts")
            segments = IndexFiles(
                count, _nonneg_int(seg.get("generation"), f"{w} generation"), 0, {}, {}, parsed
            )
        else:
            segments = _parse_run(seg, w)
    return Manifest(generation, variables, segments, row_dim, attrs)


def _parse_run(seg: Any, w: str) -> IndexFiles:
    """One run of the segment index (the whole index when it has one run)."""
    files = _require(seg, "files", dict, w)
    offsets = _require(seg, "offsets", dict, w)
    if set(files) != set(INDEX_ROLES) or set(offsets) != set(INDEX_ROLES):
        raise FormatError(f"{w}: index files must be exactly {INDEX_ROLES}")
    if seg.get("hash") != "crc32":
        raise FormatError(f"{w}: unknown name hash {seg.get('hash')!r}")
    table_size = _nonneg_int(seg.get("table_size"), f"{w} table_size")
    if table_size & (table_size - 1) or table_size == 0:
        raise FormatError(f"{w}: table_size {table_size} must be a power of two")
    return IndexFiles(
        count=_nonneg_int(seg.get("count"), f"{w} count"),
        generation=_nonneg_int(seg.get("generation"), f"{w} generation"),
        table_size=table_size,
        files={r: check_relpath(files[r], f"{w} {r}") for r in INDEX_ROLES},
        offsets={r: _nonneg_int(offsets[r], f"{w} {r} offset") for r in INDEX_ROLES},
    )


# --------------------------------------------------------------------------- .npy headers


def npy_header(dtype: np.dtype, shape: Sequence[int]) -> bytes:
    """A version 1.0 ``.npy`` header for a C-order array, padded so that the row count can
    later be rewritten in place with any number of digits (the header length never changes).
    """
    descr = np.lib.format.dtype_to_descr(dtype)

    def text(rows: str) -> str:
        dims = [rows, *(str(int(s)) for s in shape[1:])]
        shape_txt = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
        return f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape_txt}, }}"

    longest = len(text("9" * _ROW_DIGITS))
    total = -(-(len(_NPY_MAGIC) + 4 + longest + 1) // 64) * 64
    body = text(str(int(shape[0])))
    pad = total - len(_NPY_MAGIC) - 4 - len(body) - 1
    header = body + " " * pad + "\n"
    return _NPY_MAGIC + b"\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1")


def save_npy(path: str, array: np.ndarray, *, fsync: bool) -> int:
    """Write ``array`` as a standard ``.npy`` file; return the byte offset of its data."""
    import os

    array = np.ascontiguousarray(array)
    header = npy_header(array.dtype, array.shape)
    with open(path, "wb") as f:
        f.write(header)
        f.write(as_bytes(array))
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return len(header)


def as_bytes(array: np.ndarray) -> memoryview:
    """A zero-copy byte view of a C-contiguous array of any allowed dtype.

    ``memoryview(array)`` refuses datetime64 and friends, so go through a ``uint8`` view.
    """
    if array.dtype.kind not in "mM":  # the common case: 5x cheaper than the uint8 view
        try:
            return byte_view(array).cast("B")
        except (TypeError, ValueError):
            pass
    return byte_view(array.reshape(-1).view(np.uint8))


def byte_view(array: np.ndarray) -> memoryview:
    """``memoryview(array)``: numpy arrays are buffers, though numpy's stubs for Python < 3.12
    do not say so (no ``__buffer__``), hence the one ignore here rather than at every use."""
    return memoryview(array)  # type: ignore[arg-type]


def manifest_objects(manifest: Manifest | None) -> set[str]:
    """Every file a manifest names (shards of every variable, index files)."""
    out: set[str] = set()
    if manifest is None:
        return out
    for var in manifest.variables.values():
        out.update(s.path for s in var.shards)
    if manifest.segments is not None:
        for run in manifest.segments.all_runs:
            out.update(run.files[r] for r in INDEX_ROLES)
    return out
