"""Fuzzing damaged stores: flipped bytes, truncated and extended files, hostile manifests.

Each hypothesis example copies a small committed store (or a file of the 2020 library, read
in place), damages it, and reads it every way
a user would (``PointerArray`` with and without ``verify=True``, ``x[name]`` for every name,
``np.sum``, ``Store.read_rows``, ``verify_store``). The rules:

- any read either succeeds or raises a :class:`~bigarray.errors.BigArrayError`; never
  another exception, never a crash (SIGBUS, SIGSEGV);
- with ``verify=True`` a read that succeeds returns exactly the committed data.

The attack loop runs in a subprocess (``python tests/core/test_fuzz.py``) with faulthandler on;
the test checks its exit status, so a crash of the interpreter is a failure with a
traceback, not a dead test run. ``python -m benchmarks.soak --fuzz 20000`` runs it longer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from bigarray import PointerArray, Store, StoreWriter
from bigarray.core.verify import verify_store
from bigarray.errors import BigArrayError

MODES = ("files", "manifest-bytes", "manifest-json", "files-no-checksums", "legacy")
_EXAMPLES = int(os.environ.get("BIGARRAY_FUZZ_EXAMPLES", "250"))


def make_segments() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    segs = {
        f"seg-{i}": rng.standard_normal((int(rng.integers(1, 30)), 4)).astype("f4")
        for i in range(40)
    }
    segs["ünïcode-名前"] = np.arange(12, dtype="f4").reshape(3, 4)
    segs["empty"] = np.zeros((0, 4), "f4")
    return segs


def build_store(path: Path, checksums: bool = True) -> dict[str, np.ndarray]:
    """A store of two commits (so an older index generation lies beside the current)."""
    segs = make_segments()
    items = list(segs.items())
    w = StoreWriter(path, dtype="f4", shape=(0, 4), checksums=checksums)
    w.write_rows([a for _, a in items[:20]], [n for n, _ in items[:20]])
    w.flush()
    w.write_rows([a for _, a in items[20:]], [n for n, _ in items[20:]])
    w.close()
    return segs


# --------------------------------------------------------------------------- damage

_HOSTILE_VALUES: list[Any] = [
    None,
    True,
    False,
    -1,
    0,
    1,
    7,
    2**31,
    2**63,
    2**70,
    -(2**40),
    1.5,
    float("nan"),
    "",
    "../../etc/passwd",
    "/etc/passwd",
    "index/../data.npy",
    "data.npy",
    "<f4",
    "|O",
    "O",
    "V8",
    "|V16",
    "[('a', '<i4')]",
    "<U0",
    "<f4,<i4",
    "(2,)<f4",
    [],
    {},
    [1, 2],
    [[1]],
    {"a": 1},
    "x" * 10000,
    [2**62, 2**62],
    [-1, 4],
    "AAAA",
    "crc32",
]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def damage_manifest_json(store: Path, draw: Any) -> str:
    """Rewrite one value of the manifest with a wrong type or value (or drop/rename a key)."""
    mpath = store / "manifest.json"
    doc = json.loads(mpath.read_bytes())
    paths = _paths(doc)
    path = paths[draw(st.integers(0, len(paths) - 1))]
    parent, key = _get(doc, path[:-1]), path[-1]
    old = parent[key]
    how = draw(st.sampled_from(["value", "nudge", "delete", "rename"]))
    if how == "nudge" and isinstance(old, int) and not isinstance(old, bool):
        parent[key] = old + draw(st.sampled_from([-2, -1, 1, 2, 64, 1 << 20]))
    elif how == "delete":
        del parent[key]
    elif how == "rename" and isinstance(parent, dict):
        parent[key + "_"] = parent.pop(key)
    else:
        parent[key] = draw(st.sampled_from(_HOSTILE_VALUES))
    mpath.write_text(json.dumps(doc))
    return f"{how} {'/'.join(map(str, path))}"


def damage_file(path: Path, draw: Any) -> str:
    """Flip, zero, truncate, extend or delete one file."""
    size = path.stat().st_size
    op = draw(st.sampled_from(["flip", "flip", "zero", "truncate", "extend", "delete"]))
    if op == "delete":
        path.unlink()
    elif op == "truncate":
        with open(path, "r+b") as f:
            f.truncate(draw(st.integers(0, max(size - 1, 0))))
    elif op == "extend":
        with open(path, "ab") as f:
            f.write(draw(st.binary(min_size=1, max_size=4096)))
    elif size:
        with open(path, "r+b") as f:
            for _ in range(draw(st.integers(1, 4))):
                pos = draw(st.integers(0, size - 1))
                f.seek(pos)
                old = f.read(1)[0]
                new = 0 if op == "zero" else old ^ draw(st.integers(1, 255))
                f.seek(pos)
                f.write(bytes([new]))
    return f"{op} {path.name}"


# --------------------------------------------------------------------------- reading


def read_everything(store: Path, segs: dict[str, np.ndarray], verify: bool) -> str:
    """Read the store every way; return 'ok' or the BigArrayError class name. With
    ``verify`` a successful read must return the committed data exactly."""
    try:
        x = PointerArray(store, verify=verify)
        names = list(x.indices)
        got = {n: np.array(x[n]) for n in names}
        total = np.sum(x, dtype=np.float64)
        with Store(store) as s:
            rows = s.read_rows(None, 0, len(x))
            some = s.read_rows(None, 3, 9)
        if verify:
            assert sorted(names) == sorted(segs), (sorted(names)[:3], sorted(segs)[:3])
            for n, a in segs.items():
                assert got[n].shape == a.shape and np.array_equal(got[n], a), n
            assert np.array_equal(rows, np.concatenate([segs[n] for n in names]))
            assert np.array_equal(some, rows[3:9])
            assert total == np.sum(rows, dtype=np.float64)
        del x
        return "ok"
    except BigArrayError as exc:
        return type(exc).__name__


def build_legacy(path: Path) -> dict[str, np.ndarray]:
    """The same segments as a file of the 2020 library (PointerArrayWriter layout)."""
    from legacy_files import write_legacy_pointer

    segs = make_segments()
    bounds, start = {}, 0
    for name, a in segs.items():
        bounds[name] = (start, start + len(a))
        start += len(a)
    write_legacy_pointer(path, np.concatenate(list(segs.values())), bounds)
    return segs


def damage_legacy(path: Path, draw: Any) -> str:
    """Damage anywhere (as damage_file), or flip bytes in the header or the index pickle,
    where a flip reaches the parsers rather than the data."""
    where = draw(st.sampled_from(["anywhere", "header", "index", "index"]))
    if where == "anywhere":
        return damage_file(path, draw)
    size = path.stat().st_size
    blob = int.from_bytes(path.read_bytes()[-8:], "big")
    lo, hi = (0, 520) if where == "header" else (max(size - 8 - blob, 0), size)
    with open(path, "r+b") as f:
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(lo, max(hi - 1, lo)))
            f.seek(pos)
            old = f.read(1)
            f.seek(pos)
            f.write(bytes([(old[0] if old else 0) ^ draw(st.integers(1, 255))]))
    return f"flip {where}"


def read_legacy_in_place(path: Path) -> str:
    """Read a 2020 file in place every way; return 'ok' or the BigArrayError class name.
    The format has no checksums, so a flipped data byte reads back as it now is."""
    import bigarray
    from bigarray import MmapArray
    from bigarray.core.legacy import check_legacy

    try:
        x = PointerArray(path)
        for name in x.indices:
            np.array(x[name])
        np.sum(x, dtype=np.float64)
        np.sum(MmapArray(path), dtype=np.float64)
        np.asarray(bigarray.open(path)[:])
        ok, _ = check_legacy(path)
        del x
        return "ok" if ok else "check-failed"
    except BigArrayError as exc:
        return type(exc).__name__


def attack_legacy(template: Path, work: Path, draw: Any, outcomes: Counter[str]) -> None:
    shutil.copyfile(template, work)
    what = damage_legacy(work, draw)
    outcomes[f"legacy {what}: {read_legacy_in_place(work)}"] += 1


def attack_once(
    template: Path,
    work: Path,
    mode: str,
    draw: Any,
    segs: dict[str, np.ndarray],
    outcomes: Counter[str],
) -> None:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(template, work, symlinks=True)
    files = sorted(p for p in work.rglob("*") if p.is_file() and p.name != "manifest.json")
    if mode == "manifest-json":
        what = damage_manifest_json(work, draw)
    elif mode == "manifest-bytes":
        what = damage_file(work / "manifest.json", draw)
    else:
        what = ", ".join(
            damage_file(f, draw)
            for f in {
                files[draw(st.integers(0, len(files) - 1))] for _ in range(draw(st.integers(1, 3)))
            }
            if f.exists()
        )
    verified = read_everything(work, segs, verify=mode != "files-no-checksums")
    plain = read_everything(work, segs, verify=False)
    try:
        report = verify_store(work)
        rep = "verify-ok" if report.ok else "verify-bad"
        str(report)
    except BigArrayError as exc:
        rep = f"verify-{type(exc).__name__}"
    outcomes[f"{mode}: verified={verified} plain={plain} {rep}"] += 1
    del what


def main(argv: list[str] | None = None) -> int:
    """Entry point of the attack subprocess."""
    import faulthandler

    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    faulthandler.enable()
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bigarray-fuzz-"))
    outcomes: Counter[str] = Counter()
    try:
        template = root / "template"
        if args.mode == "legacy":
            segs = build_legacy(template)
            assert read_legacy_in_place(template) == "ok"
        else:
            segs = build_store(template, checksums=args.mode != "files-no-checksums")
            assert read_everything(template, segs, verify=True) == "ok"
        work = root / "work"

        @hseed(args.seed)
        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def run(data: Any) -> None:
            if args.mode == "legacy":
                attack_legacy(template, work, data.draw, outcomes)
            else:
                attack_once(template, work, args.mode, data.draw, segs, outcomes)

        run()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        Path(args.out).write_text(
            json.dumps({"cases": sum(outcomes.values()), "outcomes": outcomes})
        )
    return 0


def run_attack(
    mode: str, examples: int, seed: int, out: Path, timeout: float = 600
) -> dict[str, Any]:
    """Run the attack loop in a subprocess; return its stats (fails on a nonzero exit)."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "faulthandler",
            __file__,
            "--mode",
            mode,
            "--examples",
            str(examples),
            "--seed",
            str(seed),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"fuzz subprocess ({mode}) exited with {proc.returncode} (negative: killed by that "
            f"signal)\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return json.loads(out.read_text())


