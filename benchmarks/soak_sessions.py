"""Concurrency soak: every ``write()`` that returned before a commit that returned is kept.

One store, several writer sessions at once, random SIGKILLs::

    python -m benchmarks.soak --sessions 40        # 40 rounds (about 3 s each)

Each round runs, on one store:

- an *owner program*: one :class:`~bigarray.PointerArrayWriter` shared by three threads
  writing named segments, a fourth thread calling ``flush()`` at random moments, and a
  ``multiprocessing`` pool (fork) whose workers write through the pickled writer;
- two *independent programs*, each with its own writer (its own session), appending and
  flushing;

and SIGKILLs a random one of them (its whole process group, pool included) at a random
moment, sometimes two. Every actor appends to one shared log (``O_APPEND``: one line per
``write`` call)::

    W <session> <name>      after write() returned
    B <session> <k>         before commit k of the session starts (flush or close)
    C <session> <k>         after commit k returned

Afterwards the checker opens the store and requires, for every ``C s k`` in the log, that
every segment ``W s name`` logged before ``B s k`` is committed with its exact bytes (a
segment's data is a function of its name), that no segment reads wrong bytes, and that
``bigarray verify`` passes. The next round resumes on the same store with new sessions.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLS = 4
HANG_SECONDS = 120  # an actor still running after this is hung (a round takes about 3 s)


def seg_data(name: str) -> np.ndarray:
    """The rows of segment ``name``: 1-4 rows of int32 derived from its crc32."""
    h = zlib.crc32(name.encode())
    rows = 1 + h % 4
    return (np.arange(rows * COLS, dtype=np.int32).reshape(rows, COLS) + (h & 0xFFFFFF)).astype(
        np.int32
    )


class _Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())


def _pool_job(args: tuple[Any, str, str, int]) -> int:
    w, log_path, session, job = args
    if os.environ.get("SOAK_DEBUG"):
        import faulthandler

        f = open(f"{log_path}.{os.getpid()}.tb", "w")  # noqa: SIM115
        faulthandler.dump_traceback_later(40, exit=True, file=f)
    log = _Log(log_path)
    n = 0
    rng = random.Random(job)
    for i in range(rng.randint(3, 12)):
        names = [f"{session}-p{job}-{i}-{k}" for k in range(rng.randint(1, 4))]
        w.write({nm: seg_data(nm) for nm in names})
        for nm in names:
            log.line(f"W {session} {nm}")
        n += len(names)
    os.close(log.fd)
    return n


def owner_program(path: str, log_path: str, seed: int) -> None:
    """Threads writing, a thread flushing, pool workers writing through the pickled writer."""
    import multiprocessing
    import threading

    from bigarray import PointerArrayWriter

    rng = random.Random(seed)
    session = f"o{seed}"
    log = _Log(log_path)
    w = PointerArrayWriter(path, shape=(0, COLS), dtype="int32")
    stop = threading.Event()
    commit = [0]
    commit_lock = threading.Lock()

    def flush_once() -> None:
        with commit_lock:  # k numbers the commits of this session in log order
            commit[0] += 1
            k = commit[0]
            log.line(f"B {session} {k}")
            w.flush()
            log.line(f"C {session} {k}")

    def writer(t: int) -> None:
        r = random.Random(seed * 100 + t)
        i = 0
        while not stop.is_set():
            names = [f"{session}-t{t}-{i}-{k}" for k in range(r.randint(1, 5))]
            w.write({nm: seg_data(nm) for nm in names})
            for nm in names:
                log.line(f"W {session} {nm}")
            i += 1
            time.sleep(r.random() * 0.004)

    def flusher() -> None:
        r = random.Random(seed * 100 + 99)
        while not stop.is_set():
            time.sleep(r.random() * 0.05)
            flush_once()

    failed: list[BaseException] = []

    def run(target: Any, *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported by the program's exit, not lost in a thread
            failed.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(writer, t)) for t in range(3)]
    threads.append(threading.Thread(target=run, args=(flusher,)))
    try:
        # The pool forks before the threads start: a fork while other threads run can copy
        # Python's own import lock held (a numpy lazy attribute), and the child then hangs.
        # (The writer's own locks are safe across such a fork: see bigarray.core.fileutil.locked.)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            for t in threads:
                t.start()
            pool.map(_pool_job, [(w, log_path, session, seed * 1000 + j) for j in range(8)])
        time.sleep(rng.random())
    finally:
        # a failed pool job must end the program with its error, not leave it hanging on
        # threads that would write forever
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
    if failed:
        raise failed[0]
    flush_once()
    with commit_lock:
        commit[0] += 1
        log.line(f"B {session} {commit[0]}")
        w.close()
        log.line(f"C {session} {commit[0]}")


def independent_program(path: str, log_path: str, seed: int) -> None:
    """A program of its own: its own writer session, appending and flushing."""
    from bigarray import PointerArrayWriter

    rng = random.Random(seed)
    session = f"i{seed}"
    log = _Log(log_path)
    w = PointerArrayWriter(path, shape=(0, COLS), dtype="int32")
    k = 0
    deadline = time.monotonic() + 1 + 2 * rng.random()
    i = 0
    while time.monotonic() < deadline:
        names = [f"{session}-{i}-{j}" for j in range(rng.randint(1, 8))]
        w.write({nm: seg_data(nm) for nm in names})
        for nm in names:
            log.line(f"W {session} {nm}")
        i += 1
        if rng.random() < 0.2:
            k += 1
            log.line(f"B {session} {k}")
            w.flush()
            log.line(f"C {session} {k}")
    k += 1
    log.line(f"B {session} {k}")
    w.close()
    log.line(f"C {session} {k}")


@dataclass
class SoakStats:
    rounds: int = 0
    kills: int = 0
    writes_returned: int = 0  # segments whose write() returned (logged)
    writes_checked: int = 0  # of those, logged before a commit that returned: must be kept
    commits_returned: int = 0
    segments_in_store: int = 0
    lost: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    actor_errors: list[str] = field(default_factory=list)
    slowest_actor_s: float = 0.0  # the longest an actor that was not killed ran

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "kills": self.kills,
            "writes_returned": self.writes_returned,
            "writes_checked": self.writes_checked,
            "commits_returned": self.commits_returned,
            "segments_in_store": self.segments_in_store,
            "lost": len(self.lost),
            "wrong_bytes": len(self.wrong),
            "actor_errors": len(self.actor_errors),
            "slowest_actor_s": round(self.slowest_actor_s, 1),
        }


def _spawn(kind: str, path: str, log: str, seed: int, errlog: Path) -> subprocess.Popen[bytes]:
    # SIGUSR1 dumps every thread's stack to the actor's error log (pool workers inherit it):
    # a hung actor is reported with where it hangs.
    code = (
        f"import sys, signal, faulthandler; sys.path.insert(0, {str(ROOT)!r}); "
        "faulthandler.register(signal.SIGUSR1, all_threads=True); "
        f"from benchmarks.soak_sessions import {kind}; {kind}({path!r}, {log!r}, {seed})"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(errlog, "wb"),  # the child owns it
        start_new_session=True,  # one process group: a kill takes the pool workers too
    )


def check(path: str, log_path: str, stats: SoakStats) -> None:
    """Every write logged before a commit that returned must be committed, bytes exact."""
    from bigarray import PointerArray
    from bigarray.core.verify import verify_store

    written: dict[str, list[str]] = {}
    must: set[str] = set()
    begun: dict[tuple[str, str], int] = {}
    lines = Path(log_path).read_text().splitlines()
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3:
            continue  # a line cut by a kill
        kind, session, arg = parts
        if kind == "W":
            written.setdefault(session, []).append(arg)
        elif kind == "B":
            begun[(session, arg)] = len(written.get(session, []))
        elif kind == "C":
            stats.commits_returned += 1
            upto = begun[(session, arg)]
            must.update(written.get(session, [])[:upto])
    stats.writes_returned = sum(len(v) for v in written.values())
    stats.writes_checked = len(must)
    x = PointerArray(path)
    index = x.indices
    stats.segments_in_store = len(index)
    for name in sorted(must):
        if name not in index:
            stats.lost.append(name)
    for name in index:
        got = np.asarray(x[name])
        if not np.array_equal(got, seg_data(name)):
            stats.wrong.append(name)
    report = verify_store(path)
    if not report.ok:
        stats.wrong.append(f"verify: {report}")


def run_sessions(root: Path, rounds: int, seed: int = 0, *, verbose: bool = True) -> SoakStats:
    """``rounds`` rounds of concurrent sessions with random kills on one store."""
    rng = random.Random(seed)
    stats = SoakStats()
    path = str(root / "store")
    log = str(root / "log.txt")
    for r in range(rounds):
        s = seed * 10_000 + r * 10
        began = time.monotonic()
        errs = [root / f"err-{r}-{k}.txt" for k in range(3)]
        actors = [
            _spawn("owner_program", path, log, s, errs[0]),
            _spawn("independent_program", path, log, s + 1, errs[1]),
            _spawn("independent_program", path, log, s + 2, errs[2]),
        ]
        killed: set[int] = set()
        for _ in range(rng.choice([0, 1, 1, 2])):
            time.sleep(rng.random() * 1.5)
            k = rng.randrange(len(actors))
            if actors[k].poll() is None and k not in killed:
                os.killpg(actors[k].pid, signal.SIGKILL)
                killed.add(k)
                stats.kills += 1
        for k, p in enumerate(actors):
            try:
                p.wait(timeout=HANG_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGUSR1)
                time.sleep(2)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                stacks = errs[k].read_text()[-20000:]
                stats.actor_errors.append(f"round {r} actor {k}: hung, killed; stacks:\n{stacks}")
                continue
            if k not in killed:
                stats.slowest_actor_s = max(stats.slowest_actor_s, time.monotonic() - began)
            if k in killed:
                with_group = True
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # any pool worker left behind
                except ProcessLookupError:
                    with_group = False
                del with_group
            elif p.returncode != 0:
                stats.actor_errors.append(
                    f"round {r} actor {k}: exit {p.returncode}: {errs[k].read_text()[-2000:]}"
                )
        stats.rounds += 1
        if verbose:
            print(f"  round {r}: {stats.kills} kills so far", flush=True)
    check(path, log, stats)
    return stats


def main(rounds: int, seed: int = 0) -> dict[str, Any]:
    import shutil
    import tempfile

    t0 = time.perf_counter()
    d = tempfile.mkdtemp(prefix="bigarray-sessions-soak-")
    try:
        stats = run_sessions(Path(d), rounds, seed)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    out = {**stats.as_dict(), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"sessions soak: {out}")
    for msg in (stats.lost[:5], stats.wrong[:5], stats.actor_errors[:5]):
        for m in msg:
            print("  ", m)
    return out
