"""Write files in the exact on-disk layout of the original 2020 ``bigarray`` (trungnt13).

Byte for byte what ``MmapArrayWriter`` / ``PointerArrayWriter`` of trungnt13/bigarray produce
(see the docstring of :mod:`bigarray.core.legacy`), without importing that library. Also builds
hostile variants for the security tests.
"""

from __future__ import annotations

import marshal
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"mmapdata"
MAX_META = 486


def data_offset(dtype: Any) -> int:
    """The original ``_aligned_memmap_offset``: first multiple of the itemsize >= 502."""
    itemsize = np.dtype(dtype).itemsize
    return int(math.ceil((len(MAGIC) + 8 + MAX_META) / itemsize) * itemsize)


def header(meta: bytes) -> bytes:
    """Magic, the ``"%8d"`` ASCII length field, then the marshal bytes."""
    return MAGIC + (b"%8d" % len(meta)) + meta


def write_raw_legacy(path: str | os.PathLike[str], meta: bytes, data: bytes, offset: int) -> None:
    """Write any marshal payload and data bytes in the legacy layout (for hostile tests)."""
    head = header(meta)
    assert len(head) <= offset, "header overlaps the data"
    Path(path).write_bytes(head + b"\0" * (offset - len(head)) + data)


def write_legacy_mmap(
    path: str | os.PathLike[str], array: np.ndarray, *, dtype_text: str | None = None
) -> None:
    """Write ``array`` as the original ``MmapArrayWriter`` would.

    ``dtype_text`` overrides the dtype string in the header: the original wrote
    ``str(dtype)`` on creation but ``dtype.name`` after a resize ("str160" for "<U5").
    """
    array = np.ascontiguousarray(array)
    meta = marshal.dumps([dtype_text or str(array.dtype), tuple(array.shape)])
    assert len(meta) <= MAX_META
    write_raw_legacy(path, meta, array.tobytes(), data_offset(array.dtype))


def append_index(path: str | os.PathLike[str], index_pickle: bytes) -> None:
    """What ``PointerArrayWriter.flush`` appends: the pickle, then its 8-byte big-endian size."""
    with open(path, "ab") as f:
        f.write(index_pickle + len(index_pickle).to_bytes(8, "big"))


def write_legacy_pointer(
    path: str | os.PathLike[str],
    array: np.ndarray,
    indices: Mapping[str, tuple[int, int]],
    *,
    flushes: int = 1,
    protocol: int = pickle.DEFAULT_PROTOCOL,
) -> None:
    """Write a PointerArray file; ``flushes > 1`` appends the index several times, as
    several ``flush()`` calls (or writer processes) did; the reader must use the last one."""
    write_legacy_mmap(path, array)
    for _ in range(flushes):
        append_index(path, pickle.dumps(dict(indices), protocol=protocol))


class _RunsCommand:
    """Pickles to ``os.system(command)``, like an attacker's payload would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def malicious_pickles(marker: str | os.PathLike[str]) -> dict[str, bytes]:
    """Index pickles that create ``marker`` if ever unpickled with a plain ``pickle.loads``.

    ``protocol0`` uses the GLOBAL opcode (hand-written bytes), ``protocol4`` STACK_GLOBAL with
    the payload nested inside an otherwise valid index dict.
    """
    command = f"touch '{os.fspath(marker)}'"
    assert "'" not in os.fspath(marker)
    return {
        "protocol0": b"cos\nsystem\n(V" + command.encode() + b"\ntR.",
        "protocol4": pickle.dumps({"a": (0, 1), "b": _RunsCommand(command)}, protocol=4),
    }


def write_malicious_legacy(
    path: str | os.PathLike[str], marker: str | os.PathLike[str], variant: str = "protocol0"
) -> None:
    """A valid-looking PointerArray file whose index pickle runs ``touch marker``."""
    write_legacy_mmap(path, np.arange(4, dtype="float32"))
    append_index(path, malicious_pickles(marker)[variant])
