"""Scaling over dask.distributed worker processes: sums and parallel writes, bigarray vs zarr.

Self-contained (numpy, dask, distributed, zarr, bigarray). Creates a data set of ``--gb`` GB
(float32, 128 features, W1-like ragged segments of 50..150 rows) in ``--dir``, then for each
worker count (LocalCluster, 1 thread per worker, warm page cache) measures:

- ``bigarray sum``: ``from_bigarray(path).sum()``
- ``zarr sum``: ``da.from_zarr(path).sum()`` (uncompressed, 65,536-row chunks)
- ``bigarray write``: ``to_bigarray(src, path, segments=...)`` (``fsync=False``)
- ``zarr write``: ``src.to_zarr(path)`` (uncompressed, 65,536-row chunks)

``src`` is a cheap generated dask array (``da.ones``) in 262,144-row chunks (4 zarr chunks),
the same for both writers. Prints a GB/s table (median of ``--repeat``) and writes JSON to
``--out``.

Example (16-core machine)::

    python benchmarks/scaling.py --dir /scratch/scale --gb 6 --workers 1,2,4,8,16 --out scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ZARR_CHUNK_ROWS = 65_536
FEATURES = 128


def _zarr_array(path: str, shape: tuple[int, ...]) -> Any:
    """An empty uncompressed zarr v3 float32 array in ``ZARR_CHUNK_ROWS``-row chunks (this
    script runs outside the package, so it does not use ``benchmarks.peers.zarr_create``)."""
    import zarr

    return zarr.create_array(
        store=path,
        shape=shape,
        dtype="f4",
        chunks=(ZARR_CHUNK_ROWS, FEATURES),
        compressors=None,
        filters=None,
        zarr_format=3,
        overwrite=True,
    )


def build(root: str, gb: float) -> tuple[str, str, list[tuple[str, int]]]:
    """Write the bigarray store and the zarr copy (once; reused when present)."""
    from bigarray import PointerArrayWriter

    rows_target = int(gb * 1e9 / (FEATURES * 4))
    n = max(1, rows_target // 100)
    lengths = np.random.default_rng(0).integers(50, 150, n).astype(np.int64)
    off = np.concatenate([[0], np.cumsum(lengths)])
    rows = int(off[-1])
    names = [f"seg{i:08d}" for i in range(n)]
    ba = os.path.join(root, "data.bigarray")
    zp = os.path.join(root, "data.zarr")
    marker = os.path.join(root, f"built-{gb}")
    if not os.path.exists(marker):
        shutil.rmtree(ba, ignore_errors=True)
        shutil.rmtree(zp, ignore_errors=True)
        rng = np.random.default_rng(1)
        with PointerArrayWriter(ba, shape=(rows, FEATURES), dtype="f4", fsync=False) as w:
            step = 2000
            for i in range(0, n, step):
                j = min(i + step, n)
                block = rng.random((int(off[j] - off[i]), FEATURES), dtype=np.float32)
                w.write(
                    {names[k]: block[off[k] - off[i] : off[k + 1] - off[i]] for k in range(i, j)},
                    start_position=int(off[i]),
                )
        z = _zarr_array(zp, (rows, FEATURES))
        src = np.load(os.path.join(ba, "data.npy"), mmap_mode="r")
        for a in range(0, rows, ZARR_CHUNK_ROWS * 8):
            z[a : a + ZARR_CHUNK_ROWS * 8] = src[a : a + ZARR_CHUNK_ROWS * 8]
        open(marker, "w").close()
    return ba, zp, list(zip(names, lengths.tolist()))


def warm(path: str) -> None:
    for dirpath, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(64 << 20):
                    pass


def timed(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(
    n: int, ba: str, zp: str, segments: list[tuple[str, int]], root: str, repeat: int
) -> dict[str, float]:
    import dask.array as da
    from distributed import Client, LocalCluster

    from bigarray.dask_backend import from_bigarray, to_bigarray

    nbytes = os.path.getsize(os.path.join(ba, "data.npy"))
    out: dict[str, float] = {}
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            memory_limit=0,
        ) as cluster,
        Client(cluster),
    ):
        x = from_bigarray(ba)
        z = da.from_zarr(zp)
        out["bigarray sum"] = nbytes / timed(lambda: x.sum(dtype="f8").compute(), repeat) / 1e9
        out["zarr sum"] = nbytes / timed(lambda: z.sum(dtype="f8").compute(), repeat) / 1e9
        src = da.ones(x.shape, dtype="f4", chunks=(4 * ZARR_CHUNK_ROWS, FEATURES))
        wb = os.path.join(root, "write.bigarray")
        wz = os.path.join(root, "write.zarr")

        def write_ba() -> None:
            to_bigarray(src, wb, segments=segments, remove_exist=True, fsync=False)

        def write_zarr() -> None:
            shutil.rmtree(wz, ignore_errors=True)
            target = _zarr_array(wz, src.shape)
            da.store(src, target, lock=False)

        out["bigarray write"] = nbytes / timed(write_ba, repeat) / 1e9
        out["zarr write"] = nbytes / timed(write_zarr, repeat) / 1e9
        shutil.rmtree(wb, ignore_errors=True)
        shutil.rmtree(wz, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="scratch directory for the data sets")
    p.add_argument("--gb", type=float, default=6.0, help="data set size in GB (default 6)")
    p.add_argument("--workers", default="1,2,4,8,16", help="worker counts, comma separated")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="scaling.json", help="JSON results file")
    args = p.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    counts = [int(c) for c in args.workers.split(",") if c.strip()]
    ba, zp, segments = build(args.dir, args.gb)
    warm(ba)
    warm(zp)
    table: dict[int, dict[str, float]] = {}
    for n in counts:
        table[n] = measure(n, ba, zp, segments, args.dir, args.repeat)
        print(
            f"{n} workers: " + ", ".join(f"{k} {v:.2f} GB/s" for k, v in table[n].items()),
            flush=True,
        )
    cases = ["bigarray sum", "zarr sum", "bigarray write", "zarr write"]
    print(f"\nGB/s (median of {args.repeat}), {args.gb} GB, {os.cpu_count()} cores")
    print(f"{'case':<16}" + "".join(f"{n:>8}" for n in counts))
    for c in cases:
        print(f"{c:<16}" + "".join(f"{table[n][c]:>8.2f}" for n in counts))
    print(
        f"{'sum ratio':<16}"
        + "".join(f"{table[n]['bigarray sum'] / table[n]['zarr sum']:>8.2f}" for n in counts)
    )
    print(
        f"{'write ratio':<16}"
        + "".join(f"{table[n]['bigarray write'] / table[n]['zarr write']:>8.2f}" for n in counts)
    )
    result = {
        "gb": args.gb,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "workers": counts,
        "gbps": {str(n): table[n] for n in counts},
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
