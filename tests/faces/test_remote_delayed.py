"""``to_bigarray(..., compute=False)``: nothing is written until the Delayed runs, and a
failed block leaves nothing behind (moto S3 and a local path, on the LocalCluster with
worker processes of tests/conftest.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray.core.filesystem import FileAccess
from bigarray.core.store import open_store
from bigarray.errors import StoreNotFoundError

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


@pytest.fixture()
def bucket(s3_options: dict[str, Any]) -> str:
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(**s3_options)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.call_s3("create_bucket", Bucket=name)
    fs.invalidate_cache()
    return name


def to_bigarray(*args: Any, **kwargs: Any) -> Any:
    from bigarray.dask_backend import to_bigarray as write

    return write(*args, **kwargs)


def version(value: float) -> Any:
    return da.full((400, 3), value, dtype="f8", chunks=(100, 3))


def names(tag: str) -> dict[str, tuple[int, int]]:
    return {f"{tag}{i}": (i * 50, (i + 1) * 50) for i in range(8)}


def _fail_on_third_block(block: np.ndarray, block_info: Any = None) -> np.ndarray:
    if block_info is not None and block_info[0]["chunk-location"][0] == 2:
        raise RuntimeError("task failed on purpose")
    return block


def everything(where: str, root: str, options: dict[str, Any] | None) -> set[str]:
    """Every file under ``root`` (a local directory or a bucket)."""
    if where == "local":
        return {
            os.path.relpath(os.path.join(d, f), root)
            for d, dirs, files in os.walk(root)
            for f in files + [x + "/" for x in dirs]
        }
    acc = FileAccess(root, options)
    acc.invalidate()
    return set(acc.fs.find(acc.root, withdirs=False))


@pytest.fixture(params=["local", "s3"])
def place(
    request: pytest.FixtureRequest, tmp_path: Path, client: Any
) -> tuple[str, str, dict[str, Any] | None]:
    """(kind, root, options): where stores of one test go."""
    if request.param == "local":
        return "local", str(tmp_path), None
    b = request.getfixturevalue("bucket")
    return "s3", f"s3://{b}", request.getfixturevalue("s3_options")


@pytest.mark.parametrize("replace", [False, True], ids=["new", "replace"])
def test_building_a_delayed_write_touches_nothing(
    place: tuple[str, str, dict[str, Any] | None], replace: bool
) -> None:
    where, root, opts = place
    url = f"{root}/x.bigarray"
    if replace:
        to_bigarray(version(1.0), url, names("a"), storage_options=opts)
    before = everything(where, root, opts)
    delayed = to_bigarray(
        version(2.0), url, names("b"), storage_options=opts, remove_exist=replace, compute=False
    )
    assert everything(where, root, opts) == before, "building the Delayed wrote something"
    delayed.compute()
    store = open_store(url, opts)
    assert np.all(store.read_rows("data", 0, 400) == 2.0)
    assert store.index is not None and sorted(store.index.keys()) == sorted(names("b"))


@pytest.mark.parametrize("replace", [False, True], ids=["new", "replace"])
def test_a_failed_block_of_a_delayed_write_leaves_nothing_behind(
    place: tuple[str, str, dict[str, Any] | None], replace: bool, client: Any
) -> None:
    where, root, opts = place
    url = f"{root}/x.bigarray"
    if replace:
        to_bigarray(version(1.0), url, names("a"), storage_options=opts)
    before = everything(where, root, opts)
    bad = version(2.0).map_blocks(_fail_on_third_block, dtype="f8")
    delayed = to_bigarray(
        bad, url, names("b"), storage_options=opts, remove_exist=replace, compute=False
    )
    with pytest.raises(RuntimeError, match="on purpose"):
        client.compute(delayed).result()
    assert everything(where, root, opts) == before, "the failed write left objects"
    if replace:
        store = open_store(url, opts)
        assert np.all(store.read_rows("data", 0, 400) == 1.0)
    else:
        with pytest.raises(StoreNotFoundError):
            open_store(url, opts)


def test_a_failed_block_of_a_delayed_write_on_threads_leaves_nothing(tmp_path: Path) -> None:
    url = f"memory://delayed-{uuid.uuid4().hex[:8]}/x.bigarray"
    bad = version(2.0).map_blocks(_fail_on_third_block, dtype="f8")
    delayed = to_bigarray(bad, url, names("b"), compute=False)
    with pytest.raises(RuntimeError, match="on purpose"):
        delayed.compute(scheduler="threads")
    acc = FileAccess(url)
    acc.invalidate()
    assert not acc.fs.exists(acc.root) or not acc.fs.find(acc.root)


def test_a_delayed_write_computed_twice_keeps_the_first_commit(
    bucket: str, s3_options: dict[str, Any], client: Any
) -> None:
    """The second run finds the store its first run committed: it is refused, and its
    cleanup removes its own objects only, never those the committed manifest names."""
    from bigarray.errors import StoreExistsError

    url = f"s3://{bucket}/twice.bigarray"
    delayed = to_bigarray(version(2.0), url, names("b"), storage_options=s3_options, compute=False)
    delayed.compute()
    before = everything("s3", f"s3://{bucket}", s3_options)
    with pytest.raises(StoreExistsError):
        delayed.compute()
    assert everything("s3", f"s3://{bucket}", s3_options) == before
    store = open_store(url, s3_options)
    assert np.all(store.read_rows("data", 0, 400) == 2.0)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_cleanup_of_a_session_never_removes_committed_objects(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    from bigarray.core.sharded import (
        cleanup_session,
        commit_shards,
        plan_sharded_write,
        write_shard,
    )

    opts = None
    url = str(tmp_path / "x.bigarray")
    if where == "s3":
        opts = request.getfixturevalue("s3_options")
        url = f"s3://{request.getfixturevalue('bucket')}/x.bigarray"
    data = np.arange(40.0).reshape(20, 2)
    segments = {"a": 10, "b": 10}
    plan = plan_sharded_write(url, data.shape, data.dtype, [10, 10], segments, "data", opts)
    results = [write_shard(data[a:b], plan, i) for i, (a, b) in enumerate([(0, 10), (10, 20)])]
    commit_shards(results, plan)
    cleanup_session(plan)  # a run of the same session that failed after the commit
    store = open_store(url, opts)
    np.testing.assert_array_equal(store.read_rows("data", 0, 20), data)


@pytest.mark.parametrize("compute", [True, False])
def test_a_failed_sharded_write_to_a_local_path_leaves_no_directory(
    tmp_path: Path, compute: bool
) -> None:
    from bigarray.dask_backend import to_bigarray_sharded

    bad = version(2.0).map_blocks(_fail_on_third_block, dtype="f8")
    with dask.config.set(scheduler="threads"), pytest.raises(RuntimeError, match="on purpose"):
        out = to_bigarray_sharded(bad, str(tmp_path / "x.bigarray"), names("b"), compute=compute)
        if not compute:
            out.compute()
    assert os.listdir(tmp_path) == []
    # and the path is free for the next write
    with dask.config.set(scheduler="threads"):
        to_bigarray_sharded(version(1.0), str(tmp_path / "x.bigarray"), names("b"))
    assert open_store(str(tmp_path / "x.bigarray"), None).variable().rows == 400


def test_shard_tasks_carry_no_segment_table(tmp_path: Path) -> None:
    """Every shard task gets the plan without the names (only the commit needs them)."""
    import pickle

    from bigarray.core.sharded import commit_shards, plan_sharded_write, write_shard

    n = 50_000
    data = np.arange(2.0 * n).reshape(n, 2)
    url = str(tmp_path / "x.bigarray")
    plan = plan_sharded_write(
        url, data.shape, data.dtype, [n // 2, n // 2], {f"s{i}": 1 for i in range(n)}
    )
    light = plan.for_tasks()
    assert len(pickle.dumps(light)) < 2_000 < len(pickle.dumps(plan))
    results = [write_shard(data[: n // 2], light, 0), write_shard(data[n // 2 :], light, 1)]
    commit_shards(results, plan)
    store = open_store(url, None)
    assert store.index is not None and len(store.index) == n
    np.testing.assert_array_equal(store.read_rows("data", 0, n), data)
