"""Remote reads over S3 (a moto server on 127.0.0.1): bigarray vs zarr v3, requests and speed.

The moto server runs in its own process behind a WSGI middleware that counts every HTTP
request it answers, so request counts are measured at the server, for both systems alike,
whatever their client libraries do. Both systems go through the same s3fs client.

Cases (``run(size)`` returns one dict per case and system)
----------------------------------------------------------
``s3-sum``
    Open the store and sum every element (one client, the library's own concurrency:
    bigarray splits the read into concurrent ranged GETs, zarr fetches chunks concurrently).
``s3-random-reads``
    Open, then read N random segments by name *one at a time* (each read waits for its
    answer): bigarray fetches exactly the segment's bytes; zarr fetches the chunks that
    hold it. Slow systems are timed on fewer reads (the per-segment figure stays comparable).
``s3-random-reads-batched``
    The same N segments asked for at once: bigarray ``read_ranges`` (neighbouring ranges
    merged, all requests concurrent) vs zarr ``get_orthogonal_selection`` on the rows.

Data: W1-shaped (``default_rng(0).integers(50, 150, n)`` rows per segment, 128 float32
features) but only ``n = 2,000`` segments at ``--size W1`` (about 100 MB; moto is slow) and
200 at ``smoke``. zarr: uncompressed, chunks of 65,536 rows (the BENCHMARKS.md peer) and,
for random reads, also 1,024-row chunks. bigarray: written by ``to_bigarray_sharded``
from dask chunks of 65,536 rows (so shards of about 32 MB), the way a cluster writes to S3.

Caveat: moto serves a ranged GET in time that grows with the *object* size (it reads the
stored value to slice it: about 20 ms on a 512 KB object, 42 ms on a 32 MB one, measured
in-process), which real S3 does not. So one-at-a-time reads favour small objects; the
``bigarray (1,024-row shards)`` row shows the same layout choice zarr's 1,024-row chunks get.

Run: ``python -m benchmarks.bench_remote --size W1``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

SIZES = {"smoke": (200, 500), "W1": (2_000, 5_000), "large": (8_000, 5_000)}
N_FEATURES = 128
ZARR_CHUNK = 65_536
REPEAT = 3
READ_BUDGET_S = 3.0  # a slow one-at-a-time reader is timed on the reads that fit in this

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


# ---------------------------------------------------------------------------- counting server
class _Counting:
    """WSGI middleware: counts requests; ``/_bench/count`` and ``/_bench/reset`` read it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path in ("/_bench/count", "/_bench/reset"):
            with self.lock:
                n = self.n
                if path == "/_bench/reset":
                    self.n = 0
            body = json.dumps({"requests": n}).encode()
            start_response(
                "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        with self.lock:
            self.n += 1
        return self.app(environ, start_response)


def _serve(port: int, ready: Any) -> None:
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = _Counting(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    ready.set()
    server.serve_forever()


@contextmanager
def counting_moto() -> Iterator[str]:
    """Start moto (with the request counter) in a child process; yield its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_serve, args=(port, ready), daemon=True)
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError("the moto server did not start in 60 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.join(10)


def _requests(endpoint: str, reset: bool = False) -> int:
    with urllib.request.urlopen(f"{endpoint}/_bench/{'reset' if reset else 'count'}") as r:
        return int(json.load(r)["requests"])


# ---------------------------------------------------------------------------- data
def _workload(n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.random.default_rng(0).integers(50, 150, n_segments)
    rows = int(lengths.sum())
    data = np.random.default_rng(1).standard_normal((rows, N_FEATURES), dtype=np.float32)
    stops = np.cumsum(lengths)
    return data, np.stack([stops - lengths, stops], axis=1)


def _measure(fn: Callable[[], Any], endpoint: str, repeat: int) -> tuple[list[float], int, Any]:
    """Time ``fn`` ``repeat`` times; requests counted on the last repetition."""
    times, value, n = [], None, 0
    for _ in range(repeat):
        _requests(endpoint, reset=True)
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
        n = _requests(endpoint)
    return times, n, value


# ---------------------------------------------------------------------------- the run
def run(size: str = "smoke", repeat: int = REPEAT) -> list[dict[str, Any]]:
    """Run every case at ``size``; return one dict per (case, system)."""
    import dask
    import dask.array as da
    import s3fs
    import zarr
    from zarr.storage import FsspecStore

    from bigarray.core.store import open_store
    from bigarray.dask_backend import to_bigarray_sharded

    n_segments, n_reads = SIZES[size]
    data, bounds = _workload(n_segments)
    rows, nbytes = len(data), data.nbytes
    names = [f"seg{i:07d}" for i in range(n_segments)]
    picks = np.random.default_rng(2).integers(0, n_segments, n_reads)
    results: list[dict[str, Any]] = []

    with counting_moto() as endpoint:
        opts = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            "use_listings_cache": False,
        }
        fs = s3fs.S3FileSystem(**opts)
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        fs.call_s3("create_bucket", Bucket=bucket)
        big_url = f"s3://{bucket}/w.bigarray"
        with dask.config.set(scheduler="threads"):
            to_bigarray_sharded(
                da.from_array(data, chunks=(ZARR_CHUNK, N_FEATURES)),
                big_url,
                segments={n: (int(a), int(b)) for n, (a, b) in zip(names, bounds, strict=True)},
                storage_options=opts,
            )
        # the same data in 1,024-row shards (objects of about 512 KB, like zarr's small chunks)
        small_url = f"s3://{bucket}/w-small.bigarray"
        with dask.config.set(scheduler="threads"):
            to_bigarray_sharded(
                da.from_array(data, chunks=(1024, N_FEATURES)),
                small_url,
                segments={n: (int(a), int(b)) for n, (a, b) in zip(names, bounds, strict=True)},
                storage_options=opts,
            )
        zarr_urls = {}
        for chunk in (ZARR_CHUNK, 1024):
            url = f"s3://{bucket}/w-{chunk}.zarr"
            store = FsspecStore.from_url(url, storage_options=opts, read_only=False)
            z = zarr.create_array(
                store,
                shape=data.shape,
                chunks=(chunk, N_FEATURES),
                dtype="float32",
                compressors=None,
                filters=None,
            )
            z[:] = data
            zarr_urls[chunk] = url
        # zarr names nothing: its readers get the same offsets from a dict (free for them)
        offsets = {n: (int(a), int(b)) for n, (a, b) in zip(names, bounds, strict=True)}

        def open_zarr(chunk: int) -> Any:
            st = FsspecStore.from_url(zarr_urls[chunk], storage_options=opts, read_only=True)
            return zarr.open_array(st, mode="r")

        def add(
            case: str,
            system: str,
            times: list[float],
            work: float,
            unit: str,
            reqs: int,
            value: Any = None,
            items: int | None = None,
        ) -> None:
            med = statistics.median(times)
            figure = work / med / 1e9 if unit == "GB/s" else med / work * 1e6
            results.append(
                {
                    "case": case,
                    "system": system,
                    "median_s": med,
                    "unit_value": figure,
                    "unit": unit,
                    "requests": reqs,
                    "items": items,
                    "value": value,
                }
            )

        # ---- full sum
        def big_sum() -> float:
            s = open_store(big_url, opts)
            return float(s.read_rows(None, 0, rows).sum(dtype=np.float64))

        def zarr_sum() -> float:
            return float(open_zarr(ZARR_CHUNK)[:].sum(dtype=np.float64))

        for system, fn in (("bigarray", big_sum), ("zarr v3 (65,536-row chunks)", zarr_sum)):
            times, reqs, value = _measure(fn, endpoint, repeat)
            add("s3-sum", system, times, nbytes, "GB/s", reqs, value)

        # ---- random reads, one at a time
        def big_reads(k: int, url: str = big_url) -> Callable[[], int]:
            def go() -> int:
                s = open_store(url, opts)
                idx = s.index
                total = 0
                for i in picks[:k]:
                    total += s.read_rows(None, *idx[names[i]]).shape[0]
                return total

            return go

        def zarr_reads(chunk: int, k: int) -> Callable[[], int]:
            def go() -> int:
                z = open_zarr(chunk)
                total = 0
                for i in picks[:k]:
                    a, b = offsets[names[i]]
                    total += z[a:b].shape[0]
                return total

            return go

        systems: list[tuple[str, Callable[[int], Callable[[], int]]]] = [
            ("bigarray", big_reads),
            ("bigarray (1,024-row shards)", lambda k: big_reads(k, small_url)),
            ("zarr v3 (65,536-row chunks)", lambda k: zarr_reads(ZARR_CHUNK, k)),
            ("zarr v3 (1,024-row chunks)", lambda k: zarr_reads(1024, k)),
        ]
        for system, make in systems:
            # probe 10 reads to size the run to the budget
            t0 = time.perf_counter()
            make(10)()
            per = (time.perf_counter() - t0) / 10
            k = int(min(n_reads, max(10, READ_BUDGET_S / max(per, 1e-9))))
            times, reqs, value = _measure(make(k), endpoint, repeat)
            add("s3-random-reads", system, times, k, "us/segment", reqs, value, items=k)

        # ---- random reads, all at once
        ranges = [offsets[names[i]] for i in picks]

        def big_batched() -> int:
            s = open_store(big_url, opts)
            idx = s.index
            got = s.read_ranges(None, [idx[names[i]] for i in picks])
            return sum(len(g) for g in got)

        def zarr_batched(chunk: int) -> Callable[[], int]:
            def go() -> int:
                z = open_zarr(chunk)
                rows_idx = np.concatenate([np.arange(a, b) for a, b in ranges])
                out = z.get_orthogonal_selection((rows_idx, slice(None)))
                return int(out.shape[0])

            return go

        for system, fn in (
            ("bigarray", big_batched),
            ("zarr v3 (65,536-row chunks)", zarr_batched(ZARR_CHUNK)),
            ("zarr v3 (1,024-row chunks)", zarr_batched(1024)),
        ):
            times, reqs, value = _measure(fn, endpoint, repeat)
            add(
                "s3-random-reads-batched",
                system,
                times,
                n_reads,
                "us/segment",
                reqs,
                value,
                items=n_reads,
            )

    _check(results)
    return results


def _check(results: list[dict[str, Any]]) -> None:
    """Every system of a case must have computed the same thing."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_case.setdefault(r["case"], []).append(r)
    for case, rs in by_case.items():
        if case == "s3-sum":
            vals = [r["value"] for r in rs]
            assert max(vals) - min(vals) <= 1e-6 * max(1.0, abs(vals[0])) * 1e3, (case, vals)
        elif case == "s3-random-reads-batched":
            assert len({r["value"] for r in rs}) == 1, (case, [r["value"] for r in rs])


def report(results: list[dict[str, Any]], peer: str = "zarr v3 (65,536-row chunks)") -> str:
    """A table per case: median figure, requests, and bigarray's ratio to ``peer``."""
    lines = []
    cases = list(dict.fromkeys(r["case"] for r in results))
    for case in cases:
        rs = [r for r in results if r["case"] == case]
        unit = rs[0]["unit"]
        base = next((r for r in rs if r["system"] == peer), None)
        lines.append(f"\n{case} ({unit}; requests per run counted at the server)")
        lines.append(
            f"  {'system':32} {'figure':>12} {'requests':>9} {'items':>7} {'speed vs ' + peer:>40}"
        )
        for r in rs:
            ratio = ""
            if base is not None:
                if unit == "GB/s":
                    ratio = f"{r['unit_value'] / base['unit_value']:.2f}x"
                else:
                    ratio = f"{base['unit_value'] / r['unit_value']:.2f}x"
            items = "" if r["items"] is None else str(r["items"])
            lines.append(
                f"  {r['system']:32} {r['unit_value']:12.4g} {r['requests']:9d} {items:>7} {ratio:>40}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--size", choices=sorted(SIZES), default="smoke")
    p.add_argument("--repeat", type=int, default=REPEAT)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    results = run(args.size, args.repeat)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
