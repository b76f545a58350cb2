"""Opening a committed store for reading: manifest, segment index and data, checked first.

:class:`Store` is the read side every face builds on (the seed arrays, dask, xarray).
It reads ``manifest.json`` once, maps the index lazily, and hands out numpy views of
each variable's data after checking every file's size against the manifest, so a
truncated file is a :class:`~bigarray.errors.StoreCorruptedError`, never a SIGBUS.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from .errors import (
    NotAStoreError,
    StoreCorruptedError,
    StoreNotFoundError,
    VariableNotFoundError,
)
from .fileutil import map_readonly
from .format import (
    DEFAULT_VARIABLE,
    INDEX_ROLES,
    MANIFEST_NAME,
    Manifest,
    Variable,
    parse_manifest,
)
from .index import SegmentIndex, index_nbytes

# Index files smaller than this are read into memory: no descriptor or map is kept open.
_MAP_THRESHOLD = 1 << 20


def is_store(path: str) -> bool:
    """True if ``path`` is a directory holding a bigarray manifest (never raises)."""
    try:
        with open(os.path.join(path, MANIFEST_NAME), "rb") as f:
            return b'"format": "bigarray"' in f.read(4096)
    except (OSError, TypeError, ValueError):
        return False


def read_manifest(path: str) -> Manifest:
    """Read and validate the committed manifest of the store at ``path``."""
    mpath = os.path.join(path, MANIFEST_NAME)
    try:
        with open(mpath, "rb") as f:
            raw = f.read(64 << 20)
    except FileNotFoundError:
        if not os.path.exists(path):
            raise StoreNotFoundError(
                f"no bigarray store at {path!r}: the path does not exist. Create one with "
                "PointerArrayWriter(path, ...) or check the path."
            ) from None
        if os.path.isfile(path):
            from .legacy import is_legacy_file

            hint = (
                " It is a file of the original 2020 bigarray; convert it with "
                f"`bigarray convert {path} NEW.bigarray`."
                if is_legacy_file(path)
                else ""
            )
            raise NotAStoreError(f"{path!r} is a file, not a bigarray store directory.{hint}")
        raise NotAStoreError(
            f"{path!r} is a directory without {MANIFEST_NAME}: not a bigarray store (or one "
            "whose first commit never finished)"
        ) from None
    except IsADirectoryError:
        raise NotAStoreError(f"{mpath!r} is a directory, not a manifest file") from None
    except NotADirectoryError:
        raise NotAStoreError(f"{path!r} is a file, not a bigarray store directory") from None
    return parse_manifest(raw, path)


def resolve_inside(store: str, rel: str) -> str:
    """``store/rel``, refusing symlinks that lead out of the store directory."""
    from .errors import HostileInputError

    full = os.path.join(store, rel)
    real_store = os.path.realpath(store)
    real = os.path.realpath(full)
    if real != real_store and not real.startswith(real_store + os.sep):
        raise HostileInputError(
            f"{store!r}: manifest file {rel!r} resolves to {real!r}, outside the store "
            "(a symlink leaving the directory); refusing to read it"
        )
    return full


def file_size(full: str, where: str) -> int:
    try:
        return os.stat(full).st_size
    except FileNotFoundError:
        raise StoreCorruptedError(
            f"{where}: file {full!r} listed in the manifest is missing; the store was damaged "
            "after its last commit. Restore the file or the whole store from a copy."
        ) from None


class Store:
    """A committed store opened for reading (local directory).

    Parameters
    ----------
    path
        The store directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.manifest = read_manifest(self.path)
        self._index: SegmentIndex | None = None
        self._maps: list[Any] = []

    # ------------------------------------------------------------------ index
    @property
    def index(self) -> SegmentIndex | None:
        """The segment index (``None`` for a store written without names)."""
        if self._index is None and self.manifest.segments is not None:
            self._index = self._open_index()
        return self._index

    def _open_index(self) -> SegmentIndex:
        spec = self.manifest.segments
        assert spec is not None
        buffers: dict[str, Any] = {}
        names_len = None
        for role in ("name_offsets", *[r for r in INDEX_ROLES if r != "name_offsets"]):
            full = resolve_inside(self.path, spec.files[role])
            need = spec.offsets[role] + index_nbytes(spec, role, names_len)
            buffers[role] = self._load(full, need, role)
            if role == "name_offsets":
                last = np.frombuffer(buffers[role], "<i8", 1, spec.offsets[role] + spec.count * 8)
                names_len = int(last[0])
                if names_len < 0:
                    raise StoreCorruptedError(f"{self.path}: negative segment name length")
        return SegmentIndex(buffers, spec, self.path)

    def _load(self, full: str, need: int, role: str) -> Any:
        try:
            fd = os.open(full, os.O_RDONLY)
        except FileNotFoundError:
            file_size(full, self.path)  # raises the clear error
            raise
        try:
            size = os.fstat(fd).st_size
            if size < need:
                raise StoreCorruptedError(
                    f"{self.path}: index file {full!r} ({role}) holds {size:,} bytes but the "
                    f"manifest needs {need:,}; it was truncated or replaced after the last commit. "
                    f"Run `bigarray verify {self.path}` for details."
                )
            if need <= _MAP_THRESHOLD:
                return os.pread(fd, need, 0)
            m = map_readonly(fd, need)
            self._maps.append(m)
            return m
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ data
    def variable(self, name: str | None = None) -> Variable:
        """The manifest entry of variable ``name`` (default: ``data`` or the only one)."""
        vars_ = self.manifest.variables
        if name is None:
            if DEFAULT_VARIABLE in vars_:
                name = DEFAULT_VARIABLE
            elif len(vars_) == 1:
                name = next(iter(vars_))
            else:
                raise _no_variable(self.path, name, vars_)
        if name not in vars_:
            raise _no_variable(self.path, name, vars_)
        return vars_[name]

    def shard_views(self, var: Variable) -> list[np.ndarray]:
        """One read-only ``numpy.memmap`` per shard, after checking each file's size."""
        out = []
        for shard in var.shards:
            shape = (shard.stop - shard.start, *var.shape[1:])
            nbytes = var.row_nbytes * (shard.stop - shard.start)
            full = resolve_inside(self.path, shard.path)
            size = file_size(full, self.path)
            if size < shard.offset + nbytes:
                raise StoreCorruptedError(
                    f"data file {full!r} holds {size:,} bytes but the manifest needs "
                    f"{shard.offset + nbytes:,} for shape {shape} {var.dtype}; the file was "
                    "truncated or replaced after the last commit. Restore it, or run "
                    f"`bigarray verify {self.path}` for details."
                )
            if nbytes == 0:
                out.append(np.zeros(shape, var.dtype))
            else:
                out.append(np.memmap(full, var.dtype, "r", shard.offset, shape))
        return out

    def read_rows(self, name: str | None, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of a variable as an array (a view when one shard holds them)."""
        var = self.variable(name)
        views = self.shard_views(var)
        parts = []
        for shard, view in zip(var.shards, views):
            a, b = max(start, shard.start), min(stop, shard.stop)
            if a < b:
                parts.append(view[a - shard.start : b - shard.start])
        if len(parts) == 1:
            return np.asarray(parts[0])
        if not parts:
            return np.zeros((0, *var.shape[1:]), var.dtype)
        return np.concatenate(parts)

    def close(self) -> None:
        """Release the index maps (numpy views handed out keep their own maps alive)."""
        if self._index is not None:
            self._index.release()
            self._index = None
        for m in self._maps:
            with contextlib.suppress(BufferError):
                m.close()
        self._maps.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _no_variable(path: str, name: object, vars_: dict[str, Variable]) -> VariableNotFoundError:
    return VariableNotFoundError(
        f"{path!r} has no variable {name!r}; it holds {sorted(vars_)}. Pass variable=... "
        "with one of those."
    )
