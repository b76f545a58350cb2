"""Remote stores under faults: a server that stalls (accepts, never replies) or dies during a
read or a commit, a writer process killed at its commit, a dask worker killed mid-write.
A moto S3 server on 127.0.0.1 (its own, where the test kills it) and the LocalCluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from bigarray.core.filesystem import S3_CONFIG_DEFAULTS, FileAccess
from bigarray.core.store import open_store
from bigarray.errors import RemoteStoreError, StoreNotFoundError

da = pytest.importorskip("dask.array")
moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StallingProxy:
    """A TCP relay on 127.0.0.1 to ``target``; after :meth:`stall` it keeps accepting and
    keeps every connection open, but never relays another byte (a hung server)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.stalled = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.stalled.set()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.stalled.is_set():
                continue
            up = socket.create_connection(("127.0.0.1", self.target))
            self.held.append(up)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                if self.stalled.is_set():
                    continue  # swallow: the peer waits for ever
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture()
def server() -> Iterator[tuple[Any, int]]:
    """A moto server of this test alone (the test may stop it)."""
    port = _free_port()
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    try:
        yield srv, port
    finally:
        try:
            srv.stop()
        except Exception:
            pass


def _options(port: int, **config: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "use_listings_cache": False,
    }
    if config:
        opts["config_kwargs"] = config
    return opts


def _bucket(port: int) -> str:
    fs = s3fs.S3FileSystem(**_options(port), skip_instance_cache=True)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.call_s3("create_bucket", Bucket=name)
    return name


def _write(url: str, options: dict[str, Any], value: float, replace: bool = False) -> None:
    from bigarray.dask_backend import to_bigarray

    x = da.full((400, 3), value, dtype="f8", chunks=(100, 3))
    with __import__("dask").config.set(scheduler="threads"):
        to_bigarray(
            x,
            url,
            {f"s{i}": (i * 20, i * 20 + 20) for i in range(20)},
            storage_options=options,
            remove_exist=replace,
        )


FAST = {"read_timeout": 1, "connect_timeout": 1, "retries": {"mode": "standard", "max_attempts": 2}}


def test_s3_reads_have_timeouts_and_retries_by_default() -> None:
    acc = FileAccess("s3://some-bucket/x.bigarray", _options(1))
    config = acc.fs.config_kwargs
    assert config["read_timeout"] == S3_CONFIG_DEFAULTS["read_timeout"]
    assert config["connect_timeout"] == S3_CONFIG_DEFAULTS["connect_timeout"]
    assert config["retries"]["mode"] == "standard"
    assert S3_CONFIG_DEFAULTS["retries"] == {"mode": "standard", "max_attempts": 3}
    mine = FileAccess("s3://some-bucket/x.bigarray", _options(1, read_timeout=123))
    assert mine.fs.config_kwargs["read_timeout"] == 123  # the user's setting wins


def test_a_stalled_server_mid_read_ends_in_remote_store_error_naming_the_url(
    server: tuple[Any, int],
) -> None:
    _, port = server
    url = f"s3://{_bucket(port)}/stall.bigarray"
    _write(url, _options(port), 1.0)
    proxy = StallingProxy(port)
    try:
        store = open_store(url, _options(proxy.port, **FAST))
        assert np.all(store.read_rows("data", 0, 100) == 1.0)
        proxy.stall()
        t0 = time.monotonic()
        with pytest.raises(RemoteStoreError, match="did not answer in time") as info:
            store.read_rows("data", 100, 400)
        assert url in str(info.value)
        assert time.monotonic() - t0 < 60
    finally:
        proxy.close()


def test_a_stalled_server_at_open_ends_in_remote_store_error() -> None:
    stalled = StallingProxy(_free_port())
    stalled.stall()
    try:
        t0 = time.monotonic()
        with pytest.raises(RemoteStoreError, match="s3://b/x.bigarray"):
            open_store("s3://b/x.bigarray", _options(stalled.port, **FAST))
        assert time.monotonic() - t0 < 60
    finally:
        stalled.close()


def test_a_server_killed_mid_read_ends_in_remote_store_error(server: tuple[Any, int]) -> None:
    srv, port = server
    url = f"s3://{_bucket(port)}/killed.bigarray"
    _write(url, _options(port), 1.0)
    store = open_store(url, _options(port, **FAST))
    assert np.all(store.read_rows("data", 0, 100) == 1.0)
    srv.stop()
    t0 = time.monotonic()
    with pytest.raises(RemoteStoreError) as info:
        store.read_rows("data", 100, 400)
    assert url in str(info.value)
    assert time.monotonic() - t0 < 60


