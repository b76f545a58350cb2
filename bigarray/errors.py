"""The one exception hierarchy of bigarray.

Every error is a :class:`BigArrayError` and also the builtin exception a caller would
naturally catch (``KeyError`` for a missing name, ``FileNotFoundError`` for a missing
store, ...), so ``except KeyError`` keeps working for code written against plain dicts.
Messages say what is wrong, the bad value, what was expected and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BigArrayError",
    "BigArrayWarning",
    "ClosedError",
    "CommitConflictError",
    "DuplicateSegmentError",
    "FormatError",
    "HostileInputError",
    "IntegrityError",
    "NotAStoreError",
    "OverlapError",
    "ReadOnlyError",
    "RemoteStoreError",
    "SamplerError",
    "SchemaError",
    "SegmentIndexError",
    "SegmentNotFoundError",
    "StorageOptionsError",
    "StoreAccessError",
    "StoreChangedError",
    "StoreCorruptedError",
    "StoreExistsError",
    "StoreNotFoundError",
    "VariableNotFoundError",
    "WriteFailedError",
]


class BigArrayError(Exception):
    """Base class of every error raised by bigarray."""


class BigArrayWarning(UserWarning):
    """Base class of every warning issued by bigarray (the test suite turns these into errors)."""


class StoreNotFoundError(BigArrayError, FileNotFoundError):
    """No store (or no file) exists at the given path or URL."""


class StoreExistsError(BigArrayError, FileExistsError):
    """A store already exists where a new one was asked for (pass ``remove_exist=True``)."""


class NotAStoreError(BigArrayError, ValueError):
    """The path exists but is not a bigarray store (no manifest, or a foreign file)."""


class FormatError(BigArrayError, ValueError):
    """A manifest or header does not follow the bigarray format (or a newer version of it)."""


class StoreCorruptedError(FormatError):
    """A store's files disagree with its manifest (truncated, replaced or damaged)."""


class IntegrityError(StoreCorruptedError):
    """A checksum recorded at commit does not match the bytes on disk."""


class HostileInputError(FormatError):
    """A manifest or legacy file asks for something unsafe (paths outside the store, code)."""


class SchemaError(BigArrayError, ValueError):
    """Data written does not fit the store: wrong dtype, trailing shape, name type, ..."""


class SegmentNotFoundError(BigArrayError, KeyError):
    """A segment name is not in the index."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class VariableNotFoundError(BigArrayError, KeyError):
    """A store has no variable of the given name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateSegmentError(BigArrayError, KeyError):
    """Two different segments were given the same name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OverlapError(BigArrayError, ValueError):
    """Two segments (from one writer or several) cover the same rows."""


class ReadOnlyError(BigArrayError, PermissionError):
    """A write was attempted through a read-only array or store."""


class ClosedError(BigArrayError, ValueError):
    """A writer or array was used after ``close()``."""


class CommitConflictError(BigArrayError, RuntimeError):
    """Another process changed the store in a way that cannot be merged with this commit."""


class WriteFailedError(BigArrayError, OSError):
    """The operating system refused a write (disk full, file size limit, permissions)."""


class StorageOptionsError(BigArrayError, ValueError):
    """``storage_options`` were given where they cannot apply (a plain local path)."""


class RemoteStoreError(BigArrayError, OSError):
    """A remote store (fsspec URL) could not be read or written: network, service, protocol."""


class StoreAccessError(RemoteStoreError, PermissionError):
    """Access to a store was refused (no permission, wrong credentials, a bucket policy)."""


class SegmentIndexError(BigArrayError, IndexError):
    """A segment position (``SegmentDataset[i]``) is outside ``[0, number of segments)``."""


class SamplerError(BigArrayError, ValueError):
    """A sampler was given bad settings, another dataset, or another sampler's state."""


class StoreChangedError(SchemaError):
    """The store was replaced (rewritten, committed again) after this array, handle,
    dataset or sampler plan was opened on it: the rows it refers to are gone. Open the
    store again."""
