"""The command line, run as users run it: the installed ``bigarray`` script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from run_cli import run_cli as _run

from bigarray import MmapArray, PointerArray, PointerArrayWriter
from bigarray.cli import main


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.bigarray"
    with PointerArrayWriter(path, dtype="float32") as w:
        w.write({f"u{i}": np.full((10 + i, 4), i, np.float32) for i in range(30)})
    return path


def test_info(store: Path) -> None:
    result = _run("info", str(store))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "variable   data: <f4 (735, 4) dims ('row', 'dim_1')" in out
    assert "segments   30  rows per segment: min 10, mean 24.5, max 39; first 'u0'" in out
    assert "data size  11.5 KiB" in out


def test_info_errors(tmp_path: Path) -> None:
    result = _run("info", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "StoreNotFoundError" in result.stderr and "does not exist" in result.stderr
    assert main(["info", str(tmp_path), "--storage-options", "[1]"]) == 1


def test_convert_npy_and_back(tmp_path: Path, store: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(12.0).reshape(4, 3))
    result = _run("convert", str(tmp_path / "a.npy"), str(tmp_path / "a.bigarray"), "--quiet")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(MmapArray(tmp_path / "a.bigarray"), np.arange(12.0).reshape(4, 3))
    result = _run("convert", str(store), str(tmp_path / "s.zarr"), "--quiet")
    assert result.returncode == 0, result.stderr
    result = _run("convert", str(tmp_path / "s.zarr"), str(tmp_path / "back"), "--quiet")
    assert result.returncode == 0, result.stderr
    a, b = PointerArray(store), PointerArray(tmp_path / "back")
    np.testing.assert_array_equal(a, b)
    assert dict(a.indices.items()) == dict(b.indices.items())


def test_verify(store: Path) -> None:
    result = _run("verify", str(store))
    assert result.returncode == 0, result.stdout + result.stderr
    data = store / "data.npy"
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0xFF
    data.write_bytes(bytes(raw))
    result = _run("verify", str(store))
    assert result.returncode == 1
    assert "block 0" in result.stdout and "'u0'" in result.stdout  # segments it touches


def test_there_is_no_bench_command_it_points_to_python_m_benchmarks() -> None:
    repo = Path(__file__).resolve().parents[2]
    result = _run("bench", "--list", cwd=repo)
    assert result.returncode == 2
    assert "python -m benchmarks" in result.stderr and not result.stdout


def test_python_m_bigarray_is_the_bigarray_command(store: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bigarray", "info", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == _run("info", str(store)).stdout


def test_compact_says_what_is_wrong_with_the_path(tmp_path: Path, capsys: Any) -> None:
    from legacy_files import write_legacy_pointer

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    legacy = tmp_path / "old.bin"
    write_legacy_pointer(legacy, np.zeros((4, 2), "i4"), {"a": (0, 4)})
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path): "not a local bigarray store (a directory without a valid bigarray manifest)",
        str(notes): "not a local bigarray store (not a directory)",
        str(legacy): "a file of the 2020 bigarray",
        "s3://bucket/x.bigarray": "is a URL; compact rewrites a local store",
    }
    for path, why in cases.items():
        assert main(["compact", path, "--quiet"]) == 2
        assert why in capsys.readouterr().err, path


def test_compact_takes_a_file_url(store: Path, capsys: Any) -> None:
    assert main(["compact", f"file://{store}", "--quiet"]) == 0
    assert "1 run (30 segments)" in capsys.readouterr().out


def test_rm_refuses_a_manifest_that_only_mentions_bigarray_and_a_file_with_only_the_magic(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "manifest.json").write_text('{"datasets": [{"format": "bigarray"}]}')
    (project / "thesis.tex").write_text("precious")
    notes = tmp_path / "notes.txt"
    notes.write_text("mmapdata notes: the 2020 format starts with this magic\n")
    for path in (project, notes):
        result = _run("rm", str(path))
        assert result.returncode != 0 and "NotAStoreError" in result.stderr, result
        assert "removed" not in result.stdout
    assert (project / "thesis.tex").read_text() == "precious" and notes.exists()


def test_compact_of_a_store_already_in_one_run_says_so_without_a_progress_bar(
    store: Path,
) -> None:
    result = _run("compact", str(store))
    assert result.returncode == 0, result.stderr
    assert "1 run (30 segments): already compact, nothing to do" in result.stdout
    assert "compact 1 run" not in result.stderr and "seg" not in result.stderr
