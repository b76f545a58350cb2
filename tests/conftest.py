"""Shared fixtures: real services only (a distributed LocalCluster, a moto S3 server).

``.ci/run`` starts a moto server itself and exports ``BIGARRAY_TEST_S3_ENDPOINT``; when it
is unset (a developer running ``pytest`` directly) the fixture starts one on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

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
