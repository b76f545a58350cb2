"""How a Dataset maps onto a store: names, dims, scalars, the segment table, attributes as JSON.

Shared by the engine (:mod:`bigarray.xarray_backend`, reading) and the Dataset writer
(:mod:`bigarray.xarray_store`); it knows xarray's data model and the manifest, never how
rows are read or written.

- Every variable is a manifest variable of the same name, dims, dtype and attributes. A
  0-d variable is stored as one row along :data:`SCALAR_DIM` (``"bigarray": {"scalar":
  true}`` in its manifest encoding).
- The segment table is three variables along :data:`SEGMENT_DIM` (:data:`SEGMENT_VARS`):
  the names, ``segment_start`` and ``segment_stop`` (half-open rows); written, it becomes
  the store's segment index; read, the index becomes it again.
- Attributes (and encodings recorded by older writers) are JSON in the manifest: numpy
  arrays, non-finite floats and bytes in tagged objects (:func:`encode_json`), never pickles.
- Names and dims must be non-empty ``str`` (xarray's engines refuse the same).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends.common import NONE_VAR_NAME

from .core.format import DEFAULT_ROW_DIM, Manifest, Variable, dtype_from_manifest, normalize_dtype
from .core.rowcheck import check_fits, narrowing_ints
from .errors import SchemaError, StoreCorruptedError

__all__ = [
    "DECODING_ATTRS",
    "ROLE_COORD",
    "ROLE_DATA",
    "SCALAR_DIM",
    "SEGMENT_DIM",
    "SEGMENT_START",
    "SEGMENT_STOP",
    "SEGMENT_VARS",
    "EncodedVariable",
    "EncodingError",
    "InvalidNameError",
    "check_append_attrs",
    "check_append_dtype",
    "check_appendable",
    "check_cast_values",
    "check_dim",
    "check_name",
    "check_sizes",
    "check_unchanged",
    "decode_json",
    "decode_variable",
    "default_row_dim",
    "encode_json",
    "is_coordinate",
    "json_attrs",
    "segment_arrays",
    "segment_table_of",
    "store_sizes",
]

SEGMENT_DIM = "segment"
SEGMENT_START = "segment_start"
SEGMENT_STOP = "segment_stop"
SEGMENT_VARS = (SEGMENT_DIM, SEGMENT_START, SEGMENT_STOP)
#: The dim of the one row a 0-d variable is stored as.
SCALAR_DIM = "_bigarray_scalar"
#: ``"bigarray": {"role": ...}`` in a manifest encoding (written by older writers).
ROLE_COORD = "coordinate"
ROLE_DATA = "data"


class InvalidNameError(SchemaError, TypeError):
    """A variable name that is neither a str nor None (xarray's engines raise TypeError)."""


class EncodingError(SchemaError, TypeError):
    """xarray's CF encoders refused a variable (a ``ValueError`` and a ``TypeError``, the
    two types they raise)."""


# =============================================================================== names


def check_name(name: Hashable) -> str:
    """The stored name of a variable named ``name`` (``None``: xarray's unnamed spelling)."""
    if name is None:
        return NONE_VAR_NAME  # xarray's own spelling of an unnamed variable
    if not isinstance(name, str):
        raise InvalidNameError(
            f"Invalid name {name!r} for DataArray or Dataset key: must be either a string or "
            "None to be stored; rename it (ds.rename({old: 'new'}))"
        )
    if not name:
        raise SchemaError(
            f"Invalid name {name!r} for DataArray or Dataset key: string must be length 1 or "
            "greater to be stored; rename it"
        )
    return name


def check_dim(d: Hashable, name: str) -> str:
    """A dim of variable ``name`` as stored (a ``str``)."""
    if not isinstance(d, str):
        raise SchemaError(f"variable {name!r}: dim names must be str to be stored; got {d!r}")
    return d


# =============================================================================== attributes as JSON


def encode_json(value: Any, where: str) -> Any:
    """An attribute or encoding value as JSON (numpy arrays, NaN and bytes in tagged objects)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.generic):
        return int(value)
    if isinstance(value, float):  # np.float64 too: its repr is not JSON's
        value = float(value)
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        try:
            dt = normalize_dtype(arr.dtype)
        except SchemaError:
            if arr.dtype.kind == "O":
                return (
                    encode_json(arr.tolist(), where) if arr.ndim else encode_json(arr.item(), where)
                )
            raise
        data = np.ascontiguousarray(arr, dt)
        return {
            "$ndarray": {
                "dtype": np.lib.format.dtype_to_descr(dt),
                "shape": list(arr.shape),
                "scalar": isinstance(value, np.generic),
                "b64": base64.b64encode(data.tobytes()).decode("ascii"),
            }
        }
    if isinstance(value, (list, tuple)):
        return [encode_json(v, where) for v in value]
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise SchemaError(f"{where}: dict keys must be str, got {bad[0]!r}")
        out = {k: encode_json(v, where) for k, v in value.items()}
        return {"$dict": out} if any(k.startswith("$") for k in value) else out
    raise SchemaError(
        f"{where}: {value!r} of type {type(value).__name__} cannot be stored in a manifest; "
        "attributes may be str, numbers, bools, None, bytes, numpy arrays/scalars, lists and "
        "dicts of those"
    )


def decode_json(value: Any) -> Any:
    """Inverse of :func:`encode_json`."""
    if isinstance(value, list):
        return [decode_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "$float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "$bytes" and isinstance(body, str):
            return base64.b64decode(body)
        if tag == "$dict" and isinstance(body, dict):
            return {k: decode_json(v) for k, v in body.items()}
        if tag == "$ndarray" and isinstance(body, dict):
            dt = dtype_from_manifest(body.get("dtype"), "attribute")
            shape = tuple(int(s) for s in body.get("shape", ()))
            raw = base64.b64decode(body.get("b64", ""))
            if len(raw) != dt.itemsize * math.prod(shape):
                raise StoreCorruptedError(
                    f"attribute array of shape {shape} {dt} has {len(raw)} bytes"
                )
            arr = np.frombuffer(raw, dt).reshape(shape).copy()
            return arr[()] if body.get("scalar") else arr
    return {k: decode_json(v) for k, v in value.items()}


def json_attrs(attrs: Mapping[Hashable, Any], where: str) -> dict[str, Any]:
    """Attributes as manifest JSON (:func:`encode_json` of each value; names must be str)."""
    out = {}
    for k, v in attrs.items():
        if not isinstance(k, str):
            raise SchemaError(f"{where} names must be str, got {k!r}")
        out[k] = encode_json(v, f"{where} {k!r}")
    return out


# =============================================================================== variables


class EncodedVariable:
    """One variable after xarray's CF encoders, as the store will hold it.

    ``data`` is a numpy or dask array (``None`` once nothing is left to write); a 0-d
    variable has ``dims == (SCALAR_DIM,)`` and ``shape == (1,)``.
    """

    __slots__ = ("attrs", "data", "dims", "is_dask", "name", "scalar", "shape")

    def __init__(
        self,
        name: str,
        data: Any,
        dims: tuple[str, ...],
        attrs: dict[str, Any],
        scalar: bool,
        is_dask: bool,
    ) -> None:
        self.name, self.data, self.dims, self.attrs = name, data, dims, attrs
        self.scalar, self.is_dask = scalar, is_dask
        self.shape = (1,) if scalar else tuple(int(s) for s in data.shape)

    @property
    def dtype(self) -> np.dtype:
        return normalize_dtype(self.data.dtype)

    def meta(self) -> dict[str, Any]:
        """The variable's manifest ``encoding``."""
        return {"bigarray": {"scalar": True}} if self.scalar else {}


def decode_variable(var: Variable) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(attrs, encoding, meta)`` of a manifest variable as xarray sees it: attributes
    decoded from JSON, the encoding older writers recorded, and the ``"bigarray"`` part of
    its manifest encoding (``{"scalar": True}``, ``{"role": ...}``)."""
    enc = dict(var.encoding)
    meta = enc.pop("bigarray", {}) if isinstance(enc.get("bigarray"), dict) else {}
    # Stores written before the CF encoders were used kept the Dataset's encoding here;
    # xarray's decoders set dtype and _FillValue themselves, so those are left out.
    encoding = (
        {
            k: decode_json(v)
            for k, v in enc.get("xarray", {}).items()
            if v is not None and k not in ("dtype", "_FillValue")
        }
        if isinstance(enc.get("xarray"), dict)
        else {}
    )
    attrs = {k: decode_json(v) for k, v in var.attrs.items()}
    return attrs, encoding, meta


def is_coordinate(var: Variable) -> bool:
    """Whether an older writer recorded ``var`` as a coordinate (``"role"``)."""
    meta = var.encoding.get("bigarray")
    return isinstance(meta, dict) and meta.get("role") == ROLE_COORD


def default_row_dim(variables: list[EncodedVariable]) -> str:
    """The row dim of a new store: ``"row"`` if some variable has it, else the first dim."""
    dims = [p.dims[0] for p in variables if p.dims and p.dims[0] != SCALAR_DIM]
    if DEFAULT_ROW_DIM in {d for p in variables for d in p.dims}:
        return DEFAULT_ROW_DIM
    return dims[0] if dims else DEFAULT_ROW_DIM


# =============================================================================== appends


def store_sizes(m: Manifest) -> dict[str, int]:
    """The length of every dim of the store (the scalar dim left out)."""
    sizes: dict[str, int] = {}
    for v in m.variables.values():
        for d, n in zip(v.dims, v.shape):
            if d != SCALAR_DIM:
                sizes[d] = n
    return sizes


def check_sizes(p: EncodedVariable, sizes: Mapping[str, int]) -> None:
    """Refuse a variable whose dims disagree with the store's lengths."""
    if p.scalar:
        return
    for d, n in zip(p.dims, p.shape):
        if d in sizes and sizes[d] != n:
            raise SchemaError(
                f"Unable to update size for existing dimension {d!r} ({n} != {sizes[d]}): "
                f"variable {p.name!r} does not fit the store. Select the store's {sizes[d]} "
                f"items along {d!r}, or append rows with append_dim"
            )


def check_appendable(p: EncodedVariable, old: Variable, path: str) -> None:
    """Refuse rows that do not fit the store's variable ``old``; cast narrower text."""
    if p.dims != old.dims:
        raise SchemaError(
            f"variable {p.name!r} has dims {p.dims} but the store at {path!r} holds {old.dims}"
        )
    if p.shape[1:] != old.shape[1:]:
        raise SchemaError(
            f"variable {p.name!r} has rows of shape {p.shape[1:]} but the store holds rows of "
            f"shape {old.shape[1:]}; appended rows must keep their shape"
        )
    dt = p.dtype
    if dt != old.dtype:
        same_text = (
            dt.kind == old.dtype.kind and dt.kind in "SU" and dt.itemsize <= old.dtype.itemsize
        )
        if not same_text:
            raise SchemaError(
                f"variable {p.name!r} is {dt} but the store holds {old.dtype}; appended rows must "
                f"have the store's dtype (cast with .astype({str(old.dtype)!r}))"
            )
        p.data = p.data.astype(old.dtype)


#: Attributes that decide how stored values decode: an append must leave them as committed.
DECODING_ATTRS = (
    "units",
    "calendar",
    "scale_factor",
    "add_offset",
    "_FillValue",
    "missing_value",
    "_Unsigned",
    "_Encoding",
    "dtype",
)
#: Of those, the ones a user sets as plain attributes (and xarray operations drop): an
#: appended variable without them takes the committed ones.
_PLAIN_DECODING_ATTRS = ("units", "calendar")


def _same_json(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:  # a number stored as a numpy scalar and as a Python number
        x, y = np.asarray(decode_json(a)), np.asarray(decode_json(b))
        return x.dtype.kind in "biufc" and y.dtype.kind in "biufc" and _array_equal(x, y)
    except (TypeError, ValueError):
        return False


def _array_equal(x: np.ndarray, y: np.ndarray) -> bool:
    try:
        return bool(np.array_equal(x, y, equal_nan=True))
    except TypeError:
        return bool(np.array_equal(x, y))


def check_append_attrs(p: EncodedVariable, old: Variable, path: str) -> dict[str, Any]:
    """The attributes of ``old`` after rows of ``p`` are appended to it: the committed
    ones, unchanged (as xarray's zarr engine keeps an existing variable's attributes).

    An attribute that decides how the stored values decode (:data:`DECODING_ATTRS`) must
    be what the store holds: a ``units`` that differs would reinterpret every committed
    row, so it is refused (a ``units``/``calendar`` the appended variable lacks is taken
    from the store). Other attributes of the appended variable are not written."""
    for k in DECODING_ATTRS:
        new, held = p.attrs.get(k), old.attrs.get(k)
        if k not in p.attrs and k in _PLAIN_DECODING_ATTRS:
            continue
        if (k in p.attrs) != (k in old.attrs) or not _same_json(new, held):
            was = f"{decode_json(held)!r}" if k in old.attrs else "no such attribute"
            now = f"{decode_json(new)!r}" if k in p.attrs else "none"
            raise SchemaError(
                f"variable {p.name!r}: the store at {path!r} holds it with {k}={was} but the "
                f"appended values would be stored with {k}={now}; that attribute decides how "
                "every stored value decodes, so changing it would reinterpret the committed "
                "rows. Append values that the store's encoding can hold (convert them to the "
                "store's units/dtype first), or write a new store with mode='w'"
            )
    return dict(old.attrs)


def check_append_dtype(name: str, new: np.dtype, held: np.dtype, path: str) -> None:
    """Refuse appending values of dtype ``new`` to a variable that decodes to ``held``
    when the cast would lose information (the core writer's rules: ``same_kind`` casts,
    no numbers into bools, no complex into floats, no floats into integers, times only
    into times of the same kind, no text into numbers)."""
    if new == held:
        return
    times = "mM"
    numbers = "biufc"
    texts = "SUT"
    bad = False
    if new.kind in times or held.kind in times:
        bad = new.kind != held.kind
    elif new.kind in numbers and held.kind in numbers:
        bad = not np.can_cast(new, held, "same_kind")
    elif (new.kind in texts and held.kind in numbers) or (
        new.kind in numbers and held.kind in texts
    ):
        bad = True
    if bad:
        raise SchemaError(
            f"variable {name!r} is {new} but the store at {path!r} holds {held} values; "
            f"appending {new} to it would lose information or change its meaning. Convert "
            f"the values first (.astype({str(held)!r}) where that is exact) or write a new "
            "store with mode='w'"
        )


def check_cast_values(
    name: str, data: np.ndarray, dtype: np.dtype, rounds: bool, where: str
) -> None:
    """Refuse encoded values of ``name`` that ``dtype`` cannot hold (``where`` says whose
    dtype it is, e.g. "the store at '...'"): NaN/inf or fractions into integers
    (``rounds``: packed or CF-time values, which are rounded by design), integers that do
    not fit (never wrapped)."""
    src = data.dtype
    if dtype.kind in "iu" and src.kind in "fc":
        if not np.isfinite(data).all():
            raise SchemaError(
                f"variable {name!r}: the values hold NaN or inf, which the {dtype} integers "
                f"of {where} cannot hold (no _FillValue for them); fill or drop them first "
                "(ds.fillna(...)/ds.dropna(...))"
            )
        if not rounds and not np.array_equal(np.round(data), data):
            raise SchemaError(
                f"variable {name!r}: the values have fractions but {where} holds {dtype} "
                "integers; storing them would round them. Round them yourself first, or "
                "write a new store with mode='w'"
            )
        ints = np.round(data.real)
        if ints.size:
            lo, hi = ints.min(), ints.max()
            info = np.iinfo(dtype)
            if lo < info.min or hi > info.max:
                bad = int(hi if hi > info.max else lo)
                raise SchemaError(
                    f"variable {name!r}: the values reach {bad}, which does not fit the "
                    f"{dtype} (values {info.min}..{info.max}) of {where}; storing it would "
                    "wrap. Clip the values first or write a new store with mode='w'"
                )
    elif narrowing_ints(src, dtype):
        if rounds and src == np.int64 and data.size and data.min() == np.iinfo(np.int64).min:
            raise SchemaError(
                f"variable {name!r}: the values hold NaT, which the {dtype} integers of "
                f"{where} cannot hold (no _FillValue for them); drop or fill them first"
            )
        try:
            check_fits(np.asarray(data), dtype, 0)
        except SchemaError as e:
            raise SchemaError(f"variable {name!r} ({where}): {e}") from None


def check_unchanged(p: EncodedVariable, old: Variable, store: Any) -> None:
    """A variable already in the store, written again without append_dim: it must be the
    same (the coordinates of every Dataset appended variable by variable); committed values
    are never rewritten. ``store`` is the open :class:`~bigarray.core.store.Store`."""
    shape = (1,) if p.scalar else p.shape
    same = p.dims == old.dims and shape == old.shape
    if same:
        held = np.asarray(store.read_rows(old.name, 0, old.rows)).reshape(shape)
        new = np.asarray(p.data).reshape(shape)
        try:
            same = bool(np.array_equal(held, new, equal_nan=new.dtype.kind in "fc"))
        except TypeError:
            same = bool(np.array_equal(held, new))
    if not same:
        raise SchemaError(
            f"variable {p.name!r} is already in the store with other values (or shape); "
            "mode='a' appends rows (append_dim=...) and adds variables, it never rewrites "
            "committed values. Write a new store with mode='w' to change it"
        )
    p.data = None  # nothing to write


# =============================================================================== segments


def segment_table_of(ds: xr.Dataset) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """``(names, starts, stops)`` of the Dataset's segment table, or ``None`` without one."""
    present = [n for n in SEGMENT_VARS if n in ds.variables]
    if not present:
        return None
    if len(present) != 3:
        missing = sorted(set(SEGMENT_VARS) - set(present))
        raise SchemaError(
            f"the Dataset has {present} but not {missing}; a segment table needs all of "
            f"{list(SEGMENT_VARS)} along dim {SEGMENT_DIM!r}. Add them, pass segments=..., or "
            "segments=False to store these variables as plain variables."
        )
    for n in SEGMENT_VARS:
        if ds[n].dims != (SEGMENT_DIM,):
            raise SchemaError(
                f"segment table variable {n!r} has dims {ds[n].dims}; expected ({SEGMENT_DIM!r},)"
            )
    names = np.asarray(ds[SEGMENT_DIM].values)
    return (
        names.tolist(),
        np.asarray(ds[SEGMENT_START].values, np.int64),
        np.asarray(ds[SEGMENT_STOP].values, np.int64),
    )


def segment_arrays(
    segments: Mapping[str, tuple[int, int]], rows: int, offset: int, path: str
) -> Any:
    """The segments ``{name: (start, stop)}`` of ``rows`` new rows, moved by ``offset``, as
    :class:`~bigarray.core.index.SegmentArrays`; refuses a segment outside the rows before
    anything is written (the commit's index plan checks names and overlaps)."""
    from .core.index import SegmentArrays

    names = list(segments)
    b = np.array([segments[k] for k in names], np.int64).reshape(-1, 2)
    bad = np.flatnonzero((b[:, 0] < 0) | (b[:, 1] > rows) | (b[:, 1] < b[:, 0]))
    if bad.size:
        i = int(bad[0])
        raise SchemaError(
            f"segment {names[i]!r} covers rows [{b[i, 0]}, {b[i, 1]}) but the Dataset has "
            f"{rows} rows; segments must lie within [0, {rows})"
        )
    return SegmentArrays.from_names(names, b[:, 0] + offset, b[:, 1] + offset)
