"""Crash safety: writers SIGKILLed at random moments and at named commit steps.

A child process (``multiprocessing`` with fork or spawn) writes named segments in a loop
and commits at random intervals. Before each commit it announces the names it wrote
(``W ...``) and after the commit returns it announces ``C``, each line fsynced to a log.
The parent kills it (SIGKILL, at a random time, or the child kills itself at a named step
through ``BIGARRAY_CRASH_AT``), then opens the store and checks that

- the segment names are exactly a committed state: the names announced before the last
  ``C``, or those plus the names pending at the kill (the kill hit after the manifest
  rename but before the ``C``);
- every segment reads back byte-identical (the data is a function of the name);
- ``verify_store`` finds every recorded checksum intact;
- the next child (a later writer) resumes appending to the same store.

In *worker* mode the parent owns the writer and a child writes through it (journal
records); the parent commits after the kill: every segment the child announced is there,
and any extra one (its record landed just before the kill) is whole.

The long variant: ``python -m benchmarks.soak --kills 2000``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import PointerArray, StoreWriter
from bigarray.core import index
from bigarray.core.compact import compact
from bigarray.core.store import read_manifest
from bigarray.core.verify import verify_store
from bigarray.errors import NotAStoreError, StoreNotFoundError, VariableNotFoundError

CRASH_ENV = "BIGARRAY_CRASH_AT"
WRITE_STEPS = ("after-allocate", "mid-data", "after-data")
COMMIT_STEPS = (
    "commit-locked",
    "after-data-fsync",
    "after-header",
    "mid-index",
    "after-index",
    "before-manifest",
    "after-manifest",
    "after-discard",
)
JOURNAL_STEPS = ("after-journal",)
#: steps of ``bigarray compact`` (merging every run of the index into one; a commit too)
COMPACT_STEPS = (
    "mid-index",
    "compact-after-index",
    "compact-before-manifest",
    "compact-after-manifest",
)
ROW = 3  # int64 columns per row


class CrashCheckError(AssertionError):
    """A store did not show a committed state after a kill (the harness's failure)."""


#: Rows of a "-big" segment: 9 checksum blocks of 1 MiB (24-byte rows), large enough that
#: the writer sums its blocks while writing and the journal record carries the sums.
BIG_ROWS = 9 * ((1 << 20) // (8 * ROW)) + 5


def expected(name: str) -> np.ndarray:
    """The data of segment ``name``: 1 to 7 rows (``BIG_ROWS`` for a name ending in "-big"),
    a function of the name only."""
    h = zlib.crc32(name.encode())
    n = BIG_ROWS if name.endswith("-big") else 1 + h % 7
    return np.arange(ROW * n, dtype=np.int64).reshape(n, ROW) + h


def _announce(fd: int, line: str) -> None:
    os.write(fd, line.encode() + b"\n")
    os.fsync(fd)


def _write_loop(w: StoreWriter, log_fd: int, tag: str, seed: int, commit: bool) -> None:
    rng = random.Random(seed)
    i = 0
    while True:
        names = [f"{tag}-{i}-{j}" for j in range(rng.randint(1, 40))]
        if rng.random() < 0.15:  # kills also land while large writes are being summed
            names.insert(rng.randrange(len(names) + 1), f"{tag}-{i}-big")
        i += 1
        if rng.random() < 0.2:  # several write calls per batch
            for n in names:
                w.write_rows([expected(n)], [n])
        else:
            w.write_rows([expected(n) for n in names], names)
        _announce(log_fd, "W " + " ".join(names))
        if commit and rng.random() < 0.4:
            w.flush()
            _announce(log_fd, "C")
            if rng.random() < 0.15:  # merges of every run (commits merge a few themselves)
                compact(w.path)


def owner_child(
    path: str, log: str, tag: str, seed: int, crash_at: str | None, fsync: bool
) -> None:
    """Child process owning its writer: writes and commits until killed."""
    if crash_at:
        os.environ[CRASH_ENV] = crash_at
    else:
        os.environ.pop(CRASH_ENV, None)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    # half the writers merge runs the way big indexes are merged (streamed, memory-mapped)
    index.STREAM_MIN = 1 if seed % 2 else 1 << 20
    w = StoreWriter(path, dtype="int64", shape=(0, ROW), fsync=fsync)
    _announce(fd, "R")
    _write_loop(w, fd, tag, seed, commit=True)


def worker_child(w: StoreWriter, log: str, tag: str, seed: int, crash_at: str | None) -> None:
    """Child process writing through its parent's writer (journal records, no commit)."""
    if crash_at:
        os.environ[CRASH_ENV] = crash_at
    else:
        os.environ.pop(CRASH_ENV, None)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _announce(fd, "R")
    _write_loop(w, fd, tag, seed, commit=False)


# --------------------------------------------------------------------------- parent side


@dataclass
class CrashStats:
    kills: int = 0
    cycles: int = 0
    stores: int = 0
    segments_checked: int = 0
    commits_seen: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)

    def merge(self, other: CrashStats) -> None:
        self.kills += other.kills
        self.cycles += other.cycles
        self.stores += other.stores
        self.segments_checked += other.segments_checked
        self.commits_seen += other.commits_seen
        self.modes.update(other.modes)
        self.steps.update(other.steps)


def _read_log(log: Path) -> tuple[bool, set[str], set[str], int]:
    """(ready, names committed, names written since the last commit, commits announced)."""
    ready, committed, pending, commits = False, set(), set(), 0
    if not log.exists():
        return ready, committed, pending, commits
    for line in log.read_text().splitlines():
        if line == "R":
            ready = True
        elif line == "C":
            committed |= pending
            pending = set()
            commits += 1
        elif line.startswith("W "):
            pending.update(line[2:].split())
    return ready, committed, pending, commits


def _wait_ready(log: Path, proc: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.is_alive():
        if log.exists() and log.read_bytes()[:2] == b"R\n":
            return
        time.sleep(0.005)


def _store_names(path: Path) -> set[str] | None:
    """Names in the committed store, or None when no data was ever committed there (no
    store, or the empty first commit of a writer killed before it created its variable)."""
    try:
        x = PointerArray(path)
    except (StoreNotFoundError, NotAStoreError):
        return None
    except VariableNotFoundError:
        if read_manifest(str(path)).variables:
            raise
        return None
    try:
        return set(x.indices)
    finally:
        del x


def _check_data(path: Path, names: set[str], rng: random.Random, old: set[str]) -> int:
    """Every name in ``names`` and a sample of ``old`` reads back byte-identical."""
    if not names and not old:
        return 0  # nothing committed yet (possibly not even the variable)
    x = PointerArray(path)
    sample = set(rng.sample(sorted(old), min(len(old), 30))) if old else set()
    for n in names | sample:
        got = x[n]
        want = expected(n)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise CrashCheckError(f"{path}: segment {n!r} reads back {got!r}, expected {want!r}")
    del x
    return len(names | sample)


def _check_verify(path: Path) -> None:
    report = verify_store(path)
    if not report.ok:
        raise CrashCheckError(f"verify after a kill failed:\n{report}")


def _kill(proc: Any, rng: random.Random, crash_at: str | None, ready_log: Path) -> None:
    if rng.random() < 0.9:  # sometimes kill while the writer is still opening
        _wait_ready(ready_log, proc, 30.0)
    # crash points kill the child themselves; give them a moment to be reached
    proc.join(rng.uniform(0.05, 0.4) if crash_at else rng.uniform(0.0, 0.2))
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    if proc.exitcode != -signal.SIGKILL:
        raise CrashCheckError(
            f"child exited with {proc.exitcode} instead of being killed: it failed on its own"
        )


def run_kills(
    root: Path, kills: int, seed: int, *, kills_per_store: int = 10, spawn_every: int = 8
) -> CrashStats:
    """Kill writers ``kills`` times (stores under ``root``), checking the store after each."""
    rng = random.Random(seed)
    stats = CrashStats()
    fork, spawn = multiprocessing.get_context("fork"), multiprocessing.get_context("spawn")
    path = root / "none"
    base: set[str] = set()
    while stats.kills < kills:
        c = stats.cycles
        stats.cycles += 1
        if c % kills_per_store == 0:
            if c:
                _resume_and_check(path, base, rng, stats)
            path = root / f"store-{seed}-{c}"
            base = set()
            stats.stores += 1
        ctx = spawn if c % spawn_every == spawn_every - 1 else fork
        log = root / f"log-{seed}-{c}"
        tag = f"s{seed}c{c}"
        fsync = rng.random() < 0.5
        mode = "worker" if rng.random() < 0.3 and base else "owner"
        steps = (
            (WRITE_STEPS + JOURNAL_STEPS)
            if mode == "worker"
            else (WRITE_STEPS + COMMIT_STEPS + COMPACT_STEPS)
        )
        crash_at = None
        if rng.random() < 0.45:
            crash_at = f"{rng.choice(steps)}@{rng.randint(1, 3)}"
        stats.modes[f"{mode}/{ctx.get_start_method()}"] += 1
        stats.steps[crash_at.split("@")[0] if crash_at else "random time"] += 1
        if mode == "owner":
            proc = ctx.Process(
                target=owner_child,
                args=(str(path), str(log), tag, rng.randrange(1 << 30), crash_at, fsync),
            )
            proc.start()
            _kill(proc, rng, crash_at, log)
            stats.kills += 1
            _, committed, pending, commits = _read_log(log)
            stats.commits_seen += commits
            names = _store_names(path)
            if names is None:
                if base or committed:
                    raise CrashCheckError(f"{path}: the store vanished after a kill")
                continue
            allowed = [base | committed, base | committed | pending]
            if names not in allowed:
                raise CrashCheckError(
                    f"{path}: after a kill ({crash_at or 'random time'}) the store holds "
                    f"{len(names)} segments, not a committed state ({len(allowed[0])} or "
                    f"{len(allowed[1])}): missing {sorted((base | committed) - names)[:5]}, "
                    f"unexpected {sorted(names - allowed[1])[:5]}"
                )
        else:
            w = StoreWriter(path, dtype="int64", shape=(0, ROW), fsync=fsync)
            proc = ctx.Process(
                target=worker_child, args=(w, str(log), tag, rng.randrange(1 << 30), crash_at)
            )
            proc.start()
            _kill(proc, rng, crash_at, log)
            stats.kills += 1
            w.close()  # the owner commits what the killed worker finished
            _, _, announced, _ = _read_log(log)
            names = _store_names(path) or set()
            lost = (base | announced) - names
            extra = names - base - announced
            if lost or any(not n.startswith(tag + "-") for n in extra):
                raise CrashCheckError(
                    f"{path}: after a worker was killed the owner's commit lost {sorted(lost)[:5]} "
                    f"or gained foreign {sorted(extra)[:5]}"
                )
        stats.segments_checked += _check_data(path, names - base, rng, base)
        _check_verify(path)
        base = names
    _resume_and_check(path, base, rng, stats)
    return stats


def _resume_and_check(path: Path, base: set[str], rng: random.Random, stats: CrashStats) -> None:
    """A later writer appends to the store left by the kills; everything still reads back."""
    name = f"resume-{path.name}"
    w = StoreWriter(path, dtype="int64", shape=(0, ROW))
    w.write_rows([expected(name)], [name])
    w.close()
    names = _store_names(path) or set()
    if names != base | {name}:
        raise CrashCheckError(f"{path}: resuming changed the segments: {sorted(names ^ base)[:5]}")
    stats.segments_checked += _check_data(path, {name}, rng, base)
    _check_verify(path)


# --------------------------------------------------------------------------- tests

_KILLS = int(os.environ.get("BIGARRAY_CRASH_KILLS", "220"))
_SEEDS = 4
TOTALS = CrashStats()


@pytest.mark.parametrize("seed", range(_SEEDS))
def test_random_kills_leave_a_committed_state(tmp_path: Path, seed: int) -> None:
    stats = run_kills(tmp_path, -(-_KILLS // _SEEDS), seed)
    TOTALS.merge(stats)
    assert stats.kills >= _KILLS // _SEEDS
    assert stats.segments_checked > 0
    # both start methods, both modes and the commit window were attacked
    assert any(k.endswith("/spawn") for k in stats.modes), stats.modes
    assert any(s in COMMIT_STEPS for s in stats.steps), stats.steps


def test_kill_totals() -> None:
    """The closing figures across seeds (printed with -s; asserted so the count is real)."""
    if TOTALS.kills == 0:
        pytest.skip("run with the kill tests")
    print(
        f"\ncrash harness: {TOTALS.kills} kills survived over {TOTALS.stores} stores, "
        f"{TOTALS.commits_seen} commits announced, {TOTALS.segments_checked} segment reads "
        f"checked, modes {dict(TOTALS.modes)}, steps {dict(TOTALS.steps)}"
    )
    assert TOTALS.kills >= min(200, _KILLS)


@pytest.mark.parametrize("step", COMMIT_STEPS)
def test_kill_at_each_commit_step(tmp_path: Path, step: str) -> None:
    """Killed at every named step of the second commit: the store is at commit 1 or 2."""
    path = tmp_path / "s"
    log = tmp_path / "log"
    proc = multiprocessing.get_context("fork").Process(
        target=owner_child, args=(str(path), str(log), "t", 7, f"{step}@3", True)
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL, f"{step} was never reached ({proc.exitcode})"
    _, committed, pending, _ = _read_log(log)
    names = _store_names(path)
    assert names in (committed, committed | pending)
    after_rename = step in ("after-manifest", "after-discard")
    assert (names == committed | pending) if after_rename else (names == committed)
    _check_data(path, names or set(), random.Random(0), set())
    _check_verify(path)
    _resume_and_check(path, names or set(), random.Random(0), CrashStats())


def compact_child(path: str, crash_at: str) -> None:
    os.environ[CRASH_ENV] = crash_at
    index.STREAM_MIN = 1  # the streamed merge of big runs, through memory-mapped files
    compact(path)


@pytest.mark.parametrize("step", COMPACT_STEPS)
def test_kill_at_each_compaction_step_keeps_the_last_commit(tmp_path: Path, step: str) -> None:
    """A compaction killed anywhere leaves the last commit (its runs or the merged one);
    the next commit and the next compaction go through."""
    path = tmp_path / "s"
    names: set[str] = set()
    for c, size in enumerate((300, 30, 3)):  # each run > 4x the next: three runs
        batch = [f"c{c}-{j}" for j in range(size)]
        with StoreWriter(path, dtype="int64", shape=(0, ROW)) as w:
            w.write_rows([expected(n) for n in batch], batch)
        names |= set(batch)
    spec = read_manifest(str(path)).segments
    assert spec is not None and len(spec.runs) > 1
    proc = multiprocessing.get_context("fork").Process(
        target=compact_child, args=(str(path), f"{step}@2" if step == "mid-index" else step)
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL, f"{step} was never reached ({proc.exitcode})"
    after = read_manifest(str(path)).segments
    assert after is not None
    merged = step == "compact-after-manifest"
    assert (len(after.all_runs) == 1) if merged else (after == spec)
    assert _store_names(path) == names
    _check_data(path, names, random.Random(0), set())
    _check_verify(path)
    _resume_and_check(path, names, random.Random(0), CrashStats())
    compact(str(path))
    assert len(read_manifest(str(path)).segments.all_runs) == 1  # type: ignore[union-attr]
    _check_verify(path)


def test_killed_while_creating_the_store_can_be_created_again(tmp_path: Path) -> None:
    """What a writer killed inside its very first commit leaves (directories, lock, a
    manifest temporary): no store to read, and a later writer creates it there."""
    path = tmp_path / "s"
    (path / "index").mkdir(parents=True)
    (path / ".lock").touch()
    (path / "manifest.json.tmp-123-abcd").write_bytes(b'{"format": "big')
    with pytest.raises(NotAStoreError, match="without manifest.json"):
        PointerArray(path)
    _resume_and_check(path, set(), random.Random(0), CrashStats())


def test_crash_point_is_inert_when_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook must not fire for another step name or before its count."""
    monkeypatch.setenv(CRASH_ENV, "no-such-step")
    w = StoreWriter(tmp_path / "s", dtype="int64", shape=(0, ROW))
    w.write_rows([expected("a")], ["a"])
    w.close()
    x = PointerArray(tmp_path / "s")
    assert np.array_equal(x["a"], expected("a"))


def test_sessions_soak_keeps_every_write_before_a_returned_commit(tmp_path: Path) -> None:
    """A short run of ``python -m benchmarks.soak --sessions``: threads writing and flushing,
    pool workers and independent programs on one store, random SIGKILLs; every write that
    returned before a commit that returned reads back with its bytes."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.soak_sessions import run_sessions

    stats = run_sessions(tmp_path, 2, seed=3, verbose=False)
    assert stats.actor_errors == []
    assert stats.lost == [] and stats.wrong == []
    assert stats.writes_checked > 0 and stats.commits_returned > 0
