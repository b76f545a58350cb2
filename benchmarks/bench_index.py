"""Commits into large stores: the segment index in runs (O(new segments) per commit).

Table (``--size smoke|W1``): for stores of N segments (N = 10, 100,000, 1,000,000,
4,000,000 at W1), the median time of 5 flushes that each commit 10 new segments (page
cache, ``fsync=False``, and durable, ``fsync=True``), the runs of the index afterwards,
and the median time to open the store and look up one name (``PointerArray(path)[name]``).
At the largest N it also times 5,000 random lookups by name against numpy memmap + a dict
(its peer), and ``from_bigarray`` of the whole store (time to build, pickled graph size).

``--size huge``: one store of 100,000,000 segments (``--huge-n`` to change it), generated
directly as one index run (names ``s000000000`` ...: fixed width, so names, offsets and
crc32s are computed with numpy in blocks, never as Python objects), then 7 flushes of
1,000 new segments (median), open + one lookup, random lookups (the peer's dict of 100 M
names does not fit in memory: not measured), ``from_bigarray``, and ``bigarray compact``.
It reports how long building the store took and the peak resident memory.

Run: ``python -m benchmarks.bench_index --size W1`` or ``--size huge [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SIZES = {
    "smoke": [10, 10_000],
    "W1": [10, 100_000, 1_000_000, 4_000_000],
}
HUGE_N = 100_000_000
NAME_WIDTH = 10  # "s" + 9 digits


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- generation

_CRC_TABLE: np.ndarray | None = None


def _crc_table() -> np.ndarray:
    global _CRC_TABLE
    if _CRC_TABLE is None:
        t = np.arange(256, dtype=np.uint32)
        for _ in range(8):
            t = np.where(t & 1, (t >> 1) ^ np.uint32(0xEDB88320), t >> 1).astype(np.uint32)
        _CRC_TABLE = t
    return _CRC_TABLE


def crc32_rows(names: np.ndarray) -> np.ndarray:
    """zlib.crc32 of each row of a ``(n, width)`` uint8 array, vectorised over rows."""
    table = _crc_table()
    crc = np.full(len(names), 0xFFFFFFFF, np.uint32)
    for k in range(names.shape[1]):
        crc = table[(crc ^ names[:, k]) & 0xFF] ^ (crc >> 8)
    return crc ^ np.uint32(0xFFFFFFFF)


def name_block(lo: int, hi: int) -> np.ndarray:
    """``(hi - lo, 10)`` uint8: the UTF-8 bytes of names ``s{i:09d}``."""
    i = np.arange(lo, hi, dtype=np.int64)
    out = np.empty((hi - lo, NAME_WIDTH), np.uint8)
    out[:, 0] = ord("s")
    for k in range(9):
        out[:, 1 + k] = (i // 10 ** (8 - k)) % 10 + 48
    return out


def generate_store(path: str, n: int, block: int = 5_000_000) -> float:
    """A store of ``n`` one-row int8 segments named ``s000000000``... in one index run,
    written without any per-name Python object; returns the seconds it took."""
    from bigarray import StoreWriter
    from bigarray.core import integrity
    from bigarray.core.commit import update_manifest
    from bigarray.core.format import INDEX_DIR, save_npy
    from bigarray.core.index import IndexFiles, build_table

    t0 = time.perf_counter()
    shutil.rmtree(path, ignore_errors=True)
    StoreWriter(path, variable="data", named=False, dtype="int8", shape=(n, 1)).close()
    os.makedirs(os.path.join(path, INDEX_DIR), exist_ok=True)
    gen = 1_000_000  # far above the generations the benchmark's commits reach
    rel = {r: f"{INDEX_DIR}/g{gen}-{r}.npy" for r in ("names", "name_offsets", "bounds")}
    rel.update(hashes=f"{INDEX_DIR}/g{gen}-hashes.npy", table=f"{INDEX_DIR}/g{gen}-table.npy")
    full = {r: os.path.join(path, p) for r, p in rel.items()}
    mm = np.lib.format.open_memmap
    names = mm(full["names"], "w+", np.uint8, (n * NAME_WIDTH,))
    noff = mm(full["name_offsets"], "w+", np.dtype("<i8"), (n + 1,))
    bounds = mm(full["bounds"], "w+", np.dtype("<i8"), (n, 2))
    hashes = mm(full["hashes"], "w+", np.dtype("<u4"), (n,))
    noff[-1] = n * NAME_WIDTH
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        nb = name_block(lo, hi)
        names[lo * NAME_WIDTH : hi * NAME_WIDTH] = nb.reshape(-1)
        idx = np.arange(lo, hi, dtype=np.int64)
        noff[lo:hi] = idx * NAME_WIDTH
        bounds[lo:hi, 0] = idx
        bounds[lo:hi, 1] = idx + 1
        hashes[lo:hi] = crc32_rows(nb)
    offsets = {}
    for r, a in (("names", names), ("name_offsets", noff), ("bounds", bounds), ("hashes", hashes)):
        a.flush()
        offsets[r] = a.offset
    del names, noff, bounds
    table = build_table(np.asarray(hashes))
    del hashes
    offsets["table"] = save_npy(full["table"], table, fsync=False)
    spec = IndexFiles(n, gen, len(table), rel, offsets)
    del table
    entry = integrity.index_entry(path, spec)

    def change(m: Any) -> Any:
        var = m.variables["data"]
        sums = dict(var.checksums or {})
        if sums:
            sums["index"] = entry
        from bigarray.core.format import Manifest, Variable

        v = Variable(
            var.name,
            var.dtype,
            var.shape,
            var.dims,
            var.shards,
            var.attrs,
            var.encoding,
            sums or None,
        )
        return Manifest(m.generation, {"data": v}, spec, m.row_dim, m.attrs)

    update_manifest(path, change, fsync=False)
    return time.perf_counter() - t0


def write_named(path: str, n: int) -> None:
    """A store of ``n`` named segments written the ordinary way (one ``write`` call)."""
    if n >= 1_000_000:  # the generator is the same store, minutes faster
        generate_store(path, n)
        return
    from bigarray import PointerArrayWriter

    with PointerArrayWriter(path, dtype="int8", remove_exist=True) as w:
        w.write({f"s{i:09d}": np.zeros((1, 1), np.int8) for i in range(n)})


# --------------------------------------------------------------------------- measurements


def commit_times(path: str, new: int, repeat: int, fsync: bool, tag: str) -> float:
    """Median ms of ``repeat`` flushes, each committing ``new`` appended segments."""
    from bigarray import StoreWriter

    w = StoreWriter(path, fsync=fsync)
    times = []
    one = np.zeros((1, 1), np.int8)
    for r in range(repeat):
        names = [f"{tag}-{r}-{j}" for j in range(new)]
        w.write_rows([one] * new, names)
        t = time.perf_counter()
        w.flush()
        times.append(time.perf_counter() - t)
    w.close()
    return 1000 * statistics.median(times)


def open_lookup_ms(path: str, name: str, repeat: int = 7) -> float:
    from bigarray import PointerArray

    def go() -> None:
        x = PointerArray(path)
        x[name]
        del x

    go()
    return _median_ms(go, repeat)


def runs_of(path: str) -> list[int]:
    from bigarray.core.store import read_manifest

    spec = read_manifest(path).segments
    return [] if spec is None else [r.count for r in spec.all_runs]


def random_lookups(path: str, n: int, k: int = 5000, with_peer: bool = True) -> dict[str, Any]:
    """us per lookup+read of ``k`` random names: bigarray vs numpy memmap + dict."""
    from bigarray import PointerArray

    rng = random.Random(0)
    names = [f"s{rng.randrange(n):09d}" for _ in range(k)]
    x = PointerArray(path)

    def ba() -> None:
        for nm in names:
            x[nm]

    out: dict[str, Any] = {"bigarray_us": _median_ms(ba, 5) * 1000 / k}
    if with_peer:
        mm = np.load(os.path.join(path, "data.npy"), mmap_mode="r")
        d = {f"s{i:09d}": (i, i + 1) for i in range(n)}

        def peer() -> None:
            for nm in names:
                a, b = d[nm]
                mm[a:b]

        out["memmap_dict_us"] = _median_ms(peer, 5) * 1000 / k
        out["ratio"] = out["bigarray_us"] / out["memmap_dict_us"]
        del d
    return out


def dask_plan(path: str) -> dict[str, Any]:
    import dask.array  # noqa: F401 - imported before the clock starts

    from bigarray.dask_backend import from_bigarray

    t = time.perf_counter()
    x = from_bigarray(path)
    build = time.perf_counter() - t
    graph = len(pickle.dumps(dict(x.__dask_graph__())))
    return {"from_bigarray_s": build, "graph_bytes": graph, "chunks": len(x.chunks[0])}


def run_table(size: str, root: str) -> list[dict[str, Any]]:
    rows = []
    sizes = SIZES[size]
    for n in sizes:
        path = os.path.join(root, f"n{n}")
        t = time.perf_counter()
        write_named(path, n)
        build = time.perf_counter() - t
        page = commit_times(path, 10, 5, False, "p")
        durable = commit_times(path, 10, 5, True, "d")
        row: dict[str, Any] = {
            "segments": n,
            "build_s": round(build, 2),
            "commit10_ms": round(page, 2),
            "commit10_fsync_ms": round(durable, 2),
            "runs_after": runs_of(path),
            "open_lookup_ms": round(open_lookup_ms(path, f"s{n // 2:09d}"), 3),
        }
        if n == sizes[-1]:
            row["random_lookups"] = random_lookups(path, n)
            row["dask"] = dask_plan(path)
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(path, ignore_errors=True)
    base = rows[0]["commit10_ms"]
    for r in rows:
        r["commit_ratio_vs_10"] = round(r["commit10_ms"] / base, 2)
    return rows


def _compact(path: str) -> dict[str, Any]:
    from bigarray.core.compact import compact

    t = time.perf_counter()
    compact(path)
    return {"seconds": round(time.perf_counter() - t, 1), "runs": runs_of(path)}


def _capped_child(fn: Callable[[str], Any], path: str, cap: int, conn: Any) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        result = fn(path)
        result["peak_rss_mb"] = round(_peak_rss_mb())
        conn.send(result)
    except MemoryError:
        conn.send({"error": f"MemoryError under an address-space cap of {cap >> 30} GiB"})


def _capped(fn: Callable[[str], Any], path: str, cap_gb: float) -> Any:
    """``fn(path)`` in a forked child whose address space (maps included) is capped."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_capped_child, args=(fn, path, int(cap_gb * (1 << 30)), child))
    proc.start()
    proc.join()
    return parent.recv() if parent.poll() else {"error": f"child exited {proc.exitcode}"}


