"""Command line of the suite: ``python -m benchmarks`` calls :func:`main`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.harness import CASES, CaseResult, Context, run_case
from benchmarks.workloads import SIZES

#: Default output directory for JSON and PNG results.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _load_cases() -> None:
    """Import the modules that register cases (kept out of import time of the package)."""
    import benchmarks.cases  # noqa: F401  (registers on import)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``python -m benchmarks --help``)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "bigarray benchmark suite: every case of benchmarks/README.md, bigarray against its "
            "peers in the same run. Prints one table per case, writes JSON and a PNG chart. "
            "Speed never makes it fail; the exit status is 1 only if a system raised an error "
            "or returned a wrong result."
        ),
    )
    p.add_argument("--size", choices=sorted(SIZES), default="W1", help="workload size (default W1)")
    p.add_argument(
        "--cases",
        default="",
        help="comma-separated case names, or 'all' (default: the default cases)",
    )
    p.add_argument(
        "--out",
        default=str(RESULTS_DIR),
        help="directory for the JSON and PNG (default benchmarks/results)",
    )
    p.add_argument("--compare", metavar="OLD.json", help="print old vs new per case and system")
    p.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed repetitions per system; the median is reported (default 5)",
    )
    p.add_argument(
        "--workdir", help="scratch directory for the stores (default: a new temporary directory)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds before a peer known not to finish is stopped (default 120)",
    )
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p


def select_cases(spec: str) -> list[str]:
    """Case names from ``--cases`` (comma-separated, ``all``, or empty for the defaults).

    Raises
    ------
    SystemExit
        On an unknown name (argparse-style usage error, status 2).
    """
    _load_cases()
    if not spec:
        return [n for n, c in CASES.items() if c.default]
    if spec == "all":
        return list(CASES)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(
            f"unknown case(s) {', '.join(map(repr, unknown))}; known: {', '.join(CASES)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the suite; return 0, or 1 if a system failed or gave a wrong result (never for speed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        # ``bigarray bench -- --size W1`` hands the separator through (argparse REMAINDER).
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        names = select_cases(args.cases)
    except SystemExit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for n in CASES:
            c = CASES[n]
            print(f"{n:<22} {'' if c.default else '(not default) '}{c.title}")
        return 0
    old = None
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)

    # Group by workload so that only one source array is in RAM at a time (4 GB each at large).
    order = sorted(names, key=lambda n: CASES[n].workload != "ragged")
    ctx = Context(args.size, repeat=args.repeat, workdir=args.workdir, timeout=args.timeout)
    results: list[CaseResult] = []
    t0 = time.perf_counter()
    try:
        current = None
        for name in order:
            case = CASES[name]
            if case.workload != current:
                ctx.release(keep=case.workload)
                current = case.workload
            cr = run_case(case, ctx)
            results.append(cr)
            print(report.format_case(cr), end="\n\n", flush=True)
    finally:
        ctx.close()
    # Print and save in registration order whatever order they ran in.
    results.sort(key=lambda r: list(CASES).index(r.name))
    print(report.format_summary(results))
    machine = report.machine_info(args.size, args.repeat)
    machine["suite_seconds"] = round(time.perf_counter() - t0, 1)
    doc = report.results_document(results, machine)
    json_path = report.write_json(doc, args.out)
    png_path = report.plot_goals(doc, json_path.with_suffix(".png"))
    print(f"\nresults: {json_path}\nchart:   {png_path}")
    if old is not None:
        print()
        print(report.format_compare(old, doc))
    failed = [
        f"{r.name}/{s.system}"
        for r in results
        for s in r.systems
        if s.status in ("error", "wrong result")
    ]
    if failed:
        print(f"\nsystems that failed (not a speed verdict): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
