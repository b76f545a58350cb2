"""The benchmark suite runs end to end at ``--size smoke`` and reports every case completely.

Timing never decides a test: these tests check that tables, JSON and chart are complete and well
formed, never how fast anything was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NUMBER_OR_NOT_IMPLEMENTED = {"ok", "not implemented"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run ``python -m benchmarks --size smoke`` once in a subprocess (isolated cluster, clean exit)."""
    out = tmp_path_factory.mktemp("bench-out")
    work = tmp_path_factory.mktemp("bench-work")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [
        "--size",
        "smoke",
        "--repeat",
        "1",
        "--timeout",
        "60",
        "--out",
        str(out),
        "--workdir",
        str(work),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    jsons = sorted(out.glob("*.json"))
    return {"proc": proc, "out": out, "jsons": jsons}


def _doc(smoke_run: dict[str, Any]) -> dict[str, Any]:
    assert len(smoke_run["jsons"]) == 1, smoke_run["proc"].stderr[-3000:]
    with open(smoke_run["jsons"][0]) as f:
        return json.load(f)


@pytest.mark.distributed
def test_smoke_run_succeeds(smoke_run: dict[str, Any]) -> None:
    proc = smoke_run["proc"]
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"


@pytest.mark.distributed
def test_every_case_and_system_is_reported(smoke_run: dict[str, Any]) -> None:
    from benchmarks.harness import CASES
    from benchmarks.runner import select_cases

    doc = _doc(smoke_run)
    stdout = smoke_run["proc"].stdout
    expected = select_cases("")
    assert [c["name"] for c in doc["cases"]] == [n for n in CASES if n in expected]
    for case in doc["cases"]:
        assert f"== {case['name']}:" in stdout
        assert case["systems"], case["name"]
        assert any(s["role"] == "bigarray" for s in case["systems"]), case["name"]
        for s in case["systems"]:
            where = f"{case['name']} / {s['system']}: {s['note']}"
            assert s["status"] in NUMBER_OR_NOT_IMPLEMENTED, where
            assert s["system"] in stdout, where
            if s["status"] == "ok":
                assert s["median_s"] is not None and s["median_s"] >= 0, where
                assert s["figure"] is not None, where
                assert len(s["times"]) == 1, where
        for g in case["goals"]:
            # A goal is reported with a verdict or as unknown; never asserted to be met.
            assert g["met"] in (True, False, None)
            assert f"goal: {g['subject']} {g['text']}:" in stdout
    assert "== goals" in stdout


@pytest.mark.distributed
def test_json_has_machine_block(smoke_run: dict[str, Any]) -> None:
    doc = _doc(smoke_run)
    m = doc["machine"]
    assert doc["schema"] == "bigarray-benchmarks/1"
    assert m["size"] == "smoke"
    for key in ("cpu_model", "cores_logical", "memory_bytes", "python", "date", "host"):
        assert m[key], key
    for dist in ("numpy", "dask", "zarr", "h5py"):
        assert m["versions"][dist], dist
    assert smoke_run["jsons"][0].name.startswith(m["date"][:10])
    assert "-smoke-" in smoke_run["jsons"][0].name


@pytest.mark.distributed
def test_chart_is_a_png(smoke_run: dict[str, Any]) -> None:
    png = smoke_run["jsons"][0].with_suffix(".png")
    assert png.exists()
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.distributed
def test_compare_prints_every_case(smoke_run: dict[str, Any]) -> None:
    from benchmarks.report import format_compare

    doc = _doc(smoke_run)
    text = format_compare(doc, doc)
    for case in doc["cases"]:
        assert f"   {case['name']} (" in text


def test_not_implemented_and_errors_do_not_crash(tmp_path: Path) -> None:
    """A missing bigarray piece reads "not implemented"; a broken peer reads "error"; goals stay unknown."""
    from benchmarks.harness import Case, Context, Goal, Measurement, System, run_case
    from benchmarks.report import format_case

    def missing(ctx: Context) -> Measurement:
        raise NotImplementedError("not there yet")

    def broken(ctx: Context) -> Measurement:
        raise OSError("disk on fire")

    def peer(ctx: Context) -> Measurement:
        return Measurement(times=[0.2, 0.1, 0.3], work=1e8)

    case = Case(
        name="fake",
        title="fake case",
        workload="ragged",
        unit="GB/s",
        systems=lambda ctx: [
            System("peer", peer),
            System("broken", broken),
            System("big", missing, "bigarray"),
        ],
        goals=[Goal(">= 2x peer", "big", "faster", 2.0, baseline="peer")],
        anchor="-",
    )
    ctx = Context("smoke", repeat=1, workdir=tmp_path, log=lambda msg: None)
    try:
        result = run_case(case, ctx)
    finally:
        ctx.close()
    by = result.by_system()
    assert by["peer"].status == "ok"
    assert by["peer"].median_s == pytest.approx(0.2)
    assert by["peer"].figure == pytest.approx(0.5)  # 1e8 bytes / 0.2 s = 0.5 GB/s
    assert by["broken"].status == "error"
    assert "disk on fire" in by["broken"].note
    assert by["big"].status == "not implemented"
    assert result.goals[0].met is None
    table = format_case(result)
    assert "not implemented" in table and "error" in table


def test_goal_directions() -> None:
    """Speed-up goals compare cost per unit of work, whatever the amount each system did."""
    from benchmarks.harness import Goal, SystemResult

    fast = SystemResult("big", "bigarray", "ok", median_s=1.0, work=100.0)  # 10 ms per item
    slow = SystemResult("peer", "peer", "ok", median_s=1.0, work=50.0)  # 20 ms per item
    results = {"big": fast, "peer": slow}
    faster = Goal("t", "big", "faster", 1.5, baseline="peer").evaluate(results)
    assert faster.ratio == pytest.approx(2.0) and faster.met is True
    within = Goal("t", "big", "within", 0.4, baseline="peer").evaluate(results)
    assert within.ratio == pytest.approx(0.5) and within.met is False
    absolute = Goal("t", "big", "max_seconds", 2.0).evaluate(results)
    assert absolute.ratio == pytest.approx(1.0) and absolute.met is True
    fast.metrics["graph_pickle_bytes"] = 2e6
    metric = Goal("t", "big", "max_metric", 1e6, metric="graph_pickle_bytes").evaluate(results)
    assert metric.met is False


def test_index_commit_benchmark_reports_every_size(tmp_path: Path) -> None:
    """``benchmarks.bench_index`` at smoke size, and its generated store (names, crc32s and
    hash table computed with numpy) reads like one written by a writer."""
    import numpy as np

    from benchmarks import bench_index
    from bigarray import PointerArray
    from bigarray.core.verify import verify_store

    result = bench_index.main(["--size", "smoke", "--workdir", str(tmp_path)])
    rows = result["table"]
    assert [r["segments"] for r in rows] == bench_index.SIZES["smoke"]
    for r in rows:
        assert r["commit10_ms"] > 0 and r["open_lookup_ms"] > 0 and r["runs_after"]
    assert rows[-1]["random_lookups"]["ratio"] > 0 and rows[-1]["dask"]["graph_bytes"] > 0
    path = str(tmp_path / "gen")
    bench_index.generate_store(path, 5000)
    x = PointerArray(path)
    assert len(x.indices) == 5000 and x.indices["s000004321"] == (4321, 4322)
    assert list(x.indices)[:2] == ["s000000000", "s000000001"]
    np.testing.assert_array_equal(x["s000000007"], np.zeros((1, 1), np.int8))
    assert verify_store(path).ok
