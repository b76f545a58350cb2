"""The 2020 README's own benchmark, rebuilt: one big ``write()``, open, iterate, cleanup.

The original library's headline table came from a script that writes one array
(``np.random.rand(50000, 25, 128)``, float64, 1.22 GB) with h5py and with
``MmapArrayWriter.write`` (one call), opens both, checks them, iterates three epochs of
``x[i:i + 256]`` and removes the files. This runs that workload against h5py, ``np.save``
and ``np.memmap`` in one process and reports every line as a ratio against its peer from
the same run (median of ``--repeat``, systems in a rotating order):

- ``write()``: the timed call of the script (bigarray's ``MmapArrayWriter.write``, h5py's
  ``f["X"] = X``, ``np.save``, ``m[:] = X`` into an ``open_memmap``), and ``write + close``
  (bigarray's commit, h5py's close, the memmap's ``flush``), page cache cleaned (``sync``,
  untimed) before each; ``+ fsync`` rows add an ``fsync`` of the file (power-loss durable,
  like bigarray's default commit).
- ``open``: warm opens (``np.load(mmap_mode="r")``, ``h5py.File(p)["X"]``, ``MmapArray``,
  ``PointerArray``), median of ``--opens`` per repetition.
- ``slice``: one ``x[i:i + 256]``; ``iterate``: three epochs of them over the array.
- ``remove``/``size``: ``bigarray.remove``/``bigarray.getsize`` beside ``os.remove``/
  ``os.path.getsize`` of the peers' files.

Usage::

    python -m benchmarks.seed_script                      # the script's shape, 5 repetitions
    python -m benchmarks.seed_script --shape W1           # 2,000,000 x 128 float32 (1.02 GB)
    python -m benchmarks.seed_script --shape 500,25,128 --repeat 1 --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SHAPES = {"script": ((50_000, 25, 128), "float64"), "W1": ((2_000_000, 128), "float32")}
SLICE = 256
EPOCHS = 3


def _sync() -> None:
    if hasattr(os, "sync"):
        os.sync()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iterate(x: Any, n: int) -> float:
    t = time.perf_counter()
    for _ in range(EPOCHS):
        for i in range(0, n, SLICE):
            x[i : i + SLICE]
    return time.perf_counter() - t


def run(
    shape: tuple[int, ...], dtype: str, repeat: int, opens: int, workdir: str
) -> dict[str, Any]:
    import h5py

    import bigarray
    from bigarray import MmapArray, MmapArrayWriter, PointerArray

    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float64).astype(dtype, copy=False)
    n = shape[0]
    p_h5 = os.path.join(workdir, "x.h5")
    p_npy = os.path.join(workdir, "x.npy")
    p_mm = os.path.join(workdir, "x-memmap.npy")
    p_ba = os.path.join(workdir, "x.bigarray")
    t: dict[str, list[float]] = {}

    def rec(key: str, value: float) -> None:
        t.setdefault(key, []).append(value)

    def w_h5() -> None:
        with h5py.File(p_h5, "w") as f:
            t0 = time.perf_counter()
            f["X"] = x
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        _fsync(p_h5)
        t3 = time.perf_counter()
        rec("write h5py", t1 - t0)
        rec("write+close h5py", t2 - t0)
        rec("write+close h5py + fsync", t3 - t0)

    def w_npy() -> None:
        t0 = time.perf_counter()
        np.save(p_npy, x)
        t1 = time.perf_counter()
        _fsync(p_npy)
        t2 = time.perf_counter()
        rec("write np.save", t1 - t0)
        rec("write+close np.save", t1 - t0)
        rec("write+close np.save + fsync", t2 - t0)

    def w_mm() -> None:
        m = np.lib.format.open_memmap(p_mm, "w+", x.dtype, x.shape)
        t0 = time.perf_counter()
        m[:] = x
        t1 = time.perf_counter()
        m.flush()  # msync: numpy's memmap makes its pages durable here
        del m
        t2 = time.perf_counter()
        rec("write np.memmap", t1 - t0)
        rec("write+close np.memmap", t2 - t0)

    def w_ba(name: str, **kw: Any) -> Callable[[], None]:
        def go() -> None:
            w = MmapArrayWriter(p_ba, dtype=dtype, shape=(0, *shape[1:]), remove_exist=True, **kw)
            t0 = time.perf_counter()
            w.write(x)
            t1 = time.perf_counter()
            w.flush()
            w.close()
            t2 = time.perf_counter()
            rec(f"write {name}", t1 - t0)
            rec(f"write+close {name}", t2 - t0)

        return go

    writers = [w_h5, w_npy, w_mm, w_ba("bigarray fsync=False", fsync=False), w_ba("bigarray")]
    for r in range(repeat):
        k = r % len(writers)
        for w in writers[k:] + writers[:k]:
            _sync()
            w()
    # the last repetition's files stay for the read side: check them first
    _sync()
    ok = {
        "h5py": bool(np.array_equal(h5py.File(p_h5, "r")["X"][: min(n, 1000)], x[:1000])),
        "np.save": bool(np.array_equal(np.load(p_npy, mmap_mode="r"), x)),
        "np.memmap": bool(np.array_equal(np.load(p_mm, mmap_mode="r"), x)),
        "bigarray": bool(np.array_equal(MmapArray(p_ba), x)),
    }
    h5 = h5py.File(p_h5, "r")
    openers: dict[str, Callable[[], Any]] = {
        "np.load(mmap_mode='r')": lambda: np.load(p_npy, mmap_mode="r"),
        "h5py.File()['X']": lambda: h5py.File(p_h5, "r")["X"],
        "MmapArray": lambda: MmapArray(p_ba),
        "PointerArray": lambda: PointerArray(p_ba),
    }
    arrays = {
        "np.memmap": np.load(p_npy, mmap_mode="r"),
        "h5py": h5["X"],
        "MmapArray": MmapArray(p_ba),
        "PointerArray": PointerArray(p_ba),
    }
    i = n // 2 - n // 2 % SLICE
    for _ in range(repeat):
        for name, f in openers.items():
            f()  # warm
            rec(f"open {name}", statistics.median(timeit.repeat(f, number=1, repeat=opens)))
        for name, a in arrays.items():
            k = 200 if name == "h5py" else 20_000
            rec(f"slice {name}", timeit.timeit(lambda a=a: a[i : i + SLICE], number=k) / k)
            if name != "h5py":  # views: milliseconds, so the median of 9 (one preemption
                # by another process on a busy machine doubles a single run)
                rec(f"iterate {name}", statistics.median(_iterate(a, n) for _ in range(9)))
            elif not t.get("iterate h5py"):  # h5py reads the data: once is enough
                rec(f"iterate {name}", _iterate(a, n))
    h5.close()
    sizes = {
        "os.path.getsize h5py": os.path.getsize(p_h5),
        "os.path.getsize np.save": os.path.getsize(p_npy),
        "bigarray.getsize": bigarray.getsize(p_ba),
        "os.path.getsize(store) (a directory entry)": os.path.getsize(p_ba),
    }
    t0 = time.perf_counter()
    bigarray.remove(p_ba)
    rec("remove bigarray.remove", time.perf_counter() - t0)
    for p in (p_h5, p_npy, p_mm):
        t0 = time.perf_counter()
        os.remove(p)
        rec(f"remove os.remove {os.path.basename(p)}", time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"seconds": t, "median": med, "correct": ok, "sizes": sizes}


#: (line, subject, baseline): the ratios printed, subject time / baseline time.
RATIOS = [
    ("write(), default (durable commit)", "write bigarray", "write h5py"),
    ("write(), fsync=False", "write bigarray fsync=False", "write h5py"),
    ("write(), default vs np.save", "write bigarray", "write np.save"),
    ("write(), default vs np.memmap", "write bigarray", "write np.memmap"),
    ("write + close, fsync=False", "write+close bigarray fsync=False", "write+close h5py"),
    ("write + close, default vs h5py + fsync", "write+close bigarray", "write+close h5py + fsync"),
    ("write + close, default vs h5py", "write+close bigarray", "write+close h5py"),
    ("open MmapArray", "open MmapArray", "open np.load(mmap_mode='r')"),
    ("open PointerArray", "open PointerArray", "open np.load(mmap_mode='r')"),
    ("open h5py", "open h5py.File()['X']", "open np.load(mmap_mode='r')"),
    ("x[i:i+256] MmapArray", "slice MmapArray", "slice np.memmap"),
    ("x[i:i+256] PointerArray", "slice PointerArray", "slice np.memmap"),
    ("iterate 3 epochs MmapArray", "iterate MmapArray", "iterate np.memmap"),
    ("iterate 3 epochs h5py", "iterate h5py", "iterate np.memmap"),
]


def report(result: dict[str, Any]) -> str:
    med = result["median"]
    lines = ["| line | bigarray | peer | ratio |", "|---|---|---|---|"]
    for line, a, b in RATIOS:
        if a in med and b in med:
            lines.append(
                f"| {line} | {_fmt(med[a])} | {b.split(' ', 1)[1]} {_fmt(med[b])} | "
                f"{med[a] / med[b]:.2f}x |"
            )
    lines.append("")
    lines.append("medians: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(med.items())))
    lines.append("correct: " + ", ".join(f"{k} {v}" for k, v in result["correct"].items()))
    lines.append("sizes: " + ", ".join(f"{k} {v:,}" for k, v in result["sizes"].items()))
    return "\n".join(lines)


def _fmt(s: float) -> str:
    return f"{s * 1e6:.2f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.seed_script", description=__doc__)
    ap.add_argument("--shape", default="script", help="'script', 'W1' or rows,dim,... ")
    ap.add_argument("--dtype", help="default: float64 (script), float32 (W1)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--opens", type=int, default=200, help="warm opens per repetition")
    ap.add_argument("--workdir", help="where to write (default: a temporary directory)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.shape in SHAPES:
        shape, dtype = SHAPES[args.shape]
    else:
        shape, dtype = tuple(int(s) for s in args.shape.split(",")), "float64"
    dtype = args.dtype or dtype
    workdir = tempfile.mkdtemp(prefix="bigarray-seed-", dir=args.workdir)
    try:
        result = run(shape, dtype, args.repeat, args.opens, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["config"] = {
        "shape": list(shape),
        "dtype": dtype,
        "repeat": args.repeat,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"shape {shape} {dtype}, median of {args.repeat}")
    print(report(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if all(result["correct"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
