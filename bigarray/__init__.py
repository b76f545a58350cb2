"""bigarray: huge ragged arrays on memory-mapped files that dask and xarray treat as native.

A store keeps a collection of variable-length arrays as ONE array concatenated along axis 0
plus a segment index ``name -> [start, stop)``. See the README for the tour.
"""

from __future__ import annotations

from .arrays import MmapArray, MmapArrayWriter, PointerArray, PointerArrayWriter
from .core.manage import getsize, remove
from .core.store import Store, is_store
from .core.writer import StoreWriter
from .errors import BigArrayError
from .lazy import open_array as open

__version__ = "1.0.0.dev0"

__all__ = [
    "BigArrayError",
    "MmapArray",
    "MmapArrayWriter",
    "PointerArray",
    "PointerArrayWriter",
    "Store",
    "StoreWriter",
    "__version__",
    "getsize",
    "is_store",
    "open",
    "remove",
]