FUZZ_TOTAL: Counter[str] = Counter()


@pytest.mark.parametrize("mode", MODES)
def test_damaged_store_reads_correctly_or_raises(tmp_path: Path, mode: str) -> None:
    stats = run_attack(mode, _EXAMPLES, seed=1, out=tmp_path / "stats.json")
    assert stats["cases"] >= _EXAMPLES // 2  # hypothesis may stop early only on exhaustion
    FUZZ_TOTAL[mode] += stats["cases"]
    outcomes = Counter(stats["outcomes"])
    if mode == "legacy":  # damage to the header or the index was seen
        assert any(
            k.endswith(("StoreCorruptedError", "HostileInputError", "FormatError"))
            for k in outcomes
        ), outcomes
    elif mode != "files-no-checksums":
        # the damage was seen: some reads were refused by verify, some damage was harmless
        assert any(
            "verified=IntegrityError" in k
            or "verified=StoreCorruptedError" in k
            or "verified=HostileInputError" in k
            or "verified=FormatError" in k
            for k in outcomes
        ), outcomes
    print(f"\nfuzz {mode}: {stats['cases']} cases; outcomes {dict(outcomes.most_common(8))}")


def test_fuzz_totals() -> None:
    if not FUZZ_TOTAL:
        pytest.skip("run with the fuzz tests")
    print(f"\nfuzz: {sum(FUZZ_TOTAL.values())} damaged stores read, {dict(FUZZ_TOTAL)}")
    assert sum(FUZZ_TOTAL.values()) >= _EXAMPLES * 2


