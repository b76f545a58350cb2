"""Convert other array formats into bigarray stores, and stores out to zarr and netCDF.

Sources (:func:`detect_format` names them):

========== =================================================== =================================
format     what                                                becomes
========== =================================================== =================================
npy        a ``.npy`` file                                     an unnamed store
npz        a ``.npz`` archive                                  one segment per array (name = key)
hdf5       an HDF5 dataset (``file.h5:/group/dataset``)        an unnamed store
hdf5       an HDF5 group of datasets                           one segment per dataset
zarr       a zarr array (v3 or v2)                             an unnamed store
zarr       a zarr group of plain arrays                        one segment per array (sorted)
zarr       a zarr group written by xarray (arrays have dims)   read through xarray
netcdf     a netCDF file (netCDF4/HDF5 or classic)             read through xarray
legacy     a file of the original 2020 bigarray                :func:`convert_legacy`
bigarray   a bigarray store                                    zarr or netCDF, through xarray
========== =================================================== =================================

Array sources are streamed in blocks of about 64 MiB of rows, so a multi-GB dataset never
sits in memory; a segment larger than a block is written block by block and named once
(:meth:`bigarray.core.writer.StoreWriter.name_rows`). Nothing here unpickles: ``.npy``/``.npz``
are read with ``allow_pickle=False`` semantics and object arrays are refused.

The xarray paths go through :mod:`bigarray.xarray_backend` (``engine="bigarray"`` and
``to_bigarray(ds, path)``); netCDF is written and read with ``h5netcdf``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .arrays import MmapArrayWriter, PointerArrayWriter
from .core.destination import Destination, prepare_destination
from .core.filesystem import is_local_url, local_path
from .core.format import normalize_dtype
from .core.legacy import CONVERT_CHUNK_BYTES, legacy_runs, read_legacy
from .core.store import is_store
from .errors import (
    FormatError,
    SchemaError,
    StoreNotFoundError,
    VariableNotFoundError,
)

__all__ = [
    "FORMATS",
    "OUTPUT_FORMATS",
    "convert",
    "detect_format",
    "from_hdf5",
    "from_netcdf",
    "from_npy",
    "from_npz",
    "from_zarr",
    "split_source",
    "to_netcdf",
    "to_zarr",
]

#: Formats :func:`detect_format` can return.
FORMATS = ("npy", "npz", "hdf5", "netcdf", "zarr", "legacy", "bigarray")
#: Formats :func:`convert` can write (``to=``).
OUTPUT_FORMATS = ("bigarray", "zarr", "netcdf")

BLOCK_BYTES = 64 << 20  # rows read and written per call: bounds the memory of a conversion

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
_LEGACY_MAGIC = b"mmapdata"
_NETCDF_EXT = (".nc", ".nc4", ".netcdf", ".cdf")
_ZARR_EXT = (".zarr",)


# --------------------------------------------------------------------------- detection
def split_source(src: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Split ``"file.h5:/group/dataset"`` into ``("file.h5", "/group/dataset")``.

    A path that exists as given is never split (file names may hold colons); otherwise the
    text after the last colon names an object inside the file (an HDF5 dataset or group, an
    ``.npz`` key, a zarr array in a group, a netCDF variable).
    """
    text = os.fspath(src)
    if is_local_url(text):  # file:///x, FILE:///x, local:///x, file:/x: the path /x
        text = local_path(text)
    if os.path.lexists(text) or ":" not in text:
        return text, None
    path, _, inner = text.rpartition(":")
    if path and os.path.lexists(path) and inner:
        return path, inner
    return text, None


