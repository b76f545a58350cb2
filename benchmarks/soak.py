"""Long reliability runs (the slow variants of the CI suite) and the cost of checksums.

::

    python -m benchmarks.soak --kills 2000            # crash harness, 2,000 SIGKILLs
    python -m benchmarks.soak --fuzz 20000            # fuzzed damaged stores (all modes)
    python -m benchmarks.soak --checksum-cost 1GB     # write+commit with and without sums
    python -m benchmarks.soak --sessions 40           # concurrent sessions, threads, kills
    python -m benchmarks.soak --remote 40             # writers racing on one s3:// URL

``--sessions`` runs :mod:`benchmarks.soak_sessions`: threads writing and flushing, pool
workers, independent programs on one store, random SIGKILLs; every ``write()`` that returned
before a commit that returned must read back with its bytes.

The crash and fuzz engines are the ones the tests use (``tests/core/test_crash.py``,
``tests/core/test_fuzz.py``); this module only runs them longer and prints the totals. The
crash harness kills writers inside commits that merge index runs and inside
``bigarray compact`` too (its steps are in ``tests/core/test_crash.py``: ``COMPACT_STEPS``).
:func:`run` follows the benchmark convention (``run(size) -> list[dict]``) for the
checksum cost: one write of the whole array and its commit, with checksums on and off,
median of repetitions, as a ratio in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_SIZES = {"small": 64 << 20, "medium": 256 << 20, "1GB": 1 << 30, "large": 1 << 30}


def _tests() -> tuple[Any, Any]:
    sys.path.insert(0, str(ROOT / "tests"))  # the helpers test_crash/test_fuzz import
    sys.path.insert(0, str(ROOT / "tests" / "core"))
    import test_crash
    import test_fuzz

    return test_crash, test_fuzz


def soak_kills(kills: int, seeds: int = 8) -> dict[str, Any]:
    test_crash, _ = _tests()
    total = test_crash.CrashStats()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bigarray-soak-") as d:
        per = -(-kills // seeds)
        for seed in range(seeds):
            root = Path(d) / f"seed{seed}"
            root.mkdir()
            total.merge(test_crash.run_kills(root, per, 1000 + seed))
            shutil.rmtree(root, ignore_errors=True)
            print(f"  seed {seed}: {total.kills} kills so far", flush=True)
    out = {
        "kills": total.kills,
        "stores": total.stores,
        "commits": total.commits_seen,
        "segments_checked": total.segments_checked,
        "modes": dict(total.modes),
        "steps": dict(total.steps),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"crash soak: {out}")
    return out


def soak_fuzz(examples: int, seed: int = 100) -> dict[str, Any]:
    _, test_fuzz = _tests()
    totals: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bigarray-fuzz-soak-") as d:
        for mode in test_fuzz.MODES:
            stats = test_fuzz.run_attack(
                mode, examples // len(test_fuzz.MODES), seed, Path(d) / f"{mode}.json", timeout=3600
            )
            totals[mode] = stats["cases"]
            print(f"  {mode}: {stats['cases']} cases, all read correctly or refused", flush=True)
    print(f"fuzz soak: {sum(totals.values())} damaged stores, {totals}")
    return {"cases": sum(totals.values()), **totals}


def _write_commit(path: Path, data: np.ndarray, checksums: bool, fsync: bool) -> float:
    from bigarray import StoreWriter

    if path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    w = StoreWriter(
        path, dtype=data.dtype, shape=(0, data.shape[1]), checksums=checksums, fsync=fsync
    )
    w.write_rows([data], ["all"])
    w.close()
    return time.perf_counter() - t0


def run(size: str = "small", repeat: int = 3) -> list[dict[str, Any]]:
    """Checksum cost: one write of ``size`` bytes plus its commit, checksums on and off,
    with ``fsync`` on (the default) and off. Median seconds; ratio on/off in the same run."""
    nbytes = _SIZES.get(size) or int(size)
    rows = nbytes // 512
    data = np.random.default_rng(0).random((rows, 128), dtype=np.float32)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bigarray-crc-", dir=str(ROOT)) as d:
        path = Path(d) / "s"
        for fsync in (True, False):
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(repeat):
                for checksums in (False, True):  # interleaved: drift hits both alike
                    times[checksums].append(_write_commit(path, data, checksums, fsync))
            for checksums in (False, True):
                med = statistics.median(times[checksums])
                results.append(
                    {
                        "case": f"write+commit {data.nbytes / 1e9:.2f} GB, fsync={fsync}",
                        "system": f"bigarray checksums={checksums}",
                        "median_s": med,
                        "unit_value": data.nbytes / med / 1e9,
                        "unit": "GB/s",
                    }
                )
            on = statistics.median(times[True])
            off = statistics.median(times[False])
            results[-1]["ratio_vs_off"] = on / off
    print(f"{'case':40s} {'system':28s} {'median s':>9s} {'GB/s':>6s} {'on/off':>7s}")
    for r in results:
        ratio = f"{r['ratio_vs_off']:.2f}x" if "ratio_vs_off" in r else ""
        print(
            f"{r['case']:40s} {r['system']:28s} {r['median_s']:9.3f} {r['unit_value']:6.2f} "
            f"{ratio:>7s}"
        )
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kills", type=int, default=0, help="SIGKILLs for the crash harness")
    ap.add_argument("--fuzz", type=int, default=0, help="damaged stores to read (all modes)")
    ap.add_argument("--checksum-cost", default=None, help="bytes to write, e.g. 1GB or small")
    ap.add_argument("--sessions", type=int, default=0, help="rounds of the sessions soak")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--remote", type=int, default=0, help="rounds of the remote soak (S3, moto)")
    args = ap.parse_args(argv)
    if args.remote:
        from benchmarks.soak_remote import soak_remote

        totals = soak_remote(args.remote)
        return 1 if totals["mixes"] or totals["read_errors"] else 0
    if not (args.kills or args.fuzz or args.checksum_cost or args.sessions):
        args.kills, args.fuzz, args.sessions = 2000, 20000, 40
    if args.kills:
        soak_kills(args.kills)
    if args.fuzz:
        soak_fuzz(args.fuzz)
    if args.checksum_cost:
        run(args.checksum_cost, args.repeat)
    if args.sessions:
        from benchmarks import soak_sessions

        out = soak_sessions.main(args.sessions)
        if out["lost"] or out["wrong_bytes"] or out["actor_errors"]:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
