"""Reading a store over plain HTTP(S) byte ranges (fsspec's http filesystem).

A tiny Range-capable HTTP/1.1 server on 127.0.0.1 serves a directory holding stores; it
counts the requests it answers, so the tests can check that neighbouring segment reads
are merged into few requests.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from bigarray import PointerArray
from bigarray.core.store import RemoteStore, open_store
from bigarray.errors import StoreCorruptedError, StoreNotFoundError

pytest.importorskip("aiohttp")

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of files under ``server.root``, honouring a single ``Range`` header."""

    protocol_version = "HTTP/1.1"
    server: RangeServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _file(self) -> str | None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        full = os.path.realpath(os.path.join(self.server.root, rel))
        if not full.startswith(self.server.root + os.sep) or not os.path.isfile(full):
            return None
        return full

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        full = self._file()
        if full is None:
            self._send(404, {}, b"not found")
            return
        size = os.path.getsize(full)
        rng = self.headers.get("Range")
        if not rng:
            with open(full, "rb") as f:
                self._send(200, {"Accept-Ranges": "bytes"}, f.read())
            return
        m = _RANGE.match(rng.strip())
        if not m or (not m.group(1) and not m.group(2)):
            self._send(400, {}, b"bad range")
            return
        if m.group(1):
            start = int(m.group(1))
            stop = min(size, int(m.group(2)) + 1) if m.group(2) else size
        else:  # suffix range: the last N bytes
            start, stop = max(0, size - int(m.group(2))), size
        if start >= size:
            self._send(416, {"Content-Range": f"bytes */{size}"}, b"")
            return
        with open(full, "rb") as f:
            f.seek(start)
            body = f.read(stop - start)
        headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{stop - 1}/{size}"}
        self._send(206, headers, body)


class RangeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: str) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.root = os.path.realpath(root)
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture()
def server(tmp_path: Any) -> Iterator[RangeServer]:
    srv = RangeServer(str(tmp_path))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_read_over_http(server: RangeServer, tmp_path: Any, make_store: Any) -> None:
    _, segs = make_store(tmp_path / "a.bigarray", 200, trailing=(8,))
    data = np.concatenate(list(segs.values()))
    url = f"{server.url}/a.bigarray"
    store = open_store(url)
    assert isinstance(store, RemoteStore)
    assert len(store.index) == 200
    for name in ("seg00000", "seg00123", "seg00199"):
        np.testing.assert_array_equal(store.read_rows(None, *store.index[name]), segs[name])
    np.testing.assert_array_equal(store.read_rows(None, 0, len(data)), data)
    x = PointerArray(url)
    np.testing.assert_array_equal(np.asarray(x), data)
    np.testing.assert_array_equal(x["seg00042"], segs["seg00042"])
    assert all(method in ("GET", "HEAD") for method, _, _ in server.requests)
    assert any(r is not None and r.startswith("bytes=") for _, _, r in server.requests)


def test_neighbouring_segments_are_merged(
    server: RangeServer, tmp_path: Any, make_store: Any
) -> None:
    _, segs = make_store(tmp_path / "b.bigarray", 200, trailing=(8,))
    store = open_store(f"{server.url}/b.bigarray")
    names = [f"seg{i:05d}" for i in range(10, 150, 3)]  # 47 segments, gaps of 2 segments
    ranges = [store.index[k] for k in names]
    server.requests.clear()
    got = store.read_ranges(None, ranges)
    for k, arr in zip(names, got, strict=True):
        np.testing.assert_array_equal(arr, segs[k])
    data_requests = [r for r in server.requests if "data.npy" in r[1]]
    # one size check (HEAD) before the first read, then ONE ranged GET for all 47 segments
    assert [m for m, _, _ in data_requests] == ["HEAD", "GET"], data_requests
    server.requests.clear()
    store.read_ranges(None, ranges[:5])
    assert len(server.requests) == 1  # sizes are checked once per store


def test_missing_store_over_http(server: RangeServer) -> None:
    url = f"{server.url}/nothing.bigarray"
    with pytest.raises(StoreNotFoundError, match=re.escape(url)):
        open_store(url)


def test_truncated_data_over_http(server: RangeServer, tmp_path: Any, make_store: Any) -> None:
    path = str(tmp_path / "c.bigarray")
    make_store(path, 20, trailing=(8,))
    full = os.path.join(path, "data.npy")
    size = os.path.getsize(full)
    os.truncate(full, size - 100)
    store = open_store(f"{server.url}/c.bigarray")
    with pytest.raises(
        StoreCorruptedError,
        match=rf"data.npy' holds {size - 100:,} bytes but the manifest needs {size:,}",
    ):
        store.read_rows(None, 0, 10)
