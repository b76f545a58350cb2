"""Printing, saving and comparing benchmark results.

- :func:`format_case`: one table per case (each system's median and figure, its ratio to the
  case's baseline, then each goal: bigarray's ratio, the target, met or not).
- :func:`write_json`: the results plus a ``machine`` block, as
  ``<out>/<date>-<size>-<host>.json``.
- :func:`plot_goals`: a bar chart (PNG) of every goal's attainment.
- :func:`format_compare`: old vs new figures per case and system, from an earlier JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.harness import CaseResult, GoalResult, SystemResult

SCHEMA = "bigarray-benchmarks/1"


# ------------------------------------------------------------------------------ machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(size: str, repeat: int) -> dict[str, Any]:
    """Describe the machine and software, so results from different runs can be told apart."""
    try:
        import psutil

        mem = int(psutil.virtual_memory().total)
        physical = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        physical = None
    import numpy

    return {
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": physical,
        "memory_bytes": mem,
        "memory_gb": round(mem / 1e9, 1),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "versions": {
            "numpy": numpy.__version__,
            **{
                d: _version(d)
                for d in ("bigarray", "dask", "distributed", "zarr", "h5py", "matplotlib")
            },
        },
        "git_commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "size": size,
        "repeat": repeat,
    }


# ------------------------------------------------------------------------------ tables
def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0 or 0.01 <= abs(x) < 1e5:
        return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
    return f"{x:.3g}"


def _fmt_goal_value(g: GoalResult) -> str:
    if g.ratio is None:
        return "-"
    if g.kind in ("faster", "within"):
        return f"{g.ratio:.2f}x"
    if g.kind == "max_seconds":
        return _fmt_seconds(g.ratio)
    return _fmt_num(g.ratio)


def _fmt_target(g: GoalResult) -> str:
    if g.kind == "faster":
        return f">= {g.target:g}x {g.baseline}"
    if g.kind == "within":
        return f"<= {g.target:g}x {g.baseline}"
    if g.kind == "max_seconds":
        return f"<= {_fmt_seconds(g.target)}"
    return f"{g.metric} <= {_fmt_num(g.target)}"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("MET" if met else "not met")


def _notes(r: SystemResult) -> str:
    """Short notes column: why there is no number, or the interesting extras."""
    if not r.ok:
        return r.note.splitlines()[0][:90] if r.note else ""
    bits = []
    info = r.info
    if "reads_per_repetition" in info:
        bits.append(f"{info['reads_per_repetition']:,} reads/rep")
    if "graph_pickle_kb" in info:
        bits.append(f"graph {info['graph_pickle_kb']:,} kB")
    if "graph_pickle_mb" in info:
        bits.append(f"graph {info['graph_pickle_mb']:,} MB")
    if "chunks" in info:
        bits.append(f"{info['chunks']:,} chunks")
    if "max_worker_peak_rss_mb" in info:
        bits.append(f"peak RSS workers {info['max_worker_peak_rss_mb']:,.0f} MB")
    if "client_peak_rss_mb" in info:
        bits.append(f"client {info['client_peak_rss_mb']:,.0f} MB")
    return ", ".join(bits)


def _ratio_to(r: SystemResult, base: SystemResult | None, kind: str) -> str:
    if base is None or not (r.ok and base.ok):
        return "-"
    rc, bc = r.cost(), base.cost()
    if not rc or not bc:
        return "-"
    return f"{(bc / rc if kind == 'faster' else rc / bc):.2f}x"


def format_case(cr: CaseResult) -> str:
    """One case as a plain-text table followed by its goals."""
    wl = cr.workload
    lines = [
        f"== {cr.name}: {cr.title}",
        f"   workload {wl['label']}: {wl['segments']:,} segments, {wl['rows']:,} rows x {wl['features']}"
        f" {wl['dtype']}, {wl['bytes'] / 1e9:.2f} GB",
        f"   anchor figures (BENCHMARKS.md): {cr.anchor}",
    ]
    # The ratio column is relative to the first goal's baseline (the peer the goal names).
    ratio_goal = next((g for g in cr.goals if g.baseline), None)
    by = cr.by_system()
    base = by.get(ratio_goal.baseline) if ratio_goal and ratio_goal.baseline else None
    # For plain-time units the figure *is* the median; do not print it twice.
    show_median = cr.unit not in ("s", "ms")
    header = ["system"] + (["median"] if show_median else []) + [cr.unit]
    if ratio_goal is not None:
        kind = ratio_goal.kind
        header.append(
            f"vs {ratio_goal.baseline}" + (" (time ratio)" if kind == "within" else " (speed-up)")
        )
    header.append("notes")
    rows: list[list[str]] = []
    for r in cr.systems:
        name = r.system + (" *" if r.role == "bigarray" else "")
        if r.ok:
            row = (
                [name] + ([_fmt_seconds(r.median_s)] if show_median else []) + [_fmt_num(r.figure)]
            )
        else:
            row = (
                [name] + ([r.status] if show_median else []) + ([""] if show_median else [r.status])
            )
        if ratio_goal is not None:
            row.append(_ratio_to(r, base, ratio_goal.kind))
        row.append(_notes(r))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    last = len(header) - 1
    fmt = "   " + "  ".join(
        f"{{:<{w}}}" if i in (0, last) else f"{{:>{w}}}" for i, w in enumerate(widths)
    )
    lines.append(fmt.format(*header).rstrip())
    lines.append("   " + "  ".join("-" * w for w in widths))
    lines += [fmt.format(*row).rstrip() for row in rows]
    for g in cr.goals:
        lines.append(f"   goal: {g.subject} {g.text}: {_fmt_goal_value(g)} -> {_verdict(g.met)}")
    lines.append(
        "   (* = bigarray; figures are medians of the repetitions, ratios from the same run)"
    )
    return "\n".join(lines)


def format_summary(results: list[CaseResult]) -> str:
    """One line per goal across all cases."""
    lines = ["== goals"]
    for cr in results:
        for g in cr.goals:
            lines.append(
                f"   {cr.name:<22} {g.text:<50} {_fmt_goal_value(g):>12}  {_verdict(g.met)}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ JSON
def results_document(results: list[CaseResult], machine: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: schema tag, machine block, cases."""
    return {"schema": SCHEMA, "machine": machine, "cases": [cr.to_json() for cr in results]}