def test_flipped_data_byte_is_found_by_verify(tmp_path: Path) -> None:
    """One deterministic case of what the fuzzer checks at random: the report names the
    block and the segments in it, and verify=True refuses to open."""
    segs = build_store(tmp_path / "s")
    with Store(tmp_path / "s") as s:
        var = s.variable()
        start, _stop = s.index["seg-7"]
        off = var.shards[0].offset + start * var.row_nbytes
    with open(tmp_path / "s" / "data.npy", "r+b") as f:
        f.seek(off + 5)
        b = f.read(1)
        f.seek(off + 5)
        f.write(bytes([b[0] ^ 0x40]))
    report = verify_store(tmp_path / "s")
    assert not report.ok
    bad = report.first_bad_block
    assert bad is not None and bad.variable == "data" and "seg-7" in bad.segments
    assert bad.rows[0] <= start < bad.rows[1]
    assert "seg-7" in str(report) and "FAILED" in str(report)
    with pytest.raises(BigArrayError, match="crc32 is 0x"):
        PointerArray(tmp_path / "s", verify=True)
    x = PointerArray(tmp_path / "s")  # without verify the damage goes unseen: that is the point
    assert not np.array_equal(x["seg-7"], segs["seg-7"])


if __name__ == "__main__":
    # run as a script: the tests' shared helpers (legacy_files) live one directory up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