def _head(path: str, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _is_hdf5(path: str) -> bool:
    # The superblock may follow a user block of 512, 1024, 2048, ... bytes.
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            if f.read(8) == _HDF5_MAGIC:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _hdf5_is_netcdf(path: str) -> bool:
    """netCDF-4 files are HDF5 files with ``_NCProperties`` or netCDF dimension scales."""
    if path.lower().endswith(_NETCDF_EXT):
        return True
    import h5py

    with h5py.File(path, "r") as f:
        if "_NCProperties" in f.attrs:
            return True
        for obj in f.values():
            if isinstance(obj, h5py.Dataset) and obj.attrs.get("CLASS") == b"DIMENSION_SCALE":
                return True
    return False


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tell the format of ``path`` from its magic bytes (or, for directories, its files).

    Parameters
    ----------
    path : str or os.PathLike
        A file or directory, optionally followed by ``:inner`` (see :func:`split_source`).

    Returns
    -------
    str
        One of :data:`FORMATS`: ``"npy"``, ``"npz"``, ``"hdf5"``, ``"netcdf"``, ``"zarr"``,
        ``"legacy"`` or ``"bigarray"``. An HDF5 file is ``"netcdf"`` when it carries
        ``_NCProperties``, netCDF dimension scales or a ``.nc`` extension.

    Raises
    ------
    StoreNotFoundError
        Nothing exists at ``path``.
    FormatError
        The file or directory is none of the formats above.
    """
    full, _ = split_source(path)
    if not os.path.exists(full):
        raise StoreNotFoundError(f"cannot convert {full!r}: no such file or directory")
    if os.path.isdir(full):
        if is_store(full):
            return "bigarray"
        if any(os.path.exists(os.path.join(full, n)) for n in ("zarr.json", ".zarray", ".zgroup")):
            return "zarr"
        raise FormatError(
            f"cannot tell the format of directory {full!r}: it holds neither a bigarray "
            "manifest.json nor zarr metadata (zarr.json, .zarray, .zgroup). Point at a "
            "bigarray store, a zarr array or group, or a .npy/.npz/.h5/.nc/legacy file."
        )
    head = _head(full)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGICS):
        return "npz"
    if head.startswith(_LEGACY_MAGIC):
        return "legacy"
    if head.startswith(_NETCDF3_MAGICS):
        return "netcdf"
    if _is_hdf5(full):
        return "netcdf" if _hdf5_is_netcdf(full) else "hdf5"
    raise FormatError(
        f"cannot tell the format of {full!r} (first bytes {head!r}): expected a .npy "
        "(b'\\x93NUMPY'), .npz (zip), HDF5/netCDF4 (b'\\x89HDF'), netCDF classic (b'CDF') or "
        "legacy bigarray (b'mmapdata') file, a zarr directory or a bigarray store"
    )


# --------------------------------------------------------------------------- writing
@dataclass
class _Part:
    """One source array to copy: a segment (``name``) or the rows of an unnamed store."""

    name: str | None
    rows: int
    blocks: Callable[[int], Iterator[np.ndarray]]  # rows per block -> arrays in row order
    chunk_rows: int = 1  # the source's chunk length along axis 0: blocks align to it


def _sliced(array: Any, rows: int) -> Callable[[int], Iterator[np.ndarray]]:
    """Blocks of ``array[a:b]`` for anything that slices (memmap, h5py, zarr)."""

    def blocks(step: int) -> Iterator[np.ndarray]:
        for a in range(0, rows, step):
            yield np.asarray(array[a : min(a + step, rows)])

    return blocks


def _row_nbytes(dtype: np.dtype, trailing: Sequence[int]) -> int:
    return max(1, dtype.itemsize * int(np.prod(trailing, dtype=np.int64)))


def _block_rows(dtype: np.dtype, trailing: Sequence[int], chunk_rows: int = 1) -> int:
    rows = max(1, BLOCK_BYTES // _row_nbytes(dtype, trailing))
    if chunk_rows > 1:  # whole source chunks per read: no chunk is decompressed twice
        rows = max(chunk_rows, rows // chunk_rows * chunk_rows)
    return rows


def _destination(
    dst: str | os.PathLike[str],
    remove_exist: bool,
    replaceable: Callable[[str], bool] | None = None,
) -> Destination:
    """Where a conversion writes: beside ``dst``, switched into place when it is complete
    (a store it replaces stays readable until then, and a failed conversion leaves it as
    it was). A conversion never appends to an existing store."""
    return prepare_destination(
        dst, remove_exist, option="remove_exist=True (--remove-exist)", replaceable=replaceable
    )


def _check_schema(src: str, parts: Sequence[tuple[str, np.dtype, tuple[int, ...]]]) -> None:
    """All arrays of a multi-segment source must share dtype and row shape."""
    if not parts:
        raise SchemaError(f"{src!r} holds no arrays to convert")
    name0, dtype0, shape0 = parts[0]
    for name, dtype, shape in parts:
        if len(shape) == 0:
            raise SchemaError(
                f"{src!r}: array {name!r} is a scalar (shape ()); every segment needs at least "
                "one axis. Leave it out with --variable, or store it as a 1-element array."
            )
        if normalize_dtype(dtype) != normalize_dtype(dtype0):
            raise SchemaError(
                f"{src!r}: array {name!r} has dtype {dtype} but {name0!r} has {dtype0}; every "
                "segment of a store shares one dtype. Cast them to one dtype first, or convert "
                "one array with --variable."
            )
        if shape[1:] != shape0[1:]:
            raise SchemaError(
                f"{src!r}: array {name!r} has shape {shape} but {name0!r} has {shape0}; every "
                f"segment needs rows of shape {shape0[1:]} (only the first axis may differ). "
                "Convert one array with --variable, or reshape them first."
            )


def _write_parts(
    parts: Sequence[_Part],
    dst: str,
    *,
    dtype: Any,
    trailing: tuple[int, ...],
    named: bool,
    remove_exist: bool,
    progress: bool,
    desc: str,
) -> None:
    """Copy ``parts`` into a new store at ``dst`` block by block, with a progress bar.

    Small segments are gathered into one ``write_rows`` call per block (a 100,000-member
    archive costs a handful of writes); a segment larger than a block is written in unnamed
    blocks and named once. On any failure the half-written store is deleted.
    """
    from tqdm.auto import tqdm

    from .core.writer import StoreWriter

    dest = _destination(dst, remove_exist)
    dtype = normalize_dtype(dtype)
    total = sum(p.rows for p in parts)
    try:
        writer = StoreWriter(dest.staging, shape=(total, *trailing), dtype=dtype, named=named)
    except BaseException:
        dest.abandon()
        raise
    bar = tqdm(total=total, unit="row", disable=not progress, desc=desc)
    row_bytes = _row_nbytes(dtype, trailing)
    pending: list[np.ndarray] = []
    pending_names: list[str] = []
    pending_bytes = 0
    position = 0  # one writer and explicit positions: rows land exactly where planned

    def flush_pending() -> None:
        nonlocal pending, pending_names, pending_bytes, position
        if pending:
            _, position = writer.write_rows(
                pending, pending_names if named else None, start_position=position
            )
            bar.update(sum(len(a) for a in pending))
        pending, pending_names, pending_bytes = [], [], 0

    try:
        for part in parts:
            step = _block_rows(dtype, trailing, part.chunk_rows)
            if part.rows <= step and part.name is not None:
                # Whole segment in one block: batch it with its neighbours.
                got = list(part.blocks(step))  # exhausted: the source closes its file
                # an empty segment still gets its (empty) rows
                block = got[0] if len(got) == 1 else np.zeros((0, *trailing), dtype)
                _check_block(dst, part, block, trailing, 0)
                pending.append(block)
                pending_names.append(part.name)
                pending_bytes += len(block) * row_bytes
                if pending_bytes >= BLOCK_BYTES:
                    flush_pending()
                continue
            flush_pending()
            start = position
            for block in part.blocks(step):
                _check_block(dst, part, block, trailing, position - start)
                _, position = writer.write_rows([block], None, start_position=position)
                bar.update(len(block))
            if position - start != part.rows:
                raise SchemaError(
                    f"{part.name or 'the source'!r} yielded {position - start} rows but "
                    f"declared {part.rows}; the source changed while it was being converted"
                )
            if part.name is not None:
                writer.name_rows([part.name], [start], [position])
        flush_pending()
    except BaseException:
        # Leave nothing half-converted; a store at dst is untouched until the switch.
        for cleanup in (writer.abort, writer.close, dest.abandon):
            with contextlib.suppress(Exception):  # the original error is the one to report
                cleanup()
        raise
    finally:
        bar.close()
    try:
        writer.close()
    except BaseException:
        dest.abandon()
        raise
    dest.commit()


def _check_block(
    dst: str, part: _Part, block: np.ndarray, trailing: tuple[int, ...], at: int
) -> None:
    if block.shape[1:] != trailing:
        raise SchemaError(
            f"converting into {dst!r}: {part.name or 'the source'!r} gave rows of shape "
            f"{block.shape[1:]} at row {at} where {trailing} was expected"
        )


def _refuse_objects(src: str, name: str | None, dtype: np.dtype) -> None:
    if dtype.hasobject:
        what = f"array {name!r} of {src!r}" if name else repr(src)
        raise SchemaError(
            f"{what} holds Python objects (dtype {dtype}); loading it would need pickle, which "
            "bigarray never runs on foreign files. Save it with a fixed-width dtype instead "
            "(e.g. arr.astype('U32') for strings) and convert again."
        )


# --------------------------------------------------------------------------- npy / npz
def _read_npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        return fmt.read_array_header_2_0(f)
    except ValueError as exc:
        raise FormatError(f"{where} is not a readable .npy array: {exc}") from None


def from_npy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    remove_exist: bool = False,
    progress: bool = False,
) -> None:
    """Convert a ``.npy`` file into an unnamed store (memory-mapped, copied in blocks).

    Raises
    ------
    SchemaError
        The array holds Python objects, is a scalar, or has a dtype a store cannot keep.
    StoreExistsError
        ``dst`` exists and ``remove_exist`` is False.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    with open(src, "rb") as f:
        shape, _, dtype = _read_npy_header(f, repr(src))
    _refuse_objects(src, None, dtype)
    _check_schema(src, [(Path(src).name, dtype, shape)])
    normalize_dtype(dtype)  # refuse structured/void before creating anything
    array = np.load(src, mmap_mode="r", allow_pickle=False)
    part = _Part(None, shape[0], _sliced(array, shape[0]))
    _write_parts(
        [part],
        dst,
        dtype=dtype,
        trailing=tuple(shape[1:]),
        named=False,
        remove_exist=remove_exist,
        progress=progress,
        desc=Path(src).name,
    )


def _npz_member_blocks(src: str, member: str) -> Callable[[int], Iterator[np.ndarray]]:
    """Stream one archive member: C-order data is read (and inflated) block by block."""

    def blocks(step: int) -> Iterator[np.ndarray]:
        with zipfile.ZipFile(src) as zf, zf.open(member) as f:
            shape, fortran, dtype = _read_npy_header(f, f"{src!r}:{member}")
            if fortran and len(shape) > 1:
                # Fortran order has no row blocks in the byte stream: read the member whole.
                data = np.lib.format.read_array(f, allow_pickle=False)
                for a in range(0, shape[0], step):
                    yield data[a : a + step]
                return
            row = _row_nbytes(dtype, shape[1:])
            for a in range(0, shape[0], step):
                n = min(step, shape[0] - a)
                raw = f.read(n * row)
                if len(raw) != n * row:
                    raise FormatError(
                        f"{src!r}: member {member!r} is truncated at row {a}; the archive is "
                        "damaged. Re-create it with numpy.savez."
                    )
                yield np.frombuffer(raw, dtype).reshape(n, *shape[1:])

    return blocks


def from_npz(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    variable: str | None = None,
    remove_exist: bool = False,
    progress: bool = False,
) -> None:
    """Convert a ``.npz`` archive: each array becomes a segment named by its key, in
    archive order; ``variable`` selects one array, which becomes an unnamed store.

    Raises
    ------
    VariableNotFoundError
        ``variable`` is not a key of the archive.
    SchemaError
        An array holds Python objects, is a scalar, or the arrays differ in dtype or row
        shape (only the first axis may differ).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    try:
        with zipfile.ZipFile(src) as zf:
            members = [m for m in zf.namelist() if m.endswith(".npy")]
            headers = {}
            for m in members:
                with zf.open(m) as f:
                    headers[m] = _read_npy_header(f, f"{src!r}:{m}")
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{src!r} is not a readable .npz archive: {exc}") from None
    keys = {m[: -len(".npy")]: m for m in members}
    if variable is not None:
        if variable not in keys:
            raise VariableNotFoundError(
                f"{src!r} has no array {variable!r}; its arrays are {sorted(keys)!r}"
            )
        keys = {variable: keys[variable]}
    for key, m in keys.items():
        _refuse_objects(src, key, headers[m][2])
    _check_schema(src, [(k, headers[m][2], headers[m][0]) for k, m in keys.items()])
    first = headers[next(iter(keys.values()))]
    named = variable is None
    parts = [
        _Part(k if named else None, headers[m][0][0], _npz_member_blocks(src, m))
        for k, m in keys.items()
    ]
    _write_parts(
        parts,
        dst,
        dtype=first[2],
        trailing=tuple(first[0][1:]),
        named=named,
        remove_exist=remove_exist,
        progress=progress,
        desc=Path(src).name,
    )


# --------------------------------------------------------------------------- HDF5
def from_hdf5(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    variable: str | None = None,
    remove_exist: bool = False,
    progress: bool = False,
) -> None:
    """Convert an HDF5 dataset into an unnamed store, or a group of datasets into one
    segment per dataset.

    Parameters
    ----------
    src : str or os.PathLike
        The file, optionally as ``"file.h5:/group/dataset"``.
    variable : str, optional
        Path of the dataset or group inside the file (the same as the ``:`` suffix);
        default: the file's root group.

    Notes
    -----
    The segments of a group come in the group's own order: creation order when the file
    tracks it (h5py ``track_order=True``), otherwise name order (HDF5's default index).
    The group must hold only datasets, all of one dtype and row shape.

    Raises
    ------
    VariableNotFoundError
        The path inside the file does not exist.
    SchemaError
        Datasets differ in dtype or row shape, a dataset is a scalar or of a variable-length
        or object type, or the group holds subgroups.
    """
    import h5py

    path, inner = split_source(src)
    inner = variable if variable is not None else inner
    dst = os.fspath(dst)
    with h5py.File(path, "r") as f:
        obj = f[inner] if inner and inner in f else None
        if inner and obj is None:
            raise VariableNotFoundError(
                f"{path!r} has no dataset or group {inner!r}; its root holds {list(f)!r}"
            )
        obj = f if obj is None else obj
        where = f"{path}:{obj.name}"
        if isinstance(obj, h5py.Dataset):
            datasets = [(None, obj)]
        else:
            subgroups = [k for k, v in obj.items() if not isinstance(v, h5py.Dataset)]
            if subgroups:
                raise SchemaError(
                    f"HDF5 group {where!r} holds groups {subgroups[:5]!r} besides datasets; "
                    "point at a group that holds only datasets (file.h5:/group), or at one "
                    "dataset (file.h5:/group/dataset)"
                )
            datasets = list(obj.items())
        checked = []
        for name, ds in datasets:
            label = name or ds.name
            _refuse_objects(where, label, ds.dtype)
            if h5py.check_vlen_dtype(ds.dtype) is not None:
                raise SchemaError(
                    f"{where!r}: dataset {label!r} has a variable-length type ({ds.dtype}); "
                    "store fixed-width data (e.g. strings as 'S32') and convert again"
                )
            checked.append((label, ds.dtype, tuple(ds.shape)))
        _check_schema(where, checked)
        normalize_dtype(checked[0][1])
        parts = [
            _Part(name, ds.shape[0], _sliced(ds, ds.shape[0]), (ds.chunks or (1,))[0])
            for name, ds in datasets
        ]
        _write_parts(
            parts,
            dst,
            dtype=checked[0][1],
            trailing=checked[0][2][1:],
            named=datasets[0][0] is not None,
            remove_exist=remove_exist,
            progress=progress,
            desc=Path(path).name,
        )


# --------------------------------------------------------------------------- zarr
def _zarr_dims(array: Any) -> Any:
    """The dimension names xarray gave a zarr array (v3 metadata or v2 attribute)."""
    names = getattr(array.metadata, "dimension_names", None)
    return names if names is not None else array.attrs.get("_ARRAY_DIMENSIONS")


def from_zarr(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    variable: str | None = None,
    remove_exist: bool = False,
    progress: bool = False,
) -> None:
    """Convert a zarr array (v3 or v2) into an unnamed store, or a group of arrays into one
    segment per array (sorted by name). A group written by xarray (its arrays carry
    dimension names) is read through xarray instead, like a netCDF file.

    Parameters
    ----------
    variable : str, optional
        An array inside the group (the same as a ``:`` suffix on ``src``).

    Raises
    ------
    VariableNotFoundError
        ``variable`` is not in the group.
    SchemaError
        The arrays differ in dtype or row shape, or one is a scalar or of object type.
    """
    import zarr

    path, inner = split_source(src)
    inner = variable if variable is not None else inner
    dst = os.fspath(dst)
    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Group):
        arrays = sorted(node.arrays(), key=lambda kv: kv[0])
        if arrays and all(_zarr_dims(a) for _, a in arrays):
            # Written by xarray: coordinates and data variables, not segments.
            return _from_xarray_zarr(path, dst, remove_exist, progress, variable=inner)
        if inner is not None:
            try:
                node = node[inner]
            except KeyError:
                raise VariableNotFoundError(
                    f"zarr group {path!r} has no array or group {inner!r}; its arrays are "
                    f"{[k for k, _ in arrays]!r}"
                ) from None
        if isinstance(node, zarr.Group):
            return _zarr_group(path, node, dst, remove_exist, progress)
    _refuse_objects(path, inner, node.dtype)
    _check_schema(path, [(inner or Path(path).name, node.dtype, tuple(node.shape))])
    part = _Part(None, node.shape[0], _sliced(node, node.shape[0]), node.chunks[0])
    _write_parts(
        [part],
        dst,
        dtype=node.dtype,
        trailing=tuple(node.shape[1:]),
        named=False,
        remove_exist=remove_exist,
        progress=progress,
        desc=Path(path).name,
    )
    return None


def _zarr_group(path: str, group: Any, dst: str, remove_exist: bool, progress: bool) -> None:
    members = sorted(group.arrays(), key=lambda kv: kv[0])
    for name, a in members:
        _refuse_objects(path, name, a.dtype)
    _check_schema(path, [(n, a.dtype, tuple(a.shape)) for n, a in members])
    parts = [_Part(n, a.shape[0], _sliced(a, a.shape[0]), a.chunks[0]) for n, a in members]
    first = members[0][1]
    _write_parts(
        parts,
        dst,
        dtype=first.dtype,
        trailing=tuple(first.shape[1:]),
        named=True,
        remove_exist=remove_exist,
        progress=progress,
        desc=Path(path).name,
    )
    return None


# --------------------------------------------------------------------------- xarray paths
def _xarray_backend() -> Any:
    from . import xarray_backend

    if not hasattr(xarray_backend, "to_bigarray"):
        raise FormatError(
            "converting through xarray needs bigarray.xarray_backend.to_bigarray, which this "
            "installation lacks; upgrade bigarray"
        )
    return xarray_backend


@contextlib.contextmanager
def _task_progress(progress: bool, desc: str) -> Iterator[None]:
    """A tqdm bar counted in dask tasks over every local dask computation in the block."""
    if not progress:
        yield
        return
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    class _Bar(Callback):
        bar: Any = None

        def _start_state(self, dsk: Any, state: Any) -> None:
            total = sum(len(state[k]) for k in ("ready", "waiting", "running"))
            if self.bar is None:
                self.bar = tqdm(total=total, unit="task", desc=desc)
            else:  # a second computation: grow the bar
                self.bar.total += total
                self.bar.refresh()

        def _posttask(self, *args: Any) -> None:
            self.bar.update(1)

    cb = _Bar()
    try:
        with cb:
            yield
    finally:
        if cb.bar is not None:
            cb.bar.close()


def _dataset_to_bigarray(ds: Any, dst: str, remove_exist: bool, progress: bool, desc: str) -> None:
    backend = _xarray_backend()
    dest = _destination(dst, remove_exist)
    try:
        with _task_progress(progress, desc):
            backend.to_bigarray(ds, dest.staging)
    except BaseException:
        with contextlib.suppress(Exception):
            dest.abandon()
        raise
    dest.commit()


def _select(ds: Any, variable: str | None, where: str) -> Any:
    if variable is None:
        return ds
    if variable not in ds.variables:
        raise VariableNotFoundError(
            f"{where!r} has no variable {variable!r}; its variables are "
            f"{sorted(map(str, ds.variables))!r}"
        )
    return ds[[variable]]


def _from_xarray_zarr(
    path: str, dst: str, remove_exist: bool, progress: bool, variable: str | None = None
) -> None:
    import xarray as xr

    # consolidated=False: reads any zarr group (the consolidated file is optional)
    with xr.open_zarr(path, chunks={}, consolidated=False) as ds:
        _dataset_to_bigarray(
            _select(ds, variable, path), dst, remove_exist, progress, Path(path).name
        )


def _netcdf_engine(path: str) -> str:
    if not _head(path, 4).startswith(_NETCDF3_MAGICS):
        return "h5netcdf"
    try:
        import scipy  # noqa: F401  (xarray reads classic netCDF through scipy)
    except ImportError:
        raise FormatError(
            f"{path!r} is a classic (netCDF-3) file; reading it needs scipy. Install it "
            "(pip install scipy) or convert the file to netCDF-4 first (nccopy -k nc4)"
        ) from None
    return "scipy"


def from_netcdf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    variable: str | None = None,
    remove_exist: bool = False,
    progress: bool = False,
) -> None:
    """Convert a netCDF file through xarray (``h5netcdf`` for netCDF-4, ``scipy`` for
    classic files) and :func:`bigarray.xarray_backend.to_bigarray`. The dataset is opened
    lazily (dask chunks), so the writer can stream it.

    Parameters
    ----------
    variable : str, optional
        Keep only this data variable (and its coordinates).
    """
    import xarray as xr

    path, inner = split_source(src)
    variable = variable if variable is not None else inner
    engine = _netcdf_engine(path)
    _xarray_backend()
    with xr.open_dataset(path, engine=engine, chunks={}) as ds:
        _dataset_to_bigarray(
            _select(ds, variable, path), os.fspath(dst), remove_exist, progress, Path(path).name
        )


def _open_store_dataset(src: str, variable: str | None) -> Any:
    import xarray as xr

    ds = xr.open_dataset(src, engine="bigarray", chunks={})
    return _select(ds, variable, src)


def _is_zarr(path: str) -> bool:
    """A directory holding a zarr group or array (v2 or v3, as ``to_zarr`` writes one) and
    nothing else, which ``to_zarr`` may replace. Anything besides zarr metadata and chunks
    (a README, a folder of recordings, a symbolic link) makes it the user's: refused."""
    try:
        return _zarr_node(path, 0)
    except (OSError, ValueError, RecursionError):
        return False


#: A chunk's path inside its array: ``c/0/1``, ``c.0.1`` (v3), ``0.1``, ``0/1`` (v2 and
#: v3's "v2" key encoding); ``c`` or ``0`` for a 0-d array.
_CHUNK_KEY = re.compile(r"(c|\d+)([./]\d+)*\Z")
_ZARR_MAX_DEPTH = 64


def _zarr_meta(path: str) -> Any:
    """The JSON of a zarr metadata file (a regular file), or None."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return None
    with open(path, "rb") as f:
        return json.loads(f.read())


def _zarr_node(path: str, depth: int) -> bool:
    """``path`` is a zarr group or array whose every entry is zarr's own."""
    if depth > _ZARR_MAX_DEPTH or not stat.S_ISDIR(os.lstat(path).st_mode):
        return False
    names = os.listdir(path)
    if "zarr.json" in names:
        meta = _zarr_meta(os.path.join(path, "zarr.json"))
        if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
            return False
        kind, own = meta.get("node_type"), {"zarr.json"}
    elif (".zgroup" in names) != (".zarray" in names):
        kind = "group" if ".zgroup" in names else "array"
        meta = _zarr_meta(os.path.join(path, f".z{kind}"))
        if not isinstance(meta, dict) or meta.get("zarr_format") != 2:
            return False
        own = {f".z{kind}", ".zattrs"} | ({".zmetadata"} if kind == "group" else set())
    else:
        return False
    if kind not in ("group", "array"):
        return False
    for name in names:
        full = os.path.join(path, name)
        if name in own:
            if not stat.S_ISREG(os.lstat(full).st_mode):
                return False
        elif not (_zarr_node(full, depth + 1) if kind == "group" else _chunks(full, name, depth)):
            return False
    return True


def _chunks(path: str, key: str, depth: int) -> bool:
    """``path`` (``key`` inside its array) is a chunk file, or a directory of chunks only."""
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        return _CHUNK_KEY.match(key) is not None
    if not stat.S_ISDIR(mode) or depth > _ZARR_MAX_DEPTH:
        return False
    return all(_chunks(os.path.join(path, n), f"{key}/{n}", depth + 1) for n in os.listdir(path))


def _is_netcdf(path: str) -> bool:
    """A netCDF file, which ``to_netcdf`` may replace: netCDF-4 (an HDF5 file whose root
    carries the ``_NCProperties`` attribute that netCDF-C 4.4.1+ and h5netcdf always write)
    or classic (its header, not just its magic). Any other HDF5 file (model weights, an h5py
    dataset, a netCDF-4 file of a netCDF-C older than 2016) is the user's: refused."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        head = _head(path, 24)
        if head.startswith(_NETCDF3_MAGICS):
            return _classic_header(head)
        if not _is_hdf5(path):
            return False
        import h5py

        with h5py.File(path, "r") as f:
            props = f.attrs.get("_NCProperties")
    except Exception:  # a predicate: whatever cannot be read as netCDF is not replaced
        return False
    if isinstance(props, bytes):
        props = props.decode("utf-8", "replace")
    return isinstance(props, str) and props.startswith("version=")


def _classic_header(head: bytes) -> bool:
    """The start of a netCDF classic header: magic, record count, then the dimension list
    (``NC_DIMENSION`` and a count, or ``ABSENT`` and zero)."""
    n = 8 if head[3:4] == b"\x05" else 4  # CDF-5 counts are 64-bit
    tag, count = head[4 + n : 8 + n], head[8 + n : 8 + 2 * n]
    return len(count) == n and (tag == b"\0\0\0\x0a" or (tag == b"\0\0\0\0" and count == bytes(n)))


def to_zarr(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    variable: str | None = None,
    remove_exist: bool = False,
    progress: bool = False,
) -> None:
    """Write a bigarray store out as a zarr (v3) group through xarray:
    ``xr.open_dataset(src, engine="bigarray").to_zarr(dst)``, computed chunk by chunk.

    Raises
    ------
    StoreExistsError
        ``dst`` exists and ``remove_exist`` is False.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    dest = _destination(dst, remove_exist, _is_zarr)
    ds = _open_store_dataset(src, variable)
    try:
        with warnings.catch_warnings():
            # xarray consolidates metadata (fast opens, the xarray convention); zarr 3 warns
            # that v3 has no spec for it yet, at every conversion. Nothing for a user to do.
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=Warning)
            delayed = ds.to_zarr(dest.staging, mode="w-", compute=False)
        with _task_progress(progress, Path(src).name):
            delayed.compute(scheduler="threads")
    except BaseException:
        with contextlib.suppress(Exception):
            dest.abandon()
        raise
    finally:
        ds.close()
    dest.commit()


def to_netcdf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    variable: str | None = None,
    remove_exist: bool = False,
    progress: bool = False,
) -> None:
    """Write a bigarray store out as a netCDF-4 file through xarray and ``h5netcdf``:
    ``xr.open_dataset(src, engine="bigarray").to_netcdf(dst, engine="h5netcdf")``.

    Raises
    ------
    StoreExistsError
        ``dst`` exists and ``remove_exist`` is False.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    dest = _destination(dst, remove_exist, _is_netcdf)
    ds = _open_store_dataset(src, variable)
    try:
        delayed = ds.to_netcdf(dest.staging, engine="h5netcdf", compute=False)
        with _task_progress(progress, Path(src).name):
            delayed.compute(scheduler="threads")
    except BaseException:
        with contextlib.suppress(Exception):
            dest.abandon()
        raise
    finally:
        ds.close()
    dest.commit()


# --------------------------------------------------------------------------- dispatch
def _output_format(dst: str, to: str | None, src_format: str) -> str:
    if to is not None:
        if to not in OUTPUT_FORMATS:
            raise FormatError(
                f"unknown output format to={to!r}; expected one of {OUTPUT_FORMATS!r}"
            )
        return to
    if src_format != "bigarray":
        return "bigarray"
    low = dst.lower().rstrip("/")
    if low.endswith(_ZARR_EXT):
        return "zarr"
    if low.endswith((*_NETCDF_EXT, ".h5", ".hdf5")):
        return "netcdf"
    raise FormatError(
        f"{dst!r}: cannot tell which format to write from a bigarray source; name it *.zarr "
        "or *.nc, or pass to='zarr' / to='netcdf' (--to zarr|netcdf)"
    )


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    variable: str | None = None,
    to: str | None = None,
    remove_exist: bool = False,
    progress: bool = False,
) -> str:
    """Convert ``src`` (any of :data:`FORMATS`) to ``dst``: ``bigarray convert SRC DST``.

    Parameters
    ----------
    src : str or os.PathLike
        Source file or directory; ``"file.h5:/group/dataset"`` (or ``file.npz:key``,
        ``group.zarr:array``, ``file.nc:var``) picks an object inside it.
    dst : str or os.PathLike
        Destination path.
    variable : str, optional
        The array, dataset, group or variable inside ``src`` to convert (overrides a ``:``
        suffix). For a bigarray source, the variable to write out.
    to : {"bigarray", "zarr", "netcdf"}, optional
        Output format. Default: ``"bigarray"`` for every source but a bigarray store, which
        goes to zarr or netCDF by the extension of ``dst`` (``.zarr``, ``.nc``).
    remove_exist : bool, default False
        Replace a bigarray store at ``dst`` (for ``to="zarr"``/``"netcdf"``: a zarr group or
        netCDF file). The new one is written beside it and switched into place when it is
        complete: until then readers see the old one, and a failed conversion leaves it as
        it was. Anything else at ``dst`` (a user's file, a directory that is not a store) is
        refused with :class:`~bigarray.errors.NotAStoreError` and never deleted.
    progress : bool, default False
        Show a tqdm progress bar (rows for array sources, tasks for xarray paths).

    Returns
    -------
    str
        The source format that was detected (one of :data:`FORMATS`).

    Raises
    ------
    FormatError
        The source format is unknown, or the source/output pair is not supported.
    StoreExistsError
        A store exists at ``dst`` and ``remove_exist`` is False.
    NotAStoreError
        Something that is not a store stands at ``dst`` (never replaced).
    SchemaError
        The source's arrays cannot form one store (object dtype, mixed dtypes or row shapes).

    Examples
    --------
    >>> convert("features.h5:/train", "train.bigarray", progress=True)   # doctest: +SKIP
    'hdf5'
    >>> convert("train.bigarray", "train.zarr")                          # doctest: +SKIP
    'bigarray'
    """
    fmt = detect_format(src)
    dst = os.fspath(dst)
    out = _output_format(dst, to, fmt)
    if fmt == "bigarray":
        if out == "bigarray":
            raise FormatError(
                f"{os.fspath(src)!r} is already a bigarray store; to copy it, copy the "
                "directory (or pass --to zarr|netcdf to convert it)"
            )
        (to_zarr if out == "zarr" else to_netcdf)(
            split_source(src)[0],
            dst,
            variable=variable,
            remove_exist=remove_exist,
            progress=progress,
        )
        return fmt
    if out != "bigarray":
        raise FormatError(
            f"cannot convert a {fmt} source straight to {out}; convert it to a bigarray store "
            f"first, then that store to {out}"
        )
    path, inner = split_source(src)
    if fmt in ("legacy", "npy"):
        if variable is not None or inner is not None:
            what = "a legacy bigarray file" if fmt == "legacy" else "a .npy file"
            raise FormatError(
                f"{what} holds one array; drop variable={variable or inner!r} and convert "
                f"{path!r} as a whole"
            )
        if fmt == "legacy":
            convert_legacy(path, dst, remove_exist=remove_exist, progress=progress)
        else:
            from_npy(path, dst, remove_exist=remove_exist, progress=progress)
    elif fmt == "npz":
        from_npz(
            path,
            dst,
            variable=variable if variable is not None else inner,
            remove_exist=remove_exist,
            progress=progress,
        )
    elif fmt == "hdf5":
        from_hdf5(src, dst, variable=variable, remove_exist=remove_exist, progress=progress)
    elif fmt == "zarr":
        from_zarr(src, dst, variable=variable, remove_exist=remove_exist, progress=progress)
    else:
        from_netcdf(src, dst, variable=variable, remove_exist=remove_exist, progress=progress)
    return fmt


def convert_legacy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    remove_exist: bool = False,
    progress: bool = False,
) -> None:
    """Convert a legacy MmapArray/PointerArray file into a new bigarray store.

    Every segment keeps its rows (``start``, ``stop``) and name, so code that used
    ``legacy.indices[name]`` sees the same positions in the new store.

    Parameters
    ----------
    src : str or os.PathLike
        The legacy file (see :func:`bigarray.core.legacy.read_legacy` for what is checked).
    dst : str or os.PathLike
        Where to create the new store.
    remove_exist : bool, default False
        Replace an existing store at ``dst`` instead of raising.
    progress : bool, default False
        Show a ``tqdm`` progress bar counted in rows.

    Raises
    ------
    StoreExistsError
        ``dst`` exists and ``remove_exist`` is False.
    OverlapError
        Two legacy segments share rows (the original writer allowed it; the new format does not).
    BigArrayError
        Anything :func:`read_legacy` or the writer raises. On any failure during the copy,
        the half-written store at ``dst`` is deleted.
    """
    legacy = read_legacy(src)
    array = legacy.array.view(np.ndarray)  # plain views: slicing a memmap is ~10x slower
    # Plan every write before creating anything, so a refused file leaves no store behind.
    writes: list[tuple[int, Any]]
    if legacy.indices is None:
        row_nbytes = max(1, array.itemsize * int(np.prod(array.shape[1:], dtype=object)))
        step = max(1, CONVERT_CHUNK_BYTES // row_nbytes)
        writes = [(start, array[start : start + step]) for start in range(0, len(array), step)]
    else:
        writes = list(legacy_runs(legacy, legacy.indices))

    from tqdm.auto import tqdm  # imported here: only conversions need it

    dest = _destination(dst, remove_exist)
    # shape[0] keeps the new store as long as the legacy one even where its last rows were
    # never named (rows no segment covers read as zeros there).
    cls = MmapArrayWriter if legacy.indices is None else PointerArrayWriter
    try:
        writer: Any = cls(dest.staging, shape=array.shape, dtype=array.dtype)
    except BaseException:
        dest.abandon()
        raise
    sizes = [sum(map(len, p.values())) if isinstance(p, dict) else len(p) for _, p in writes]
    bar = tqdm(total=sum(sizes), unit="row", disable=not progress, desc=Path(src).name)
    try:
        for (start, payload), rows in zip(writes, sizes, strict=True):
            writer.write(payload, start_position=start)
            bar.update(rows)
    except BaseException:
        # Leave nothing half-converted: drop the journaled rows, release the writer and
        # delete the new store beside dst (a store at dst is untouched until the switch).
        for cleanup in (writer.writer.abort, writer.close, dest.abandon):
            with contextlib.suppress(Exception):  # the original error is the one to report
                cleanup()
        raise
    finally:
        bar.close()
    try:
        writer.close()
    except BaseException:
        dest.abandon()
        raise
    dest.commit()