def result_stem(machine: dict[str, Any]) -> str:
    """``<date>-<size>-<host>`` with only filename-safe characters."""
    date = _dt.datetime.fromisoformat(machine["date"]).strftime("%Y-%m-%dT%H%M%S")
    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(machine.get("host", "host")))[:40]
    return f"{date}-{machine['size']}-{host}"


def write_json(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``doc`` to ``out_dir/<date>-<size>-<host>.json``; return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result_stem(doc['machine'])}.json"
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
        f.write("\n")
    return path


def _json_default(obj: Any) -> Any:
    # numpy scalars and anything else exotic in info dicts.
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


# ------------------------------------------------------------------------------ chart
def _attainment(g: dict[str, Any]) -> float | None:
    """Goal attainment: >= 1 means met, whatever the goal's direction."""
    r, t = g["ratio"], g["target"]
    if r is None:
        return None
    if g["kind"] == "faster":
        return r / t if t else None
    return t / r if r else float("inf")


def plot_goals(doc: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of every goal's attainment (ratio / target, so 1 = just met), as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    goals = [(c["name"], g) for c in doc["cases"] for g in c["goals"]]
    labels = [f"{name}: {g['text']}" for name, g in goals]
    values = [_attainment(g) for _, g in goals]
    height = max(2.5, 0.45 * len(goals) + 1.2)
    fig, ax = plt.subplots(figsize=(10, height))
    ys = list(range(len(goals)))[::-1]
    finite = [v for v in values if v is not None and v != float("inf") and v > 0]
    lo = min([*finite, 0.1]) / 2
    hi = max([*finite, 10.0]) * 2
    for y, v, (_, g) in zip(ys, values, goals, strict=True):
        if v is None:
            ax.barh(y, hi, left=lo, color="none", edgecolor="0.7", hatch="//")
            ax.text(
                lo * 1.1,
                y,
                "no number (not implemented / failed)",
                va="center",
                fontsize=8,
                color="0.4",
            )
            continue
        v = min(v, hi)
        ax.barh(y, v - lo, left=lo, color="tab:green" if g["met"] else "tab:red")
        ax.text(
            v * 1.05 if v < hi / 2 else lo * 1.1,
            y,
            f"{_fmt_goal_value(GoalResult(**g))} (goal {_fmt_target(GoalResult(**g))})",
            va="center",
            fontsize=8,
        )
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("attainment = ratio / goal (>= 1 means met; log scale)")
    m = doc["machine"]
    ax.set_title(
        f"bigarray benchmarks, size {m['size']}, {m['date']}\n"
        f"{m['cpu_model']}, {m['cores_logical']} cores, {m['memory_gb']} GB",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------ compare
def format_compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Old vs new figure per case and system; the change is "better than 1" when improved."""
    lines = [
        f"== compare: old {old['machine'].get('date')} ({old['machine'].get('size')}, {old['machine'].get('host')})"
        f" vs new {new['machine'].get('date')} ({new['machine'].get('size')}, {new['machine'].get('host')})"
    ]
    if old["machine"].get("size") != new["machine"].get("size"):
        lines.append(
            "   note: different sizes; figures are per byte or per segment but not strictly comparable"
        )
    old_cases = {c["name"]: c for c in old.get("cases", [])}
    for case in new["cases"]:
        oc = old_cases.get(case["name"])
        if oc is None:
            lines.append(f"   {case['name']}: not in old results")
            continue
        unit = case["unit"]
        higher_better = unit == "GB/s"
        lines.append(f"   {case['name']} ({unit}; change > 1.00x means better)")
        old_sys = {s["system"]: s for s in oc["systems"]}
        names = [s["system"] for s in case["systems"]] + [
            n for n in old_sys if n not in {s["system"] for s in case["systems"]}
        ]
        new_sys = {s["system"]: s for s in case["systems"]}
        width = max(len(n) for n in names)
        for n in names:
            o, w = old_sys.get(n), new_sys.get(n)
            of = o["figure"] if o and o["status"] == "ok" else None
            nf = w["figure"] if w and w["status"] == "ok" else None
            ostr = _fmt_num(of) if of is not None else (o["status"] if o else "absent")
            nstr = _fmt_num(nf) if nf is not None else (w["status"] if w else "absent")
            change = ""
            if of and nf:
                change = f"{(nf / of if higher_better else of / nf):.2f}x"
            lines.append(f"     {n:<{width}}  {ostr:>16} -> {nstr:<16} {change}")
        og = {g["text"]: g for g in oc.get("goals", [])}
        for g in case["goals"]:
            o = og.get(g["text"])
            lines.append(
                f"     goal {g['text']}: {_verdict(o['met']) if o else 'absent'} -> {_verdict(g['met'])}"
            )
    return "\n".join(lines)