def test_a_stalled_server_at_the_commit_leaves_the_old_version(
    server: tuple[Any, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bigarray.core.filesystem

    monkeypatch.setattr(bigarray.core.filesystem, "WRITE_TIMEOUT", 3.0)  # (60 s by default)
    _, port = server
    url = f"s3://{_bucket(port)}/commit.bigarray"
    _write(url, _options(port), 1.0)
    proxy = StallingProxy(port)
    fast = _options(proxy.port, **FAST)
    errors: list[BaseException] = []

    def replace() -> None:
        try:
            _write(url, fast, 2.0, replace=True)
        except BaseException as exc:
            errors.append(exc)

    os.environ["BIGARRAY_REMOTE_CRASH_AT"] = "remote-before-manifest:sleep=0.5"
    try:
        t = threading.Thread(target=replace)
        t.start()
        time.sleep(0.2)
        deadline = time.monotonic() + 30
        while t.is_alive() and time.monotonic() < deadline:
            # stall once the shards are written (the commit is sleeping before its PUT)
            fs = s3fs.S3FileSystem(**_options(port), skip_instance_cache=True)
            if len(fs.find(url.rsplit("/", 1)[0])) > 10:
                proxy.stall()
                break
            time.sleep(0.05)
        t.join(120)
    finally:
        del os.environ["BIGARRAY_REMOTE_CRASH_AT"]
        proxy.close()
    assert not t.is_alive()
    assert errors and isinstance(errors[0], RemoteStoreError), errors
    store = open_store(url, _options(port))
    assert np.all(store.read_rows("data", 0, 400) == 1.0)


@pytest.mark.parametrize("replace", [False, True], ids=["new", "replace"])
def test_a_writer_killed_at_its_commit_leaves_no_store_or_the_old_one(
    s3_options: dict[str, Any], s3_endpoint: str, replace: bool
) -> None:
    import json

    fs = s3fs.S3FileSystem(**s3_options)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.call_s3("create_bucket", Bucket=bucket)
    url = f"s3://{bucket}/killed.bigarray"
    if replace:
        _write(url, s3_options, 1.0)
    code = (
        "import json, sys, dask, dask.array as da\n"
        "from bigarray.dask_backend import to_bigarray\n"
        f"opts = json.loads({json.dumps(json.dumps(s3_options))})\n"
        "dask.config.set(scheduler='threads')\n"
        f"to_bigarray(da.full((400, 3), 2.0, chunks=(100, 3)), {url!r}, "
        f"{{'b': (0, 400)}}, storage_options=opts, remove_exist={replace})\n"
    )
    env = dict(os.environ, BIGARRAY_REMOTE_CRASH_AT="remote-before-manifest")
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 77, proc.stderr.decode()[-2000:]
    if replace:
        store = open_store(url, s3_options)
        assert np.all(store.read_rows("data", 0, 400) == 1.0)
        assert store.index is not None and "s0" in store.index
    else:
        with pytest.raises(StoreNotFoundError):
            open_store(url, s3_options)


def _die_once(block: np.ndarray, marker: str, block_info: Any = None) -> np.ndarray:
    if block_info[0]["chunk-location"][0] == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return block


def test_a_worker_killed_mid_write_gives_one_complete_version(
    s3_options: dict[str, Any], client: Any, tmp_path: Any
) -> None:
    from bigarray.dask_backend import to_bigarray

    fs = s3fs.S3FileSystem(**s3_options)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.call_s3("create_bucket", Bucket=bucket)
    url = f"s3://{bucket}/worker.bigarray"
    marker = str(tmp_path / "killed")
    x = da.arange(400 * 3, dtype="f8", chunks=300).reshape(400, 3).rechunk((100, 3))
    y = x.map_blocks(_die_once, marker, dtype="f8")
    to_bigarray(
        y, url, {f"s{i}": (i * 20, i * 20 + 20) for i in range(20)}, storage_options=s3_options
    )
    assert os.path.exists(marker)
    store = open_store(url, s3_options)
    np.testing.assert_array_equal(
        store.read_rows("data", 0, 400), np.arange(1200.0).reshape(400, 3)
    )
    assert store.index is not None and len(store.index) == 20


def test_cli_verify_checks_a_remote_store_with_storage_options(
    s3_options: dict[str, Any], tmp_path: Any, capsys: Any
) -> None:
    import json

    from bigarray import PointerArrayWriter
    from bigarray.cli import main
    from bigarray.copy import copy_store

    fs = s3fs.S3FileSystem(**s3_options)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.call_s3("create_bucket", Bucket=bucket)
    sharded, copied = f"s3://{bucket}/sharded.bigarray", f"s3://{bucket}/copied.bigarray"
    _write(sharded, s3_options, 1.0)
    local = str(tmp_path / "a.bigarray")
    with PointerArrayWriter(local, dtype="f8") as w:
        w.write({f"s{i}": np.full((300, 8), i, "f8") for i in range(10)})
    copy_store(local, copied, dst_options=s3_options, progress=False)
    opts = json.dumps(s3_options)
    assert main(["verify", sharded, "--storage-options", opts]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "no recorded checksums" not in out and "block(s)" in out
    assert main(["verify", copied, "--storage-options", opts]) == 0
    assert "block(s)" in capsys.readouterr().out
    # damage one byte of a copied shard: verify names the block
    m = open_store(copied, s3_options).manifest
    shard = m.variables["data"].shards[0].path
    raw = bytearray(fs.cat_file(f"{bucket}/copied.bigarray/{shard}"))
    raw[-5] ^= 0xFF
    fs.pipe_file(f"{bucket}/copied.bigarray/{shard}", bytes(raw))
    assert main(["verify", copied, "--storage-options", opts]) == 1
    assert "crc32c" in capsys.readouterr().out
    assert main(["verify", f"s3://{bucket}/nothing.bigarray", "--storage-options", opts]) == 1
    assert "StoreNotFoundError" in capsys.readouterr().err
