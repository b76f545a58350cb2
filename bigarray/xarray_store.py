"""Writing Datasets: :class:`BigArrayStore`, xarray's writable store, and :func:`to_bigarray`.

xarray's own machinery does the CF encoding, as for its zarr and netCDF engines:
``Dataset.dump_to_store`` (``conventions.encode_dataset_coordinates``: the ``coordinates``
attributes) and, per variable, ``conventions.encode_cf_variable`` with xarray's coders
(``_FillValue``, ``scale_factor``/``add_offset``, ``dtype`` packing, ``_Unsigned``, CF
times), ``ensure_dtype_not_object`` (object arrays of strings with missing values) and the
string coders (``dtype: "S1"`` character arrays, ``_Encoding``). Two choices differ from
netCDF, as zarr's do: booleans are stored as ``bool`` (no ``dtype: "bool"`` attribute), and
``datetime64``/``timedelta64`` values without a CF ``units``/``calendar``/``dtype``
encoding are stored natively (nanosecond-exact, no ``units`` attribute). Variable-length
strings (object arrays, numpy 2 ``StringDType``) are stored as fixed-width ``<U``. A large
numeric variable held in memory is encoded by the same coders in blocks of rows, each block
written as soon as it is encoded (see :func:`_blockwise`): the bytes are those of encoding
it whole, without the whole-size temporaries.

Commits
-------
A Dataset write is ONE commit: every variable's data is written first (``pwrite`` at its
rows; dask-backed variables block by block on the current dask scheduler), then one
manifest commit records every variable, the new run of the segment index, the attributes,
and checksums of every data block written and of the index files (so ``bigarray verify``
checks every store this writer wrote).

- A new store (``mode="w-"``, ``"w"``) is written completely in a hidden sibling
  directory and published by one ``rename``: readers and a killed writer see no store or
  the whole Dataset, never a part. ``mode="w"`` never deletes first: the old store stays
  whole until the new one takes its place (one atomic exchange on Linux), and a write that
  fails leaves it as it was.
- ``mode="a"`` holds the store lock from its first check to its commit. It validates
  everything before writing anything (a schema mismatch raises and changes nothing), writes
  new variables to new data files and appended rows past each variable's committed rows
  (where no reader looks), then commits. A crash before the manifest rename leaves the
  previous commit; after it, the whole append. A store that another writer session holds
  open is refused (its uncommitted rows would collide with the appended ones).
- Rows appended to a variable the store holds take its committed encoding (as xarray's
  zarr engine does) and must keep its meaning: an encoding attribute that would change
  (``units`` that xarray widens for finer times, ``scale_factor``, ``_FillValue``...), a
  cast that loses information (:func:`~bigarray.xarray_schema.check_append_dtype`,
  :func:`~bigarray.xarray_schema.check_cast_values`: the core writer's rules) raises
  ``SchemaError``. The variable's committed attributes are kept.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr
from xarray import conventions
from xarray.backends.common import (
    AbstractWritableDataStore,
    ensure_dtype_not_object,
)
from xarray.coding import strings, times
from xarray.coding import variables as cf_variables

from .core.commit import DataUpdate, commit_local, plan_index, store_lock
from .core.crash import crash_point
from .core.destination import prepare_destination
from .core.fileutil import fsync_dir, pwrite_all, resolve_inside
from .core.format import (
    DEFAULT_ROW_DIM,
    INDEX_DIR,
    Manifest,
    Shard,
    Variable,
    as_bytes,
    normalize_dtype,
    npy_header,
)
from .core.index import IndexCommit, plan_commit
from .core.rowcheck import narrowing_ints
from .errors import BigArrayError, CommitConflictError, SchemaError, StoreExistsError
from .xarray_schema import (
    SCALAR_DIM,
    SEGMENT_VARS,
    EncodedVariable,
    EncodingError,
    InvalidNameError,
    check_append_attrs,
    check_append_dtype,
    check_appendable,
    check_cast_values,
    check_dim,
    check_name,
    check_sizes,
    check_unchanged,
    default_row_dim,
    json_attrs,
    segment_arrays,
    segment_table_of,
    store_sizes,
)

__all__ = ["BigArrayStore", "EncodingError", "InvalidNameError", "to_bigarray"]

WriteMode = Literal["w-", "w", "a"]


class _UnsignedCoder(cf_variables.VariableCoder):
    """``_Unsigned`` (before xarray's mask coder): unsigned values stored in the signed
    integers of ``dtype`` (``"true"``), or signed ones in unsigned integers (``"false"``),
    bit for bit as netCDF does. Values that the unsigned (signed) type cannot hold are
    refused, never wrapped. With a ``_FillValue`` xarray's mask coder then stores them;
    without one (which that coder ignores) this coder does."""

    def encode(self, variable: xr.Variable, name: Hashable = None) -> xr.Variable:
        if variable.encoding.get("_Unsigned") is None:
            return variable
        dims, data, attrs, encoding = cf_variables.unpack_for_encoding(variable)
        flag = str(encoding["_Unsigned"]).lower()
        if flag not in ("true", "false") or data.dtype.kind not in "biuf":
            raise SchemaError(
                f"variable {name!r}: _Unsigned={flag!r} needs numbers and 'true' or "
                f"'false' (got {data.dtype} values)"
            )
        signed = flag == "true"  # stored signed, read unsigned
        size = np.dtype(encoding.get("dtype", data.dtype)).itemsize
        stored = np.dtype(encoding.get("dtype", f"i{size}" if signed else f"u{size}"))
        logical = np.dtype(f"u{size}" if signed else f"i{size}")
        if stored.kind not in "iu":
            raise SchemaError(
                f"variable {name!r}: _Unsigned={flag!r} stores integers; got "
                f"dtype={encoding['dtype']!r}. Pass an integer dtype, e.g. 'i{size}'"
            )
        masked = any(encoding.get(k) is not None for k in ("_FillValue", "missing_value"))
        if narrowing_ints(data.dtype, logical) or data.dtype.kind == "f":
            where = f"_Unsigned={flag!r} {stored} (read as {logical})"
            label = str(name)

            def check(a: np.ndarray) -> None:
                if masked and a.dtype.kind == "f":  # NaN: the fill value
                    a = a[~np.isnan(a)]
                check_cast_values(label, a, logical, True, where)

            data = _checked(data, check)
        if masked:
            return xr.Variable(dims, data, attrs, encoding, fastpath=True)
        del encoding["_Unsigned"]
        encoding.pop("dtype", None)
        if data.dtype.kind == "f":  # packed values: rounded, as xarray's mask coder does
            data = np.round(data)
        attrs["_Unsigned"] = flag
        data = data.astype(logical).astype(stored)  # same bits
        return xr.Variable(dims, data, attrs, encoding, fastpath=True)


def _checked(data: Any, check: Any) -> Any:
    """``check(values)`` of numpy data now; of dask data block by block as it is written
    (a failing block fails the write before its commit: the store is unchanged)."""
    if isinstance(data, np.ndarray) or not hasattr(data, "map_blocks"):
        check(np.asarray(data))
        return data

    def block(a: np.ndarray) -> np.ndarray:
        check(a)
        return a

    return data.map_blocks(block, dtype=data.dtype)


# the CF units of timedeltas (times have "<unit> since <date>")
_TIMEDELTA_UNITS = frozenset(
    {"days", "hours", "minutes", "seconds", "milliseconds", "microseconds", "nanoseconds"}
)


class _CheckedCast(cf_variables.NonStringCoder):
    """xarray's cast to the encoding's ``dtype``, for values appended to a committed
    variable: values that the committed dtype cannot hold are refused (never wrapped,
    never rounded unless packed or CF times); see :func:`check_cast_values`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def encode(self, variable: xr.Variable, name: Hashable = None) -> xr.Variable:
        want = variable.encoding.get("dtype")
        if want is not None and want not in ("S1", str):
            dtype = np.dtype(want)
            if dtype != variable.dtype and variable.dtype.kind in "biufc":
                rounds = "scale_factor" in variable.attrs or "add_offset" in variable.attrs
                units = str(variable.attrs.get("units", ""))
                rounds = rounds or " since " in units or units in _TIMEDELTA_UNITS
                where, label = f"the store at {self.path!r}", str(name)
                variable = variable.copy(deep=False)
                variable.data = _checked(
                    variable.data,
                    lambda a: check_cast_values(label, a, dtype, rounds, where),
                )
        return super().encode(variable, name)


# xarray's coders for a store that keeps bools and native times (zarr's choice for bools)
_CODERS = (
    times.CFDatetimeCoder(),
    times.CFTimedeltaCoder(),
    cf_variables.CFScaleOffsetCoder(),
    _UnsignedCoder(),
    cf_variables.CFMaskCoder(),
    cf_variables.NativeEnumCoder(),
    cf_variables.NonStringCoder(),
    cf_variables.DefaultFillvalueCoder(),
)
_NATIVE_TIME_CODERS = _CODERS[2:]
# encoding keys another engine (or an opened file) leaves on a variable: meaningless here
_IGNORED_ENCODING = frozenset(
    {
        "source",
        "original_shape",
        "preferred_chunks",
        "chunks",
        "chunksizes",
        "compressor",
        "compressors",
        "compression",
        "filters",
        "serializer",
        "shards",
        "zlib",
        "complevel",
        "shuffle",
        "fletcher32",
        "contiguous",
        "endian",
        "char_dim_name",
        "bigarray_variable",
        "bigarray_rows",
        "storage_options",
    }
)


_BLOCK_BYTES = 4 << 20  # rows encoded at a time: cache-sized temporaries


def _blockwise(variable: xr.Variable) -> bool:
    """Whether ``variable`` is encoded (and written) in blocks of rows rather than whole.

    A large numeric variable held in memory: each of xarray's coders would allocate (and
    fault in) a temporary of its size, several times over, where blocks of a few MiB stay
    in the cache (measured 2.5x faster for a 1 GB float32 packed into int16). Numbers
    only: their coders (scale, offset, mask, cast) work value by value, so every block
    encodes alike; times would each infer their own units.
    """
    return (
        variable.ndim > 0
        and variable.dtype.kind in "biufc"
        and variable.chunks is None
        and variable._in_memory  # a lazy array of another backend keeps its own reads
        and variable.nbytes >= 4 * _BLOCK_BYTES
    )


class _EncodedRows:
    """A variable encoded block by block as it is written: ``shape`` and ``dtype`` of the
    encoded variable, ``blocks()`` the encoded rows in order (``np.asarray`` all of them)."""

    def __init__(self, store: BigArrayStore, variable: xr.Variable, name: Hashable, first: Any):
        self.store, self.variable, self.name = store, variable, name
        self.first = np.asarray(first)
        self.rows = len(self.first)
        self.dtype = self.first.dtype
        self.shape = (variable.shape[0], *self.first.shape[1:])
        self.ndim = len(self.shape)

    def blocks(self) -> Iterable[tuple[int, np.ndarray]]:
        yield 0, self.first
        for i in range(self.rows, self.shape[0], self.rows):
            block = self.variable[i : i + self.rows]
            block.encoding = dict(self.variable.encoding)
            yield i, np.asarray(self.store.encode_variable(block, name=self.name).data)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([b for _, b in self.blocks()])
        return out if dtype is None else out.astype(dtype)

    def reshape(self, *shape: Any) -> np.ndarray:
        return np.asarray(self).reshape(*shape)


def _wants_cf_time(var: xr.Variable) -> bool:
    enc = var.encoding
    if var.dtype.kind not in "mM" or "units" in enc or "calendar" in enc:
        return True
    # dtype: int64 etc. asks for CF numbers; a datetime dtype (read back from a native
    # variable) does not
    return "dtype" in enc and np.dtype(enc["dtype"]).kind not in "mM"


class BigArrayStore(AbstractWritableDataStore):
    """xarray's writable store for a bigarray store directory (``Dataset.dump_to_store``).

    :func:`to_bigarray` is the usual way in. xarray's CF encoders prepare every variable
    (see the module docstring); :meth:`store` writes one Dataset and commits it. Read it
    back with ``xr.open_dataset(path, engine="bigarray")``, or ``xr.decode_cf(store)``.

    Parameters
    ----------
    path
        Local store directory.
    mode
        ``"w-"`` creates a new store (refuses an existing path), ``"w"`` replaces a store,
        ``"a"`` appends to a store (creates it if missing): rows along the row dim
        (``append_dim``) and new variables.
    append_dim
        With ``mode="a"``: the dim to append rows along; it must be the store's row dim.
        ``None`` only adds new variables.
    row_dim
        The row dim of a new store (default ``"row"`` if present, else the first dim of
        the first data variable).
    segments
        ``{name: (start, stop)}`` rows of segments to index (``to_bigarray`` passes the
        Dataset's segment table here), or ``None``.
    fsync
        Make the commit durable against power loss.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: WriteMode = "w-",
        *,
        append_dim: str | None = None,
        row_dim: str | None = None,
        segments: Mapping[str, tuple[int, int]] | None = None,
        fsync: bool = True,
    ) -> None:
        from .core.store import is_store

        if mode not in ("w-", "w", "a"):
            raise BigArrayError(
                f"mode={mode!r}; expected 'w-' (new store only), 'w' (replace) or 'a' (append)"
            )
        if append_dim is not None and mode != "a":
            raise BigArrayError(
                f"append_dim={append_dim!r} needs mode='a' (got mode={mode!r}); pass mode='a'"
            )
        from .core.filesystem import is_local, local_path

        if not is_local(path):
            raise BigArrayError(
                f"{os.fspath(path)!r}: the xarray writer writes local stores (and file:// URLs); "
                "write a store at a URL from dask with bigarray.dask_backend.to_bigarray, or "
                "write locally and copy it with `bigarray cp`"
            )
        self.path = os.path.abspath(local_path(path))
        self.append_dim = append_dim
        self.row_dim = row_dim
        self.segments = dict(segments) if segments is not None else None
        self.fsync = fsync
        exists = os.path.lexists(self.path)
        if mode == "w-" and exists:
            raise StoreExistsError(
                f"{self.path!r} already exists; pass mode='w' to replace it, mode='a' to "
                "append to it, or choose another path"
            )
        if mode == "w":
            # the one rule (core/destination.py): a store is replaced beside, anything
            # else is refused and kept; checked now, staged when written
            prepare_destination(self.path, True, option="mode='w'", check_only=True)
        if mode == "a" and exists and not is_store(self.path):
            raise SchemaError(
                f"mode='a': {self.path!r} exists but is not a bigarray store; choose a store "
                "to append to, or a new path"
            )
        self.mode: WriteMode = mode
        self._appending = mode == "a" and exists
        if append_dim is not None and not self._appending:
            # xarray's engines refuse append_dim when there is nothing to append to
            raise SchemaError(
                f"append_dim={append_dim!r} but there is no store at {self.path!r} to append "
                "to; write it first with mode='w-' (without append_dim)"
            )
        self._reader: xr.Dataset | None = None
        self._blockwise: dict[Hashable, _EncodedRows] = {}  # encoded as they are written
        self._existing: set[Hashable] = set()  # variables the store holds (mode='a')

    # ------------------------------------------------------------------ reading side
    # The writer reads its store back the way every reader does: through the engine that
    # this package registers with xarray (``engine="bigarray"``), found by name, so that
    # this module never imports the engine's (which imports this one for ``to_bigarray``).
    def _open(self, **kwargs: Any) -> xr.Dataset:
        return xr.open_dataset(self.path, engine="bigarray", **kwargs)

    def _read(self) -> xr.Dataset:
        if self._reader is None:  # as stored: xr.decode_cf(store) decodes it
            self._reader = self._open(decode_cf=False)
        return self._reader

    def get_variables(self) -> dict[str, xr.Variable]:
        return {str(k): v for k, v in self._read().variables.items()}

    def get_attrs(self) -> dict[str, Any]:
        return dict(self._read().attrs)

    def get_dimensions(self) -> dict[Hashable, int]:
        from .core.store import is_store

        return dict(self._read().sizes) if is_store(self.path) else {}

    def get_encoding(self) -> dict[str, Any]:
        return dict(self._read().encoding)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ------------------------------------------------------------------ encoding
    def encode(
        self, variables: Mapping[Hashable, xr.Variable], attributes: Mapping[Hashable, Any]
    ) -> tuple[dict[Hashable, xr.Variable], dict[Hashable, Any]]:
        out = {}
        self._blockwise = {}
        for k, v in variables.items():
            try:
                if _blockwise(v):  # the first block now: errors and attributes as for all
                    rows = max(1, _BLOCK_BYTES * v.shape[0] // v.nbytes)
                    first = v[:rows]
                    first.encoding = dict(v.encoding)
                    out[k] = self.encode_variable(first, name=k)
                    self._blockwise[k] = _EncodedRows(self, v, k, out[k].data)
                    continue
                out[k] = self.encode_variable(v, name=k)
            except SchemaError:
                raise
            except (ValueError, TypeError) as e:  # xarray's coders refuse it
                raise EncodingError(
                    f"variable {k!r} cannot be encoded: {e}. Check its values and its encoding "
                    "(with mode='a': the store's encoding of that variable)"
                ) from e
        return out, dict(attributes)

    def encode_variable(self, variable: xr.Variable, name: Hashable = None) -> xr.Variable:
        """xarray's CF coders, then the string coders (see the module docstring)."""
        as_chars = variable.encoding.get("dtype") == "S1"
        coders: tuple[cf_variables.VariableCoder, ...]
        coders = _CODERS if _wants_cf_time(variable) else _NATIVE_TIME_CODERS
        if name in self._existing:  # appended to a committed variable: casts are checked
            checked = _CheckedCast(self.path)
            coders = tuple(checked if type(c) is cf_variables.NonStringCoder else c for c in coders)
        var = conventions.encode_cf_variable(variable, name=name, coders=coders)
        var = ensure_dtype_not_object(var, name=name)
        var = strings.EncodedStringCoder(allows_unicode=True).encode(var, name=name)
        if as_chars:  # 'S1' character arrays, joined again by concat_characters on open
            var = strings.CharacterArrayCoder().encode(var, name=name)
        else:
            var = strings.ensure_fixed_length_bytes(var)
        return var

    # ------------------------------------------------------------------ writing
    def store(
        self,
        variables: Mapping[Hashable, xr.Variable],
        attributes: Mapping[Hashable, Any],
        check_encoding_set: Iterable[Hashable] = frozenset(),
        writer: Any = None,
        unlimited_dims: Iterable[Hashable] | None = None,
    ) -> None:
        """Encode and write one Dataset's variables and attributes (one write; see the
        module docstring for what is one commit)."""
        if unlimited_dims:
            raise SchemaError(
                f"unlimited_dims={unlimited_dims!r}: a bigarray store has no unlimited "
                "dimensions; every store grows along its row dim with mode='a'"
            )
        names = {k: check_name(k) for k in variables}
        check = set(check_encoding_set)
        self._existing = set()
        if self._appending:
            variables = self._with_store_encoding(variables, names, check)
        encoded, attrs = self.encode(variables, attributes)
        prepared = []
        for k, v in encoded.items():
            p = self._prepare(names[k], v, k in check)
            if k in self._blockwise:  # the first block stood for the variable: all of it
                p.data = self._blockwise[k]
                p.shape = p.data.shape
            prepared.append(p)
        ds_attrs = json_attrs(attrs, "Dataset attribute")
        if self._appending:
            self._append(prepared, ds_attrs)
        else:
            self._create(prepared, ds_attrs)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _with_store_encoding(
        self,
        variables: Mapping[Hashable, xr.Variable],
        names: Mapping[Hashable, str],
        check: set[Hashable],
    ) -> dict[Hashable, xr.Variable]:
        """Variables already in the store take its CF encoding (as zarr's appends do): the
        rows appended are packed, masked and time-encoded like the rows there."""
        from .core.store import read_manifest

        held = read_manifest(self.path).variables
        present = [k for k in variables if names[k] in held]
        if not present:
            return dict(variables)
        given = [k for k in present if k in check]
        if given:
            raise SchemaError(
                f"variable {given[0]!r} already exists in {self.path!r}, but encoding was "
                "provided for it; appended values take the store's encoding, so pass no "
                "encoding for variables that exist"
            )
        wanted = {names[k] for k in present}
        with self._open(  # no segment table: a million names are not needed
            segments=False, drop_variables=sorted(set(held) - wanted), decode_coords=False
        ) as opened:
            decoded = {n: opened.variables[n] for n in wanted}
        out = dict(variables)
        self._existing = set(present)
        for k in present:
            var = variables[k].copy(deep=False)
            was = decoded[names[k]]
            if var.dims != was.dims and set(var.dims) == set(was.dims):
                var = var.transpose(*was.dims)  # as xarray's zarr engine does
            if self.append_dim is not None and was.dims[:1] == (self.append_dim,):
                # rows appended (a variable written again is compared after encoding)
                check_append_dtype(names[k], var.dtype, was.dtype, self.path)
            enc = {
                e: v for e, v in decoded[names[k]].encoding.items() if e not in _IGNORED_ENCODING
            }
            if "dtype" in enc and np.dtype(enc["dtype"]).kind in "SU" and enc["dtype"] != "S1":
                # a fixed width is no encoding: casting would cut longer strings; the width
                # check refuses them instead
                del enc["dtype"]
            var.encoding = enc
            out[k] = var
        return out

    def store_dataset(self, dataset: xr.Dataset) -> None:
        self.store(dataset.variables, dataset.attrs)

    def _prepare(self, name: str, var: xr.Variable, check: bool) -> EncodedVariable:
        import dask.array as da

        enc = {k: v for k, v in var.encoding.items() if k not in _IGNORED_ENCODING}
        if "dtype" in enc and np.dtype(enc["dtype"]) == var.dtype:
            enc.pop("dtype")
        if "_FillValue" in enc and enc["_FillValue"] is None:  # "write no fill value"
            enc.pop("_FillValue")
        if enc and check:
            raise SchemaError(
                f"unexpected encoding parameters for the bigarray engine on variable {name!r}: "
                f"{sorted(enc)}; valid are xarray's CF keys (dtype, _FillValue, "
                "scale_factor, add_offset, units, calendar, _Unsigned, _Encoding)"
            )
        data = var.data
        is_dask = isinstance(data, da.Array)
        vlen = strings.check_vlen_dtype(var.dtype)
        if vlen is not None or var.dtype.kind in "OT":
            data = np.asarray(data.compute() if is_dask else data)
            is_dask = False
            if data.dtype.kind == "T" or vlen is str:
                data = data.astype(str) if data.size else data.astype("<U1")
            elif vlen is bytes:
                data = data.astype(bytes) if data.size else data.astype("S1")
            else:
                raise SchemaError(
                    f"variable {name!r} holds Python objects that xarray's encoders could not "
                    "turn into numbers or strings; convert it first (e.g. ds[name].astype(str))"
                )
        elif not is_dask:
            data = np.asarray(data)
        try:
            normalize_dtype(data.dtype)
        except SchemaError as exc:
            raise SchemaError(f"variable {name!r}: {exc}") from None
        scalar = var.ndim == 0
        dims = (SCALAR_DIM,) if scalar else tuple(check_dim(d, name) for d in var.dims)
        attrs = json_attrs(var.attrs, f"variable {name!r} attribute")
        return EncodedVariable(name, data, dims, attrs, scalar, is_dask)

    # -------------------------------------------------------------- a new store
    def _create(self, prepared: list[EncodedVariable], ds_attrs: dict[str, Any]) -> None:
        row_dim = self.row_dim or default_row_dim(prepared)
        row_vars = [p for p in prepared if not p.scalar and p.dims[0] == row_dim]
        index = None
        if self.segments:  # checked before anything is written
            rows = row_vars[0].shape[0] if row_vars else 0
            new = segment_arrays(self.segments, rows, 0, self.path)
            index = plan_commit(None, None, new, f" in the segment table written to {self.path!r}")
            if not row_vars:
                raise SchemaError(
                    f"the Dataset has a segment table but no variable along its row dim "
                    f"{row_dim!r}; segments name rows of a row variable"
                )
        # Written beside the path and switched in by one rename (or one atomic exchange
        # with the store it replaces): readers see the old store, whole, until then.
        dest = prepare_destination(self.path, self.mode == "w", option="mode='w'")
        tmp = dest.staging
        try:
            os.makedirs(os.path.join(tmp, INDEX_DIR))
            base = Manifest(0, {}, None, row_dim, {})
            with store_lock(tmp):
                _write_dataset(tmp, base, prepared, [], index, ds_attrs, self.fsync)
            if self.fsync:
                fsync_dir(tmp)
            dest.commit()
        except BaseException:
            dest.abandon()
            raise

    # -------------------------------------------------------------- appending
    def _append(self, prepared: list[EncodedVariable], ds_attrs: dict[str, Any]) -> None:
        from .core.journal import collect_dead_sessions
        from .core.store import Store, read_manifest

        # Under the store lock from the first check to the commit: no other writer commits
        # meanwhile, so the rows appended start where the committed ones end.
        with store_lock(self.path):
            m = read_manifest(self.path)
            row_dim = m.row_dim
            if self.append_dim is not None and self.append_dim != row_dim:
                raise SchemaError(
                    f"append_dim={self.append_dim!r}: this store grows along its row dim "
                    f"{row_dim!r} only; pass append_dim={row_dim!r}"
                )
            with Store(self.path) as store:
                grow, new, index = self._plan_append(prepared, m, store)
            live = collect_dead_sessions(self.path, "")
            if live:
                raise CommitConflictError(
                    f"mode='a': the store at {self.path!r} is being written by {live} live "
                    "writer session(s) (a StoreWriter, seed writer or dask write not closed "
                    "yet); their uncommitted rows would collide with the rows appended. Close "
                    "those writers first. Nothing was written."
                )
            attrs = {**m.attrs, **ds_attrs}
            _write_dataset(self.path, m, new, grow, index, attrs, self.fsync)

    def _plan_append(
        self, prepared: list[EncodedVariable], m: Manifest, store: Any
    ) -> tuple[list[tuple[EncodedVariable, Variable]], list[EncodedVariable], Any]:
        """Check the whole append against the store before anything is written: returns the
        variables that grow (with their committed entries), the new ones, and the new
        segments' index run (checked against the committed index)."""
        row_dim = m.row_dim
        sizes = store_sizes(m)
        old_rows = m.rows
        grow: list[tuple[EncodedVariable, Variable]] = []
        new: list[EncodedVariable] = []
        for p in prepared:  # sizes first: xarray's engines say this before values
            old = m.variables.get(p.name)
            if old is not None and p.dims != old.dims:
                raise SchemaError(
                    f"variable {p.name!r} has dims {p.dims} but the store at {self.path!r} "
                    f"holds it with dims {old.dims}; changing a variable's dims is not "
                    "supported. Rename or transpose it to match"
                )
            if not (self.append_dim is not None and p.dims[0] == row_dim):
                check_sizes(p, sizes)
        for p in prepared:
            old = m.variables.get(p.name)
            appending = self.append_dim is not None and p.dims[0] == row_dim
            if old is None:
                if appending:
                    raise SchemaError(
                        f"variable {p.name!r} along {row_dim!r} is not in the store: its "
                        f"rows would start at {old_rows} with nothing before them. Add it "
                        "without append_dim first (with all rows), then append"
                    )
                new.append(p)
            elif appending:
                check_appendable(p, old, self.path)
                p.attrs = check_append_attrs(p, old, self.path)
                if len(old.shards) != 1 or old.shards[0].start != 0:
                    raise SchemaError(
                        f"{self.path!r} variable {p.name!r} is sharded; append to it with "
                        "bigarray.dask_backend.to_bigarray or write a new store"
                    )
                grow.append((p, old))
            else:
                check_unchanged(p, old, store)
        if self.append_dim is not None:
            missing = [
                n
                for n, v in m.variables.items()
                if v.dims and v.dims[0] == row_dim and n not in {p.name for p, _ in grow}
            ]
            if missing and grow:
                raise SchemaError(
                    f"append along {row_dim!r} must bring rows for every row variable of "
                    f"the store; missing {missing}. Add them to the Dataset"
                )
            lengths = {p.shape[0] for p, _ in grow}
            if len(lengths) > 1:
                raise SchemaError(
                    f"the appended variables bring different row counts {sorted(lengths)}"
                )
        index = None
        if self.segments:
            added = next(iter({p.shape[0] for p, _ in grow}), 0)
            # checks names and rows against the committed index before anything is written
            fresh = segment_arrays(self.segments, added, old_rows, self.path)
            where = f" in the segment table written to {self.path!r}"
            index = plan_index(self.path, m, fresh, where)
        return grow, new, index


# =============================================================================== writing


def _write_dataset(
    path: str,
    base: Manifest,
    new: list[EncodedVariable],
    grow: list[tuple[EncodedVariable, Variable]],
    index: IndexCommit | None,
    attrs: dict[str, Any],
    fsync: bool,
) -> Manifest:
    """Write every variable's data, then commit them all, with the segments' ``index``
    run and the attributes, in ONE commit (:func:`bigarray.core.commit.commit_local`) (the caller holds the store lock; ``base`` is the
    manifest it read under it).

    New variables go to new data files (names no manifest uses); the rows of a growing
    variable go past its committed rows, where no reader looks until the commit names
    them. A crash before the commit leaves the store at ``base``; a failure removes the
    new files.
    """
    taken = {s.path for v in base.variables.values() for s in v.shards}
    updates: list[Any] = []
    jobs: list[tuple[EncodedVariable, _RowFile]] = []
    created: list[str] = []
    try:
        for p in new:
            fname = _new_file_name(path, p.name, taken)
            full = os.path.join(path, fname)
            fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            created.append(full)
            offset = len(npy_header(p.dtype, p.shape))
            var = Variable(
                p.name,
                p.dtype,
                p.shape,
                p.dims,
                (Shard(fname, offset, 0, p.shape[0]),),
                p.attrs,
                p.meta(),
                None,
            )
            updates.append(DataUpdate(var, fd, None))
            jobs.append((p, _RowFile(full, offset, var.row_nbytes, var.dtype, 0)))
        for p, old in grow:
            (shard,) = old.shards
            full = resolve_inside(path, shard.path)
            fd = os.open(full, os.O_RDWR)
            rows = old.rows + p.shape[0]
            var = Variable(
                old.name,
                old.dtype,
                (rows, *old.shape[1:]),
                old.dims,
                (Shard(shard.path, shard.offset, 0, rows),),
                old.attrs,  # an append never changes them (check_append_attrs)
                old.encoding,
                old.checksums,
            )
            updates.append(DataUpdate(var, fd, [(old.rows, rows)]))
            jobs.append((p, _RowFile(full, shard.offset, var.row_nbytes, var.dtype, old.rows)))
        _write_rows(jobs)
        return commit_local(path, base, updates, index=index, attrs=attrs, fsync=fsync)
    except BaseException:
        for full in created:  # named by no manifest (a commit that raised named nothing)
            with contextlib.suppress(OSError):
                os.unlink(full)
        raise
    finally:
        for u in updates:
            with contextlib.suppress(OSError):
                os.close(u.fd)


def _new_file_name(path: str, name: str, taken: set[str]) -> str:
    """A data file name for variable ``name`` that neither a manifest nor a file uses."""
    from .core.writer import data_file_name

    stem, ext = os.path.splitext(data_file_name(name))
    fname = f"{stem}{ext}"
    while fname in taken or os.path.lexists(os.path.join(path, fname)):
        fname = f"{stem}-{uuid.uuid4().hex[:8]}{ext}"
    taken.add(fname)
    return fname


def _write_rows(jobs: list[tuple[EncodedVariable, _RowFile]]) -> None:
    """``pwrite`` every variable's rows at their offsets: numpy data here, one variable
    after the other (a large one encoded block by block as it goes); dask data block by
    block, in parallel on the current scheduler."""
    import dask
    import dask.array as da

    sources: list[Any] = []
    targets: list[Any] = []
    for p, target in jobs:
        if p.is_dask:
            arr = p.data.reshape(1) if p.scalar else p.data
            if arr.ndim > 1:  # a block must hold whole rows
                arr = arr.rechunk({i: -1 for i in range(1, arr.ndim)})
            sources.append(arr)
            targets.append(target)
            continue
        if isinstance(p.data, _EncodedRows):
            for start, block in p.data.blocks():
                target.write(start, block)
        else:
            target.write(0, np.asarray(p.data).reshape(p.shape))
        crash_point("dataset-after-variable")
    if sources:
        dask.compute(da.store(sources, targets, lock=False, compute=False))
        crash_point("dataset-after-variable")


class _RowFile:
    """Rows of one variable's data file, written by ``pwrite`` at their byte offsets.

    A ``dask.array.store`` target: it pickles as (file path, offset, row size, dtype, first
    row) and opens the file per block, so blocks are written on any scheduler (threads,
    processes, ``dask.distributed`` workers of this machine) without a writer session.
    """

    __slots__ = ("dtype", "first_row", "offset", "path", "row_nbytes")

    def __init__(
        self, path: str, offset: int, row_nbytes: int, dtype: np.dtype, first_row: int
    ) -> None:
        self.path, self.offset, self.row_nbytes = path, offset, row_nbytes
        self.dtype, self.first_row = dtype, first_row

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.path, self.offset, self.row_nbytes, self.dtype.str, self.first_row)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.path, self.offset, self.row_nbytes, dtype, self.first_row = state
        self.dtype = np.dtype(dtype)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` as rows ``start, start + 1, ...`` of the variable's new rows."""
        data = np.ascontiguousarray(rows, self.dtype)
        if not data.nbytes:
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            pos = self.offset + (self.first_row + start) * self.row_nbytes
            pwrite_all(fd, [as_bytes(data)], pos, self.path)
        finally:
            os.close(fd)

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        self.write(key[0].start or 0, value)


# =============================================================================== to_bigarray


def to_bigarray(
    ds: xr.Dataset | xr.DataArray,
    path: str | os.PathLike[str],
    *,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
    mode: WriteMode = "w-",
    append_dim: str | None = None,
    row_dim: str | None = None,
    segments: Mapping[str, tuple[int, int]] | bool | None = None,
    fsync: bool = True,
) -> None:
    """Write a Dataset (numpy- or dask-backed) to a local store, CF-encoded by xarray.

    Parameters
    ----------
    ds
        The Dataset (a DataArray is written as a Dataset of one variable named after it,
        or ``data``). Variables whose first dim is the row dim share the rows; any other
        variable (coordinates, per-segment labels, scalars) is stored as its own array.
    path
        The store directory.
    encoding
        Per-variable CF encoding, as for ``to_netcdf``/``to_zarr``: ``{"x": {"dtype":
        "int16", "scale_factor": 0.01, "_FillValue": -32768}}``; also ``units``,
        ``calendar``, ``add_offset``, ``_Unsigned``, ``dtype: "S1"``, ``_Encoding``.
        A key the engine does not know raises a ``ValueError``.
    mode
        ``"w-"`` (default) creates a new store and refuses an existing path; ``"w"``
        replaces an existing store; ``"a"`` appends to an existing store (or creates it):
        rows along ``append_dim`` (new rows, new segments) and new variables. Every check
        runs before anything is written: a mismatch raises and changes nothing. Appended
        rows take the store's encoding of their variable; values it cannot hold without
        changing their meaning (integers that do not fit, times that need other units,
        lossy casts) and changed ``units``/``calendar`` are refused.
    append_dim
        With ``mode="a"``: the store's row dim, to append rows; ``None`` adds variables.
    row_dim
        The row dimension of a new store; default ``"row"`` if the Dataset has it, else
        the first dim of the first data variable.
    segments
        ``None`` (default): the Dataset's segment table (``segment``, ``segment_start``,
        ``segment_stop`` along dim ``segment``) becomes the segment index, if present (with
        ``mode="a"`` its rows count from the first appended row). A mapping ``{name:
        (start, stop)}`` gives the index explicitly; ``False`` writes no index (a segment
        table is then stored as plain variables).
    fsync
        Make the commit durable against power loss (``False`` is faster, still crash-safe
        against a killed process).

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``mode="w-"``.
    SchemaError
        A variable cannot be stored, an append does not fit the store, or the segment
        table is incomplete, overlapping or outside the rows.

    Notes
    -----
    A new store is one commit (written aside, published by one rename). Dask-backed
    variables are written in parallel on the current dask scheduler (threads, processes or
    ``dask.distributed``), each block by ``pwrite`` at its rows; the calling process
    commits. See :mod:`bigarray.xarray_store`.

    Examples
    --------
    >>> to_bigarray(ds, "out.bigarray")                                    # doctest: +SKIP
    >>> to_bigarray(more, "out.bigarray", mode="a", append_dim="row")      # doctest: +SKIP
    >>> xr.open_dataset("out.bigarray", engine="bigarray")                 # doctest: +SKIP
    """
    from xarray.backends.writers import dump_to_store

    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name if ds.name is not None else "data")
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(
            f"to_bigarray writes an xarray Dataset or DataArray, not {type(ds).__name__}"
        )
    seg_map: dict[str, tuple[int, int]] | None = None
    if segments is None:
        table = segment_table_of(ds)
        if table is not None:
            names, starts, stops = table
            bad = [n for n in names if not isinstance(n, str)]
            if bad:
                raise SchemaError(f"segment names must be str; got {bad[0]!r}")
            seg_map = dict(zip(names, zip(starts.tolist(), stops.tolist())))
            if len(seg_map) != len(names):
                seg_map = None
                from .core.index import SegmentArrays, merge

                merge(
                    SegmentArrays.empty(),
                    SegmentArrays.from_names(names, starts, stops),
                    f" in the segment table written to {os.fspath(path)!r}",
                )
            ds = ds.drop_vars(list(SEGMENT_VARS))
    elif isinstance(segments, Mapping):
        seg_map = {k: (int(a), int(b)) for k, (a, b) in segments.items()}
    elif segments is not False:
        raise BigArrayError(
            f"segments={segments!r}; expected None (use the Dataset's segment table), a mapping "
            "{name: (start, stop)} or False"
        )
    if row_dim is None and DEFAULT_ROW_DIM in ds.dims:
        row_dim = DEFAULT_ROW_DIM
    elif row_dim is None:
        firsts = [v.dims[0] for v in ds.data_vars.values() if v.dims]
        row_dim = str(firsts[0]) if firsts else None
    store = BigArrayStore(
        path, mode, append_dim=append_dim, row_dim=row_dim, segments=seg_map, fsync=fsync
    )
    with store:
        dump_to_store(ds, store, encoding=dict(encoding) if encoding is not None else None)
