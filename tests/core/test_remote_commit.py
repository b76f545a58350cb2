"""Remote commits: one version at a time, the previous commit kept until the next lands.

Every test runs against the moto S3 server on 127.0.0.1 and the ``dask.distributed``
LocalCluster with worker processes (tests/conftest.py); no mocks.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import numpy as np
import pytest

from bigarray.core.commit import ConcurrentCommitError
from bigarray.core.filesystem import FileAccess
from bigarray.core.format import manifest_objects
from bigarray.core.store import open_store
from bigarray.errors import StoreExistsError, StoreNotFoundError

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


@pytest.fixture()
def bucket(s3_bucket: str) -> str:
    """A fresh bucket (conftest's ``s3_bucket``)."""
    return s3_bucket


@pytest.fixture()
def url(bucket: str) -> str:
    return f"s3://{bucket}/race-{uuid.uuid4().hex[:8]}.bigarray"


def to_bigarray(*args: Any, **kwargs: Any) -> Any:
    from bigarray.dask_backend import to_bigarray as write

    return write(*args, **kwargs)


def version(value: float, rows: int = 400, width: int = 3) -> Any:
    return da.full((rows, width), value, dtype="f8", chunks=(100, width))


def names(tag: str, n: int = 8, length: int = 50) -> dict[str, tuple[int, int]]:
    return {f"{tag}{i}": (i * length, (i + 1) * length) for i in range(n)}


def all_objects(url: str, options: dict[str, Any]) -> set[str]:
    acc = FileAccess(url, options)
    acc.invalidate()
    root = acc.root + "/"
    return {p[len(root) :] for p in acc.fs.find(acc.root)}


def assert_one_clean_version(url: str, options: dict[str, Any], value: float, tag: str) -> None:
    """The store holds exactly one writer's rows and names, and nothing else is stored."""
    store = open_store(url, options)
    rows = store.read_rows("data", 0, store.variable().rows)
    assert np.all(rows == value), "rows of one writer under the names of another"
    assert store.index is not None
    assert sorted(store.index.keys()) == sorted(names(tag))
    left = all_objects(url, options) - {"manifest.json"} - manifest_objects(store.manifest)
    assert not left, f"objects of a writer that did not commit remain: {sorted(left)}"


def race(
    n: int, work: Any, monkeypatch: pytest.MonkeyPatch, pause: float = 1.0
) -> list[BaseException | None]:
    """Run ``work(i)`` in ``n`` threads, every commit paused ``pause`` s after it read the
    manifest it replaces, so that all of them decide on the same manifest."""
    monkeypatch.setenv("BIGARRAY_REMOTE_CRASH_AT", f"remote-before-manifest:sleep={pause}")
    out: list[BaseException | None] = [None] * n

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_two_writers_racing_on_a_new_url_commit_one_version_the_other_is_told(
    url: str, s3_options: dict[str, Any], client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def work(i: int) -> None:
        to_bigarray(version(float(i + 1)), url, names("ab"[i]), storage_options=s3_options)

    errors = race(2, work, monkeypatch)
    failed = [e for e in errors if e is not None]
    assert len(failed) == 1, errors
    assert isinstance(failed[0], StoreExistsError)
    assert "another writer committed" in str(failed[0])
    winner = errors.index(None)
    assert_one_clean_version(url, s3_options, float(winner + 1), "ab"[winner])


def test_two_writers_replacing_one_store_commit_one_version_the_other_is_told(
    url: str, s3_options: dict[str, Any], client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    to_bigarray(version(9.0), url, names("o"), storage_options=s3_options)

    def work(i: int) -> None:
        to_bigarray(
            version(float(i + 1)),
            url,
            names("ab"[i]),
            storage_options=s3_options,
            remove_exist=True,
        )

    errors = race(2, work, monkeypatch)
    failed = [e for e in errors if e is not None]
    assert len(failed) == 1, errors
    assert isinstance(failed[0], ConcurrentCommitError)
    winner = errors.index(None)
    assert_one_clean_version(url, s3_options, float(winner + 1), "ab"[winner])
    assert open_store(url, s3_options).manifest.generation == 2


def _fail_on_second_block(block: np.ndarray, block_info: Any = None) -> np.ndarray:
    if block_info is not None and block_info[0]["chunk-location"][0] == 1:
        raise RuntimeError("task failed on purpose")
    return block


@pytest.mark.parametrize("where", ["s3", "local"])
def test_remove_exist_keeps_the_old_store_when_a_task_fails(
    where: str, url: str, s3_options: dict[str, Any], client: Any, tmp_path: Any
) -> None:
    target, opts = (url, s3_options) if where == "s3" else (str(tmp_path / "x.bigarray"), None)
    to_bigarray(version(1.0), target, names("a"), storage_options=opts)
    before = all_objects(target, opts or {}) if where == "s3" else None
    bad = version(2.0).map_blocks(_fail_on_second_block, dtype="f8")
    with pytest.raises(RuntimeError, match="on purpose"):
        to_bigarray(bad, target, names("b"), storage_options=opts, remove_exist=True)
    store = open_store(target, opts)
    assert store.variable().rows == 400
    assert np.all(store.read_rows("data", 0, 400) == 1.0)
    assert store.index is not None and sorted(store.index.keys()) == sorted(names("a"))
    if where == "s3":
        assert all_objects(target, s3_options) == before, "the failed write left objects"


@pytest.mark.parametrize("where", ["s3", "local"])
def test_remove_exist_with_compute_false_touches_nothing_until_it_runs(
    where: str, url: str, s3_options: dict[str, Any], client: Any, tmp_path: Any
) -> None:
    target, opts = (url, s3_options) if where == "s3" else (str(tmp_path / "x.bigarray"), None)
    to_bigarray(version(1.0), target, names("a"), storage_options=opts)
    delayed = to_bigarray(
        version(2.0), target, names("b"), storage_options=opts, remove_exist=True, compute=False
    )
    store = open_store(target, opts)
    assert np.all(store.read_rows("data", 0, 400) == 1.0)
    assert store.index is not None and sorted(store.index.keys()) == sorted(names("a"))
    delayed.compute()
    store = open_store(target, opts)
    assert np.all(store.read_rows("data", 0, 400) == 2.0)
    assert store.index is not None and sorted(store.index.keys()) == sorted(names("b"))
    if where == "s3":
        assert_one_clean_version(target, s3_options, 2.0, "b")


def test_a_failed_first_write_leaves_not_found_not_a_foreign_store(
    url: str, s3_options: dict[str, Any], client: Any
) -> None:
    bad = version(2.0).map_blocks(_fail_on_second_block, dtype="f8")
    with pytest.raises(RuntimeError, match="on purpose"):
        to_bigarray(bad, url, names("b"), storage_options=s3_options)
    with pytest.raises(StoreNotFoundError):
        open_store(url, s3_options)
    assert not all_objects(url, s3_options)


def test_a_prefix_holding_foreign_objects_is_refused_before_anything_is_written(
    url: str, s3_options: dict[str, Any], client: Any
) -> None:
    """As a local directory that is not a store: a new store among someone else's objects is
    refused, with or without remove_exist (which replaces stores only); they stay."""
    from bigarray.errors import NotAStoreError

    fs = FileAccess(url, s3_options).fs
    fs.pipe(f"{url}/notes.txt", b"mine")
    for remove_exist in (False, True):
        with pytest.raises(NotAStoreError, match="notes.txt"):
            to_bigarray(
                version(1.0), url, names("a"), storage_options=s3_options, remove_exist=remove_exist
            )
    fs.invalidate_cache()
    assert all_objects(url, s3_options) == {"notes.txt"}
