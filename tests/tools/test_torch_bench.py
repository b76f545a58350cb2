"""The PyTorch benchmark runs at ``--size smoke`` and checks every epoch it times."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("psutil")


def test_bench_torch_smoke_delivers_every_segment(tmp_path: Any) -> None:
    from benchmarks import bench_torch

    out = tmp_path / "torch.json"
    # the optional peers are measured where installed; here only the always-present ones
    rc = bench_torch.main(
        [
            "--size",
            "smoke",
            "--repeat",
            "1",
            "--peers",
            "",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    systems = {r["system"]: r for r in doc["results"]}
    assert {"bigarray (bucketed)", "numpy memmap + dict", "Megatron-style .bin/.idx"} <= set(
        systems
    )
    for r in systems.values():
        assert "error" not in r, r
        assert r["samples_per_s"] > 0 and r["worker_private_dirty_end_mb"] > 0
