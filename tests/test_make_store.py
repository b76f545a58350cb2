"""conftest's ``make_store``: the stores it builds hold exactly what it says they hold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bigarray import MmapArray, PointerArray
from bigarray.core.store import read_manifest
from bigarray.core.verify import verify_store


@pytest.mark.parametrize(
    "dtype", ["f4", "<f8", "i2", "u8", "?", "c8", "U5", "S3", "M8[ns]", "m8[s]"]
)
def test_each_dtype_is_stored_as_returned(make_store: Any, dtype: str) -> None:
    path, segs = make_store(segments=6, dtype=dtype, trailing=(2,), lengths=(0, 4))
    x = PointerArray(path)
    assert x.dtype == np.dtype(dtype) and x.shape[1:] == (2,)
    assert list(x.indices) == [f"seg{i:05d}" for i in range(6)]
    for name, rows in segs.items():
        np.testing.assert_array_equal(x[name], rows)
    assert verify_store(path).ok


def test_given_segments_several_commits_and_the_same_seed(make_store: Any) -> None:
    given = {"b": np.ones((2, 3), "f4"), "a": np.zeros((0, 3), "f4"), "c": np.full((1, 3), 7, "f4")}
    path, segs = make_store(segments=given, trailing=(3,), commits=3)
    assert list(segs) == ["b", "a", "c"] and dict(PointerArray(path).indices) == {
        "b": (0, 2),
        "a": (2, 2),
        "c": (2, 3),
    }
    manifest = read_manifest(str(path))
    assert manifest.generation >= 3  # one commit per part
    _, again = make_store(segments=4, seed=9)
    _, same = make_store(segments=4, seed=9)
    assert all(np.array_equal(again[k], same[k]) for k in again)


def test_unnamed_stores_hold_the_rows_without_an_index(make_store: Any) -> None:
    path, segs = make_store(segments=[3, 0, 2], named=False, dtype="i4", trailing=())
    assert read_manifest(str(path)).segments is None
    np.testing.assert_array_equal(np.asarray(MmapArray(path)), np.concatenate(list(segs.values())))
