"""A remote store committed again: every open sees the new commit, and anything opened or
planned on the old one refuses to read ("the store changed ... open it again"), on moto S3
and the LocalCluster's worker processes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bigarray.core.store import open_store
from bigarray.errors import StoreChangedError

da = pytest.importorskip("dask.array")


@pytest.fixture()
def url(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/stale.bigarray"


def write(url: str, options: dict[str, Any], value: float, rows: int, replace: bool) -> None:
    from bigarray.dask_backend import to_bigarray

    x = da.full((rows, 4), value, dtype="f8", chunks=(rows // 4, 4))
    segs = {f"s{i}": (i * (rows // 20), (i + 1) * (rows // 20)) for i in range(20)}
    to_bigarray(x, url, segs, storage_options=options, remove_exist=replace)


def _forget_open_stores() -> None:
    from bigarray import lazy

    lazy._CACHE.clear()


def test_a_graph_planned_before_a_rewrite_refuses_to_read_the_new_store(
    url: str, s3_options: dict[str, Any], client: Any
) -> None:
    from bigarray.dask_backend import from_bigarray, map_segments

    write(url, s3_options, 1.0, 4000, False)
    total = from_bigarray(url, storage_options=s3_options, chunks=1000).sum()
    per_segment = map_segments(len, url, storage_options=s3_options, chunks=1000)
    assert float(total.compute()) == 4000 * 4
    write(url, s3_options, 2.0, 4000, True)
    # workers as fresh as new ones: nothing cached from the first computation (a restart
    # of the shared cluster costs minutes on a loaded machine)
    client.run(_forget_open_stores)
    with pytest.raises(StoreChangedError, match="changed after this array was opened"):
        total.compute()
    with pytest.raises(StoreChangedError, match="changed after this array was opened"):
        per_segment.compute()
    fresh = from_bigarray(url, storage_options=s3_options, chunks=1000).sum()
    assert float(fresh.compute()) == 4000 * 4 * 2.0


def test_a_store_opened_before_a_rewrite_says_replaced_not_damaged(
    url: str, s3_options: dict[str, Any]
) -> None:
    write(url, s3_options, 1.0, 400, False)
    old = open_store(url, s3_options)
    write(url, s3_options, 2.0, 400, True)
    with pytest.raises(StoreChangedError, match="was replaced") as info:
        old.read_rows("data", 0, 400)
    assert "damaged" not in str(info.value).replace("is not damaged", "")
    assert np.all(open_store(url, s3_options).read_rows("data", 0, 400) == 2.0)


def test_xarray_opens_the_current_commit_after_a_rewrite(
    url: str, s3_options: dict[str, Any], client: Any
) -> None:
    xr = pytest.importorskip("xarray")
    write(url, s3_options, 1.0, 1000, False)
    ds = xr.open_dataset(url, engine="bigarray", storage_options=s3_options)
    assert float(ds["data"].mean()) == 1.0
    write(url, s3_options, 3.0, 2000, True)
    again = xr.open_dataset(url, engine="bigarray", storage_options=s3_options)
    assert again["data"].shape == (2000, 4)
    assert float(again["data"].mean()) == 3.0
    assert float(again["data"].sum()) == 3.0 * 2000 * 4
    chunked = xr.open_dataset(url, engine="bigarray", storage_options=s3_options, chunks={})
    assert float(chunked["data"].mean().compute()) == 3.0  # on the cluster's workers
