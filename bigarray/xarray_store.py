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
strings (object arrays, numpy 2 ``StringDType``) are stored as fixed-width ``<U``.

Commits
-------
A new store (``mode="w-"``, ``"w"``) is written completely in a hidden sibling directory
and published by one ``rename``: readers and a killed writer see no store or the whole
Dataset (variables, coordinates, attributes, segment index), never a part. ``mode="w"``
never deletes first: the old store stays whole until the new one takes its place (one
atomic exchange on Linux), and a write that fails leaves it as it was.

``mode="a"`` validates everything before writing anything (a schema mismatch raises and
changes nothing), then writes each variable's new rows through the storage core and
commits the attributes last. The storage core commits one variable at a time, so an append
of several variables is several commits (a crash in between leaves the row variables at
different lengths until the append is rerun). One commit for a multi-variable append
needs a multi-variable commit in the storage core (``StoreWriter`` commits one variable).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
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

from .core.format import DEFAULT_ROW_DIM, Manifest, Variable, normalize_dtype
from .errors import BigArrayError, SchemaError, StoreExistsError
from .xarray_schema import (
    SCALAR_DIM,
    SEGMENT_VARS,
    EncodedVariable,
    EncodingError,
    InvalidNameError,
    check_appendable,
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

# xarray's coders for a store that keeps bools and native times (zarr's choice for bools)
_CODERS = (
    times.CFDatetimeCoder(),
    times.CFTimedeltaCoder(),
    cf_variables.CFScaleOffsetCoder(),
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
        if (
            mode == "w"
            and exists
            and os.path.isdir(self.path)
            and not is_store(self.path)
            and os.listdir(self.path)
        ):
            raise StoreExistsError(
                f"{self.path!r} is a non-empty directory that is not a bigarray store; "
                "refusing to replace it. Remove it yourself or choose another path."
            )
        if mode == "w" and is_store(self.path):
            from .core.commit import refuse_live_writers

            refuse_live_writers(self.path)  # early; the switch checks again under the lock
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
        for k, v in variables.items():
            try:
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
        coders = _CODERS if _wants_cf_time(variable) else _NATIVE_TIME_CODERS
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
        if self._appending:
            variables = self._with_store_encoding(variables, names, check)
        encoded, attrs = self.encode(variables, attributes)
        prepared = [self._prepare(names[k], v, k in check) for k, v in encoded.items()]
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
        for k in present:
            var = variables[k].copy(deep=False)
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
        from .core.commit import staging_path, switch_into_place
        from .core.fileutil import fsync_dir

        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        tmp = staging_path(self.path)
        try:
            row_dim = self.row_dim or default_row_dim(prepared)
            _write_all(tmp, prepared, ds_attrs, row_dim, self.segments, self.fsync)
            if self.fsync:
                fsync_dir(tmp)
            if os.path.lexists(self.path):
                if self.mode != "w":  # created by someone else meanwhile
                    raise StoreExistsError(
                        f"{self.path!r} appeared while this Dataset was written; pass mode='w' "
                        "to replace it"
                    )
                # Replace, never delete first: the old store stays whole at ``path`` until
                # the new one takes its place (one atomic exchange on Linux).
                switch_into_place(tmp, self.path)
            else:
                os.rename(tmp, self.path)  # the commit: the whole store appears at once
                if self.fsync:
                    fsync_dir(parent)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            raise

    # -------------------------------------------------------------- appending
    def _append(self, prepared: list[EncodedVariable], ds_attrs: dict[str, Any]) -> None:
        from .core.store import Store, read_manifest

        m = read_manifest(self.path)
        row_dim = m.row_dim
        if self.append_dim is not None and self.append_dim != row_dim:
            raise SchemaError(
                f"append_dim={self.append_dim!r}: this store grows along its row dim "
                f"{row_dim!r} only; pass append_dim={row_dim!r}"
            )
        with Store(self.path) as store:
            sizes = store_sizes(m)
            old_rows = m.rows
            grow: list[tuple[EncodedVariable, Variable]] = []
            new: list[EncodedVariable] = []
            for p in prepared:  # sizes first: xarray's engines say this before values
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
            seg_names = None
            if self.segments:
                added = next(iter({p.shape[0] for p, _ in grow}), 0)
                # checks names and rows against the committed index before anything is written
                segment_arrays(self.segments, added, old_rows, self.path, store)
                seg_names = _names_abs(self.segments, old_rows)
        _append_all(self.path, m, grow, new, ds_attrs, seg_names, self.fsync)


# =============================================================================== helpers


_Names = tuple[list[str], np.ndarray, np.ndarray]


def _write_rows(
    path: str,
    plan: list[tuple[EncodedVariable, Any]],
    start_of: Mapping[str, int],
    names: tuple[str, _Names] | None = None,
) -> None:
    """Write every variable's rows (dask blocks in parallel on the current scheduler), then
    commit each writer; ``names`` = (variable, segments) names rows through that variable's
    writer, so the storage core commits the index (with its checksums) with its rows."""
    import dask
    import dask.array as da

    sources: list[Any] = []
    targets: list[Any] = []
    writers = [w for _, w in plan]
    try:
        for p, w in plan:
            if p.data is None:
                continue
            start = start_of.get(p.name, 0)
            if p.is_dask:
                arr = p.data.reshape(1) if p.scalar else p.data
                if arr.ndim > 1:  # a block must hold whole rows
                    arr = arr.rechunk({i: -1 for i in range(1, arr.ndim)})
                w.write_rows([], start_position=start)  # the owner's descriptor before threads
                sources.append(arr)
                targets.append(_OffsetTarget(_RowTarget(w), start))
            elif math.prod(p.shape):
                w.write_rows([np.asarray(p.data).reshape(p.shape)], start_position=start)
        if sources:
            dask.compute(da.store(sources, targets, lock=False, compute=False))
        for p, w in plan:
            if names is not None and p.name == names[0]:
                w.name_rows(*names[1])
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            with contextlib.suppress(Exception):
                w.discard()
        raise


class _RowTarget:
    """``dask.array.store`` target writing each block's rows through a StoreWriter.

    Pickles with its writer: on a worker it becomes a non-owner that journals its rows,
    and the owner's ``close`` commits them.
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        value = np.asarray(value)
        start = key[0].start or 0
        if len(value):
            self.writer.write_rows([value], start_position=int(start))


class _OffsetTarget:
    """A ``da.store`` target writing block rows at ``offset`` + their position."""

    def __init__(self, target: Any, offset: int) -> None:
        self.target, self.offset = target, offset

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        k0 = key[0]
        shifted = slice((k0.start or 0) + self.offset, None)
        self.target[(shifted, *key[1:])] = value


def _names_abs(segments: Mapping[str, tuple[int, int]], offset: int) -> _Names:
    names = list(segments)
    b = np.array([segments[k] for k in names], np.int64).reshape(-1, 2) + offset
    return names, b[:, 0].copy(), b[:, 1].copy()


def _write_all(
    path: str,
    prepared: list[EncodedVariable],
    ds_attrs: dict[str, Any],
    row_dim: str,
    segments: Mapping[str, tuple[int, int]] | None,
    fsync: bool,
) -> None:
    """Write a complete new store at ``path`` (a fresh directory)."""
    from .core.writer import StoreWriter, update_manifest

    row_vars = [p for p in prepared if not p.scalar and p.dims[0] == row_dim]
    rows = row_vars[0].shape[0] if row_vars else 0
    names = None
    if segments:
        seg = segment_arrays(segments, rows, 0, path)  # checks before anything is written
        if not row_vars:
            raise SchemaError(
                f"the Dataset has a segment table but no variable along its row dim "
                f"{row_dim!r}; segments name rows of a row variable"
            )
        del seg
        names = (row_vars[0].name, _names_abs(segments, 0))
    plan = [
        (
            p,
            StoreWriter(
                path,
                variable=p.name,
                shape=p.shape,
                dtype=p.dtype,
                dims=p.dims,
                named=False,
                fsync=fsync,
            ),
        )
        for p in prepared
    ]
    _write_rows(path, plan, {}, names)
    specs = {p.name: p for p in prepared}

    def change(m: Manifest) -> Manifest:
        new_vars = {n: _with_meta(v, specs[n]) if n in specs else v for n, v in m.variables.items()}
        return Manifest(m.generation, new_vars, m.segments, row_dim, ds_attrs)

    if not prepared:  # a Dataset with no variables: an empty store
        os.makedirs(path, exist_ok=True)
        StoreWriter(path, variable="_", named=False, fsync=fsync).close()
    update_manifest(path, change, fsync=fsync)


def _with_meta(v: Variable, p: EncodedVariable) -> Variable:
    return Variable(v.name, v.dtype, v.shape, v.dims, v.shards, p.attrs, p.meta(), v.checksums)


def _stage_new_variables(
    path: str, new: list[EncodedVariable], row_dim: str, fsync: bool
) -> dict[str, Variable]:
    """Write the variables an append adds as a complete store aside (the storage core's
    own commits and checksums), then move their data files into the store at ``path``,
    where nothing names them until the append's manifest commit does."""
    from .core import integrity
    from .core.fileutil import fsync_dir
    from .core.format import Shard
    from .core.store import read_manifest

    parent = os.path.dirname(path)
    stage = os.path.join(parent, f".{os.path.basename(path)}.stage-{uuid.uuid4().hex[:12]}")
    out: dict[str, Variable] = {}
    try:
        _write_all(stage, new, {}, row_dim, None, fsync)
        staged = read_manifest(stage)
        for p in new:
            v = staged.variables[p.name]
            (shard,) = v.shards
            stem, ext = os.path.splitext(os.path.basename(shard.path))
            fname = f"{stem}-{uuid.uuid4().hex[:8]}{ext}"
            os.rename(os.path.join(stage, shard.path), os.path.join(path, fname))
            moved = Variable(
                v.name,
                v.dtype,
                v.shape,
                v.dims,
                (Shard(fname, shard.offset, shard.start, shard.stop),),
                v.attrs,
                v.encoding,
                None,
            )
            checksums = None
            if v.checksums is not None:
                # the bytes moved unchanged: the core's block sums hold; only the layout
                # (which names the file) is the new one
                sums = integrity.DataChecksums.from_json(v.checksums, f"staged {p.name!r}")
                sums.layout = integrity.layout_crc(moved)
                checksums = sums.to_json()
            out[p.name] = Variable(
                v.name, v.dtype, v.shape, v.dims, moved.shards, v.attrs, v.encoding, checksums
            )
        if fsync:
            fsync_dir(path)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)
    return out


def _append_all(
    path: str,
    m: Manifest,
    grow: list[tuple[EncodedVariable, Variable]],
    new: list[EncodedVariable],
    ds_attrs: dict[str, Any],
    seg_names: _Names | None,
    fsync: bool,
) -> None:
    from .core.writer import StoreWriter, update_manifest

    added = _stage_new_variables(path, new, m.row_dim, fsync) if new else {}
    plan = [(p, StoreWriter(path, variable=p.name, named=False, fsync=fsync)) for p, _ in grow]
    names = (grow[0][0].name, seg_names) if seg_names is not None and grow else None
    _write_rows(path, plan, {p.name: old.rows for p, old in grow}, names)
    attr_updates = {p.name: p.attrs for p, _ in grow}

    def change(cur: Manifest) -> Manifest:
        new_vars = {}
        for n, v in cur.variables.items():
            if n in attr_updates:
                v = Variable(
                    v.name,
                    v.dtype,
                    v.shape,
                    v.dims,
                    v.shards,
                    {**v.attrs, **attr_updates[n]},
                    v.encoding,
                    v.checksums,
                )
            new_vars[n] = v
        new_vars.update(added)
        return Manifest(
            cur.generation, new_vars, cur.segments, cur.row_dim, {**cur.attrs, **ds_attrs}
        )

    update_manifest(path, change, fsync=fsync)


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
        runs before anything is written: a mismatch raises and changes nothing.
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
