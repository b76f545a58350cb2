"""xarray face benchmark: ``open_dataset(engine="bigarray", chunks={})`` + full ``sum`` vs zarr.

Cases (one run, same data, same ``dask.distributed`` LocalCluster of 2 worker processes x 1
thread, page cache warm, median of ``--repeat`` repetitions):

- ``xr-sum``: open the W1 store lazily and ``ds["data"].sum().compute()`` on the cluster.
  Systems: ``bigarray`` (``chunks={}``: segment-aligned chunks of ~``array.chunk-size``),
  ``bigarray-32MiB`` (the same with ``array.chunk-size=32MiB``, zarr's chunk size), and the
  peer ``zarr`` (the same Dataset written by ``to_zarr`` uncompressed, 65,536-row chunks,
  opened with ``xr.open_zarr``). Figure: GB/s; goal: bigarray >= 3x zarr.
- ``xr-open-1M``: open the W1-1M store (1,000,000 segments) through xarray, with the segment
  table read at open (default), lazy without indexes, and without the table.

- ``xr-packed-write`` / ``xr-packed-read``: the W1 data as a Dataset (``data`` float32
  ``(row, dim_1)`` and the segment table as coordinates) with a packing encoding
  (``dtype: int16``, ``scale_factor``, ``_FillValue``), written by ``to_bigarray`` vs
  ``to_zarr`` (uncompressed, 65,536-row chunks) with the same encoding, then read back
  decoded (``xr.open_dataset(..., chunks=None).load()``, xarray's CF decoders, numpy) from
  both. Both write without fsync (zarr never calls it; ``bigarray-fsync`` shows the cost of
  bigarray's default). Figure: GB/s of decoded float32; goal: bigarray >= 1.0x zarr both ways.

Run: ``python -m benchmarks.bench_xarray --size smoke|W1 [--repeat 5] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.workloads import Workload, make_workload


def _write_store(path: Path, wl: Workload, data: np.ndarray) -> None:
    from bigarray import PointerArrayWriter

    with PointerArrayWriter(
        str(path), shape=(0, wl.n_features), dtype=wl.dtype, remove_exist=True
    ) as w:
        w.write(wl.segment_dict(data))


def _timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    fn()  # warm: page cache, imports, worker state
    times, value = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return times, value


def _sum_cases(size: str, repeat: int, workdir: Path, log: Any) -> list[dict[str, Any]]:
    import dask
    import xarray as xr
    from distributed import Client, LocalCluster

    import bigarray.xarray_backend  # noqa: F401  (registers nothing needed; fail early if broken)

    wl = make_workload("ragged", size)
    log(f"generating {wl.label}: {wl.n_segments:,} segments, {wl.nbytes / 1e9:.2f} GB")
    data = wl.materialize()
    store = workdir / "w1.bigarray"
    zpath = workdir / "w1.zarr"
    log("writing the bigarray store and the zarr copy")
    _write_store(store, wl, data)
    del data
    src = xr.open_dataset(store, engine="bigarray", chunks={}, segments=False)
    src[["data"]].chunk({"row": 65_536}).to_zarr(
        zpath,
        mode="w",
        consolidated=False,
        encoding={"data": {"compressors": None, "chunks": (65_536, wl.n_features)}},
    )
    src.close()
    nbytes = wl.nbytes

    def bigarray_sum() -> float:
        with xr.open_dataset(store, engine="bigarray", chunks={}) as ds:
            return float(ds["data"].sum().compute())

    def zarr_sum() -> float:
        with xr.open_zarr(zpath, consolidated=False) as ds:
            return float(ds["data"].sum().compute())

    results = []
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    )
    try:
        with Client(cluster):
            systems: list[tuple[str, Any, dict[str, Any]]] = [
                ("zarr", zarr_sum, {}),
                ("bigarray", bigarray_sum, {}),
                ("bigarray-32MiB", bigarray_sum, {"array.chunk-size": "32MiB"}),
            ]
            values = {}
            for name, fn, config in systems:
                with dask.config.set(config):
                    log(f"xr-sum: {name}")
                    times, value = _timed(fn, repeat)
                values[name] = value
                med = statistics.median(times)
                results.append(
                    {
                        "case": "xr-sum",
                        "system": name,
                        "median_s": med,
                        "unit_value": nbytes / med / 1e9,
                        "unit": "GB/s",
                        "times": times,
                    }
                )
            ref = values["zarr"]
            for name, v in values.items():
                if not np.isclose(v, ref, rtol=1e-4):
                    raise ValueError(f"{name} summed to {v}, zarr to {ref}: a wrong result")
    finally:
        cluster.close()
    base = next(r for r in results if r["system"] == "zarr")["median_s"]
    for r in results:
        r["ratio_vs_zarr"] = base / r["median_s"]
    with xr.open_dataset(store, engine="bigarray", chunks={}) as ds:
        chunks = ds["data"].chunks[0]
    with xr.open_zarr(zpath, consolidated=False) as ds:
        zchunks = ds["data"].chunks[0]
    for r in results:
        r["chunks"] = len(zchunks) if r["system"] == "zarr" else len(chunks)
    results[-1]["chunks"] = None  # depends on the config it ran under; not re-measured here
    shutil.rmtree(zpath, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    return results


def _packed_cases(size: str, repeat: int, workdir: Path, log: Any) -> list[dict[str, Any]]:
    import xarray as xr

    from bigarray.xarray_backend import to_bigarray

    wl = make_workload("ragged", size)
    log(f"packed: generating {wl.label}: {wl.n_segments:,} segments, {wl.nbytes / 1e9:.2f} GB")
    data = wl.materialize()
    starts, stops = wl.offsets[:-1], wl.offsets[1:]
    names = np.array(wl.names)
    ds = xr.Dataset(
        {"data": (("row", "dim_1"), data)},
        coords={
            "segment": ("segment", names),
            "segment_start": ("segment", starts),
            "segment_stop": ("segment", stops),
        },
    )
    # a float32 scale_factor: xarray decodes int16 * float32 to float32, the data's dtype
    scale = np.float32(float(np.abs(data).max()) / 32000 or 1.0)
    packing = {"dtype": "int16", "scale_factor": scale, "_FillValue": np.int16(-32768)}
    bpath, zpath = workdir / "packed.bigarray", workdir / "packed.zarr"
    nbytes = data.nbytes

    def write_bigarray(fsync: bool = False) -> None:
        to_bigarray(ds, bpath, mode="w", encoding={"data": packing}, fsync=fsync)

    def write_zarr() -> None:
        enc = {"data": {**packing, "compressors": None, "chunks": (65_536, wl.n_features)}}
        with warnings.catch_warnings():  # zarr v3 has no spec for '<U' (the segment names)
            warnings.simplefilter("ignore")
            ds.to_zarr(zpath, mode="w", consolidated=False, encoding=enc)

    def read(path: Path, engine: str) -> Any:
        def fn() -> Any:
            kw = {"consolidated": False} if engine == "zarr" else {}
            with xr.open_dataset(path, engine=engine, chunks=None, **kw) as back:
                return back["data"].load().values

        return fn

    results = []
    for case, system, fn in (
        ("xr-packed-write", "zarr", write_zarr),
        ("xr-packed-write", "bigarray", write_bigarray),
        ("xr-packed-write", "bigarray-fsync", lambda: write_bigarray(True)),
        ("xr-packed-read", "zarr", read(zpath, "zarr")),
        ("xr-packed-read", "bigarray", read(bpath, "bigarray")),
    ):
        log(f"{case}: {system}")
        times, value = _timed(fn, repeat)
        # decoded values: equal to the data within the packing
        if case == "xr-packed-read" and not np.allclose(value, data, atol=scale):
            raise ValueError(f"{system} read back wrong values")
        med = statistics.median(times)
        results.append(
            {
                "case": case,
                "system": system,
                "median_s": med,
                "unit_value": nbytes / med / 1e9,
                "unit": "GB/s",
                "times": times,
            }
        )
    for case in ("xr-packed-write", "xr-packed-read"):
        base = next(r for r in results if r["case"] == case and r["system"] == "zarr")
        for r in results:
            if r["case"] == case:
                r["ratio_vs_zarr"] = base["median_s"] / r["median_s"]
    shutil.rmtree(zpath, ignore_errors=True)
    shutil.rmtree(bpath, ignore_errors=True)
    return results


def _open_cases(size: str, repeat: int, workdir: Path, log: Any) -> list[dict[str, Any]]:
    import xarray as xr

    wl = make_workload("tiny", size)
    log(f"generating {wl.label}: {wl.n_segments:,} segments, {wl.nbytes / 1e9:.2f} GB")
    data = wl.materialize()
    store = workdir / "w1m.bigarray"
    _write_store(store, wl, data)
    del data
    variants = [
        ("segments=True (default)", {}),
        ("segments=True, chunks={}", {"chunks": {}}),
        (
            "segments='lazy', create_default_indexes=False",
            {"segments": "lazy", "create_default_indexes": False},
        ),
        ("segments=False", {"segments": False}),
    ]
    results = []
    for name, kw in variants:

        def run(kw: dict[str, Any] = kw) -> int:
            ds = xr.open_dataset(store, engine="bigarray", **kw)
            n = ds.sizes.get("segment", 0)
            ds.close()
            return n

        times, _ = _timed(run, max(repeat, 3))
        med = statistics.median(times)
        results.append(
            {
                "case": "xr-open-1M",
                "system": name,
                "median_s": med,
                "unit_value": med * 1e3,
                "unit": "ms",
                "segments": wl.n_segments,
                "times": times,
            }
        )
    shutil.rmtree(store, ignore_errors=True)
    return results


def run(size: str, repeat: int = 5, workdir: str | Path | None = None) -> list[dict[str, Any]]:
    """Run every case at ``size`` (``smoke``, ``W1``, ``large``); return one dict per system."""

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="bigarray-xr-bench-") if own else workdir)  # type: ignore[arg-type]
    wd.mkdir(parents=True, exist_ok=True)
    try:
        return (
            _sum_cases(size, repeat, wd, log)
            + _packed_cases(size, repeat, wd, log)
            + _open_cases(size, repeat, wd, log)
        )
    finally:
        if own:
            shutil.rmtree(wd, ignore_errors=True)


def format_table(results: list[dict[str, Any]]) -> str:
    """The results as a plain-text table."""
    lines = [f"{'case':<12} {'system':<48} {'median':>10} {'figure':>14} {'vs zarr':>8}"]
    for r in results:
        ratio = f"{r['ratio_vs_zarr']:.2f}x" if "ratio_vs_zarr" in r else ""
        lines.append(
            f"{r['case']:<12} {r['system']:<48} {r['median_s'] * 1e3:>8.1f}ms "
            f"{r['unit_value']:>9.2f} {r['unit']:<4} {ratio:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="smoke", choices=["smoke", "W1", "large"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    print(format_table(run(args.size, args.repeat, args.workdir)))


if __name__ == "__main__":
    main()
