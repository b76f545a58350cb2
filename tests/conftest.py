"""Shared fixtures: real services only (a distributed LocalCluster, a moto S3 server), and
``make_store``, which builds the little stores most tests read (real files on disk).

``.ci/run`` starts a moto server itself and exports ``BIGARRAY_TEST_S3_ENDPOINT``; when it
is unset (a developer running ``pytest`` directly) the fixture starts one on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import StoreWriter

# Credentials for the local moto server only; never a real account.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """A ``dask.distributed`` LocalCluster with 2 worker processes, 1 thread each."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        memory_limit="4GiB",
    ) as cl:
        yield cl


@pytest.fixture()
def client(cluster: Any) -> Iterator[Any]:
    """A client on the shared cluster (made the default scheduler while the test runs)."""
    distributed = pytest.importorskip("distributed")
    with distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 (started here unless .ci/run started one)."""
    url = os.environ.get("BIGARRAY_TEST_S3_ENDPOINT")
    if url:
        yield url
        return
    server_mod = pytest.importorskip("moto.server")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3_options(s3_endpoint: str) -> dict[str, Any]:
    """fsspec ``storage_options`` for s3fs against the moto server."""
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
        "use_listings_cache": False,
    }


@pytest.fixture()
def s3_bucket(s3_options: dict[str, Any]) -> str:
    """A fresh, empty bucket; returns its name."""
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(**s3_options)
    name = f"test-{uuid.uuid4().hex[:12]}"
    # mkdir() sends LocationConstraint=us-east-1, which S3 (and moto) refuse
    fs.call_s3("create_bucket", Bucket=name)
    fs.invalidate_cache()
    return name


# --------------------------------------------------------------------------- stores

#: ``make_store(path=None, segments=5, **options) -> (path, {name: array})``; see build_store.
MakeStore = Callable[..., tuple[Path, dict[str, np.ndarray]]]


def sample(rng: np.random.Generator, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Random values of any dtype a store holds (numbers, bools, datetimes, strings)."""
    dt = np.dtype(dtype)
    if dt.kind in "fc":
        out = rng.standard_normal(shape)
        if dt.kind == "c":
            out = out + 1j * rng.standard_normal(shape)
        return out.astype(dt)
    if dt.kind in "iu":
        return rng.integers(0, 100, shape).astype(dt)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind in "mM":
        return rng.integers(0, 10**9, shape).astype(dt)
    return rng.integers(0, 10**6, shape).astype(str).astype(dt)  # 'U', 'S'


def build_store(
    path: str | os.PathLike[str],
    segments: int | Sequence[int] | Mapping[str, Any] = 5,
    *,
    named: bool = True,
    dtype: Any = "f4",
    trailing: Sequence[int] = (4,),
    seed: int = 0,
    lengths: tuple[int, int] = (1, 30),
    names: str = "seg{:05d}",
    commits: int = 1,
    checksums: bool = True,
    fsync: bool = False,
) -> dict[str, np.ndarray]:
    """Write a store at ``path`` through :class:`StoreWriter`; return ``{name: rows}`` in
    row order (the whole array is their concatenation).

    ``segments`` is a count (lengths drawn from ``[lengths[0], lengths[1])``), a list of
    lengths, or the ``{name: array}`` to write as given. Generated segments are named
    ``names.format(i)`` and filled by :func:`sample` with ``seed``. ``commits`` splits the
    segments over that many commits of one writer (an index of several runs, older index
    files beside the current ones). ``named=False`` writes the same rows without a
    segment index (an ``MmapArray`` store).
    """
    rng = np.random.default_rng(seed)
    row = tuple(int(t) for t in trailing)
    if isinstance(segments, Mapping):
        expected = {k: np.asarray(v) for k, v in segments.items()}
    else:
        if isinstance(segments, int):
            sizes = rng.integers(lengths[0], lengths[1], segments).tolist()
        else:
            sizes = [int(k) for k in segments]
        expected = {names.format(i): sample(rng, dtype, (k, *row)) for i, k in enumerate(sizes)}
    items = list(expected.items())
    w = StoreWriter(
        path, dtype=dtype, shape=(0, *row), named=named, checksums=checksums, fsync=fsync
    )
    try:
        per = -(-len(items) // max(commits, 1)) if items else 0
        for a in range(0, len(items), per or 1):
            part = items[a : a + per]
            w.write_rows([v for _, v in part], [k for k, _ in part] if named else None)
            w.flush()
    finally:
        w.close()
    return expected


def _factory(root: Callable[[], Path]) -> MakeStore:
    counter = itertools.count()

    def make(
        path: str | os.PathLike[str] | None = None,
        segments: int | Sequence[int] | Mapping[str, Any] = 5,
        **options: Any,
    ) -> tuple[Path, dict[str, np.ndarray]]:
        where = Path(path) if path is not None else root() / f"store{next(counter)}.bigarray"
        return where, build_store(where, segments, **options)

    return make


@pytest.fixture()
def make_store(tmp_path: Path) -> MakeStore:
    """A factory of small stores on disk: ``make_store(path=None, segments=5, **options)``
    returns ``(path, {name: array})`` (see :func:`build_store` for the options); without
    ``path`` each store gets a fresh directory under ``tmp_path``."""
    return _factory(lambda: tmp_path)


@pytest.fixture(scope="session")
def make_shared_store(tmp_path_factory: pytest.TempPathFactory) -> MakeStore:
    """:func:`make_store` for module- and session-scoped fixtures (stores that many tests
    read and none changes)."""
    return _factory(lambda: tmp_path_factory.mktemp("stores"))