def _commit_rss(path: str) -> dict[str, Any]:
    """A fresh writer's 7 commits of 1,000 segments, in this (forked) process: its peak
    resident memory, mapped index pages it touched included."""
    before = _peak_rss_mb()
    ms = commit_times(path, 1000, 7, False, "rss")
    return {"commit1000_ms": round(ms, 2), "rss_before_mb": round(before)}


def run_huge(root: str, n: int, cap_gb: float = 14.0, compact: bool = True) -> dict[str, Any]:
    path = os.path.join(root, f"huge{n}")
    out: dict[str, Any] = {"segments": n}
    # the peer: the same commits into a store of 10 segments, in the same run
    small = os.path.join(root, "small")
    write_named(small, 10)
    out["commit1000_into_10_ms"] = round(commit_times(small, 1000, 7, False, "h"), 2)
    shutil.rmtree(small, ignore_errors=True)
    out["build_s"] = round(generate_store(path, n), 1)
    out["build_peak_rss_mb"] = round(_peak_rss_mb())
    print(json.dumps(out), flush=True)
    out["open_lookup_ms"] = round(open_lookup_ms(path, f"s{n // 3:09d}"), 3)
    out["commit1000_ms"] = round(commit_times(path, 1000, 7, False, "h"), 2)
    out["commit1000_ratio_vs_10"] = round(out["commit1000_ms"] / out["commit1000_into_10_ms"], 2)
    out["commit1000_fsync_ms"] = round(commit_times(path, 1000, 7, True, "hd"), 2)
    out["commit_child"] = _capped(_commit_rss, path, cap_gb)
    out["runs_after"] = runs_of(path)
    out["open_lookup_after_commits_ms"] = round(open_lookup_ms(path, f"s{n // 3:09d}"), 3)
    out["random_lookups"] = random_lookups(path, n, with_peer=False)
    out["random_lookups"]["peer"] = "a dict of every name does not fit in memory: not measured"
    print(json.dumps(out), flush=True)
    # O(N) steps run in a child with its address space capped: the machine is shared
    out["dask"] = _capped(dask_plan, path, cap_gb)
    print(json.dumps(out), flush=True)
    if compact:
        out["compact"] = _capped(_compact, path, cap_gb)
        out["dask_after_compact"] = _capped(dask_plan, path, cap_gb)
    out["peak_rss_mb"] = round(_peak_rss_mb())
    print(json.dumps(out), flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=[*SIZES, "huge"], default="smoke")
    p.add_argument("--huge-n", type=int, default=HUGE_N, help="segments of --size huge")
    p.add_argument(
        "--cap-gb", type=float, default=14.0, help="address-space cap of the O(N) steps (GiB)"
    )
    p.add_argument("--no-compact", action="store_true", help="--size huge without compact")
    p.add_argument("--workdir", help="where to build the stores (default: a temporary dir)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-index-", dir=args.workdir)
    try:
        if args.size == "huge":
            result: dict[str, Any] = {
                "huge": run_huge(root, args.huge_n, args.cap_gb, not args.no_compact)
            }
        else:
            result = {"table": run_table(args.size, root)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["size"] = args.size
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
