"""Checks of arrays a writer is given, before any byte is written: shapes, dtypes, and
integers that would wrap in the store's dtype."""

from __future__ import annotations

import numpy as np

from ..errors import SchemaError

__all__ = ["check_arrays", "check_fits", "narrowing_ints"]


def narrowing_ints(src: np.dtype, dst: np.dtype) -> bool:
    """True when integer (or bool) data of ``src`` may hold values ``dst`` cannot."""
    return src.kind in "iub" and dst.kind in "iu" and not np.can_cast(src, dst, "safe")


def check_fits(a: np.ndarray, dtype: np.dtype, i: int) -> None:
    """Refuse integers that would wrap in ``dtype`` (numpy's cast does so silently)."""
    if not a.size:
        return
    lo, hi = int(a.min()), int(a.max())
    info = np.iinfo(dtype)
    if lo < info.min or hi > info.max:
        bad = lo if lo < info.min else hi
        raise SchemaError(
            f"array #{i} holds {bad}, which does not fit this {dtype} store (values "
            f"{info.min}..{info.max}); storing it would lose information. Write it to a store "
            f"of a wider dtype, or clip it first (np.clip(arr, {info.min}, {info.max}))"
        )


def check_arrays(out: list[np.ndarray], dtype: np.dtype, trailing: tuple[int, ...]) -> np.ndarray:
    """Check every array's shape and dtype against a store of ``dtype`` whose rows have
    shape ``trailing``; return the row count of each array. Data of another type must cast
    with ``same_kind`` rules (``safe`` for strings); integers must fit."""
    shapes = [a.shape for a in out]
    bad = [i for i, sh in enumerate(shapes) if not sh or sh[1:] != trailing]
    if bad:
        i = bad[0]
        if not shapes[i]:
            raise SchemaError(
                f"array #{i} is a scalar ({out[i]!r}); write arrays with at least one row, "
                "e.g. np.atleast_1d(x)"
            )
        want = f"(n, {', '.join(map(str, trailing))})" if trailing else "(n,) (1-D)"
        raise SchemaError(
            f"array #{i} has shape {shapes[i]}; rows of this store have shape "
            f"{trailing}, so arrays must have shape {want}"
        )
    for k in {a.dtype for a in out}:
        if k == dtype:
            continue
        strings = dtype.kind in "SU" or k.kind in "SU"
        if not np.can_cast(k, dtype, "safe" if strings else "same_kind"):
            raise SchemaError(
                f"cannot store {k} data in this {dtype} store without losing information; "
                f"convert it first (arr.astype({str(dtype)!r})) or write to a {k} store"
            )
        if narrowing_ints(k, dtype):
            for i, a in enumerate(out):
                if a.dtype == k:
                    check_fits(a, dtype, i)
    return np.fromiter((sh[0] for sh in shapes), np.int64, len(shapes))
