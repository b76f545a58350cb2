"""The dask face on W1: distributed and threaded sums, parallel writes, peak memory.

Cases (ratios against the peer measured in the same run, median of repetitions, warm cache):

- ``sum-distributed``: ``from_bigarray(path).sum()`` vs ``da.from_zarr`` (uncompressed,
  65,536-row chunks) on the same LocalCluster of 2 worker processes x 1 thread (goal >= 3x).
- ``sum-threads``: ``from_bigarray(path).sum()`` on the threaded scheduler vs ``numpy.sum`` of
  the ``.npy`` memory map on one thread (goal >= 1.3x).
- ``to_bigarray``: a 2-worker LocalCluster vs a 1-worker one writing the same array
  (goal >= 1.5x). Commits use ``fsync=False``: writes into a warm page cache, like the peers.
- peak anonymous memory (``RssAnon``, sampled every 2 ms; mapped file pages excluded: they
  belong to the page cache) of the client and of each worker during the distributed sum and
  the 2-worker write.

Run: ``python -m benchmarks.bench_dask --size smoke|W1``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ZARR_CHUNK_ROWS = 65_536
GOALS = {"sum-distributed": 3.0, "sum-threads": 1.3, "to_bigarray": 1.5}


def _workload(size: str) -> tuple[np.ndarray, Callable[[int, int], np.ndarray]]:
    """Segment lengths and a row generator: benchmarks.workloads when present (W1), else
    the same lengths with ``default_rng(0)`` and seeded values."""
    try:
        from benchmarks.workloads import make_workload

        wl = make_workload("ragged", size)
        return wl.lengths, wl.rows
    except ImportError:
        n = {"smoke": 200, "W1": 20_000}[size]
        lengths = np.random.default_rng(0).integers(50, 150, n).astype(np.int64)

        def rows(a: int, b: int) -> np.ndarray:
            return np.random.default_rng(a).random((b - a, 128), dtype=np.float32)

        return lengths, rows


def _build(root: Path, size: str) -> tuple[str, str, list[tuple[str, int]]]:
    """Write the bigarray store and the zarr peer once; return their paths and segments."""
    import zarr

    from bigarray import PointerArrayWriter

    lengths, rows = _workload(size)
    off = np.concatenate([[0], np.cumsum(lengths)])
    names = [f"seg{i:07d}" for i in range(len(lengths))]
    ba = str(root / "w1.bigarray")
    with PointerArrayWriter(ba, shape=(int(off[-1]), 128), dtype="f4", fsync=False) as w:
        step = 1000
        for i in range(0, len(lengths), step):
            j = min(i + step, len(lengths))
            block = rows(int(off[i]), int(off[j]))
            w.write(
                {names[k]: block[off[k] - off[i] : off[k + 1] - off[i]] for k in range(i, j)},
                start_position=int(off[i]),
            )
    zpath = str(root / "w1.zarr")
    z = zarr.create_array(
        store=zpath,
        shape=(int(off[-1]), 128),
        dtype="f4",
        chunks=(ZARR_CHUNK_ROWS, 128),
        compressors=None,
        filters=None,
        zarr_format=3,
        overwrite=True,
    )
    src = np.load(os.path.join(ba, "data.npy"), mmap_mode="r")
    for a in range(0, len(src), ZARR_CHUNK_ROWS * 4):
        z[a : a + ZARR_CHUNK_ROWS * 4] = src[a : a + ZARR_CHUNK_ROWS * 4]
    return ba, zpath, list(zip(names, lengths.tolist()))


def _warm(path: str) -> None:
    for dirpath, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(64 << 20):
                    pass


def _median_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    fn()  # warm-up: maps, imports, worker caches
    times, value = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def _row(case: str, system: str, seconds: float, nbytes: int, **extra: Any) -> dict[str, Any]:
    return {
        "case": case,
        "system": system,
        "median_s": round(seconds, 4),
        "unit_value": round(nbytes / seconds / 1e9, 3),
        "unit": "GB/s",
        **extra,
    }


_SAMPLER: dict[str, Any] = {}


def _rss_anon() -> int:
    """Anonymous resident memory in bytes: what a process allocated, without the file pages
    it touched through a memory map (those count in RSS but are the page cache's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def start_sampler(interval: float = 0.002) -> int:
    """Start sampling this process's RssAnon in a thread; returns the current value."""
    import threading

    stop = threading.Event()
    state = {"peak": _rss_anon()}

    def loop() -> None:
        while not stop.wait(interval):
            state["peak"] = max(state["peak"], _rss_anon())

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    _SAMPLER.update(stop=stop, thread=t, state=state)
    return state["peak"]


def stop_sampler() -> int:
    """Stop the sampler; return the peak RssAnon seen (bytes)."""
    _SAMPLER["stop"].set()
    _SAMPLER["thread"].join()
    return max(int(_SAMPLER["state"]["peak"]), _rss_anon())


def _peaks(client: Any, fn: Callable[[], Any]) -> dict[str, Any]:
    """Peak anonymous memory (MB) of the client and each worker while ``fn`` runs."""
    # by module name, so the functions pickle by reference even when this runs as __main__
    from benchmarks import bench_dask as mod

    base_w = client.run(mod.start_sampler)
    base_c = mod.start_sampler()
    try:
        fn()
    finally:
        peak_c = mod.stop_sampler()
        peak_w = client.run(mod.stop_sampler)
    mb = 1e6
    return {
        "client_base_mb": round(base_c / mb, 1),
        "client_peak_mb": round(peak_c / mb, 1),
        "worker_base_mb": [round(base_w[k] / mb, 1) for k in sorted(base_w)],
        "worker_peak_mb": [round(peak_w[k] / mb, 1) for k in sorted(peak_w)],
    }


def run(size: str = "smoke", repeat: int | None = None) -> list[dict[str, Any]]:
    """Run every case at ``size`` (``smoke`` or ``W1``); return one dict per system."""
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    from bigarray.dask_backend import from_bigarray, to_bigarray

    repeat = repeat or (5 if size == "smoke" else 3)
    root = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    results: list[dict[str, Any]] = []
    try:
        ba, zpath, segments = _build(root, size)
        npy = os.path.join(ba, "data.npy")
        nbytes = os.path.getsize(npy)
        _warm(ba)
        _warm(zpath)
        want = float(np.load(npy, mmap_mode="r").sum(dtype=np.float64))

        # --------------------------------------------------------------- threads
        x = from_bigarray(ba)
        with dask.config.set(scheduler="threads"):
            t_ba, v = _median_time(lambda: float(x.sum().compute()), repeat)
        assert abs(v - want) <= 1e-4 * abs(want), (v, want)
        t_np, _ = _median_time(lambda: float(np.load(npy, mmap_mode="r").sum()), repeat)
        results += [
            _row("sum-threads", "numpy.sum on memmap (1 thread)", t_np, nbytes),
            _row(
                "sum-threads",
                "bigarray from_bigarray, threads",
                t_ba,
                nbytes,
                ratio=round(t_np / t_ba, 2),
                goal=GOALS["sum-threads"],
            ),
        ]

        # --------------------------------------------------------------- distributed
        kw = dict(
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            memory_limit="8GiB",
        )
        with LocalCluster(n_workers=2, **kw) as cluster, Client(cluster) as client:
            z = da.from_zarr(zpath)
            t_z, vz = _median_time(lambda: float(z.sum().compute()), repeat)
            t_b, vb = _median_time(lambda: float(x.sum().compute()), repeat)
            assert abs(vb - want) <= 1e-4 * abs(want) and abs(vz - want) <= 1e-4 * abs(want)
            mem_sum = _peaks(client, lambda: x.sum().compute())
            results += [
                _row("sum-distributed", "dask + zarr (65,536-row chunks), 2 workers", t_z, nbytes),
                _row(
                    "sum-distributed",
                    "bigarray from_bigarray, 2 workers",
                    t_b,
                    nbytes,
                    ratio=round(t_z / t_b, 2),
                    goal=GOALS["sum-distributed"],
                    memory=mem_sum,
                    chunks=len(x.chunks[0]),
                ),
            ]

        # --------------------------------------------------------------- parallel write
        shape = x.shape
        src = da.ones(shape, dtype="f4", chunks=(4 * ZARR_CHUNK_ROWS, 128))
        out = str(root / "out.bigarray")
        write_times: dict[int, float] = {}
        mem_write: dict[str, Any] = {}
        for n in (1, 2):
            with LocalCluster(n_workers=n, **kw) as cluster, Client(cluster) as client:

                def write() -> None:
                    to_bigarray(src, out, segments=segments, remove_exist=True, fsync=False)

                write_times[n], _ = _median_time(write, repeat)
                if n == 2:
                    mem_write = _peaks(client, write)
        got = np.load(os.path.join(out, "data.npy"), mmap_mode="r")
        assert got.shape == shape and float(got[-1, -1]) == 1.0
        results += [
            _row("to_bigarray", "to_bigarray, 1 worker process", write_times[1], nbytes),
            _row(
                "to_bigarray",
                "to_bigarray, 2 worker processes",
                write_times[2],
                nbytes,
                ratio=round(write_times[1] / write_times[2], 2),
                goal=GOALS["to_bigarray"],
                memory=mem_write,
            ),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'case':<16} {'system':<46} {'median s':>9} {'GB/s':>7} {'ratio':>6} {'goal':>5}")
    for r in results:
        print(
            f"{r['case']:<16} {r['system']:<46} {r['median_s']:>9.3f} {r['unit_value']:>7.2f} "
            f"{r.get('ratio', ''):>6} {r.get('goal', ''):>5}"
        )
    for r in results:
        if "memory" in r:
            m = r["memory"]
            print(
                f"anonymous memory during {r['case']} (MB, base -> peak): client "
                f"{m['client_base_mb']} -> {m['client_peak_mb']}; workers "
                f"{m['worker_base_mb']} -> {m['worker_peak_mb']}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["smoke", "W1"], default="smoke")
    p.add_argument("--repeat", type=int, default=None)
    args = p.parse_args()
    print_table(run(args.size, args.repeat))


if __name__ == "__main__":
    main()
