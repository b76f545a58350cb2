"""Concurrency: many writer sessions committing into one store while readers open it.

Eight processes, each with its own :class:`~bigarray.core.writer.StoreWriter` (its own session),
write 10,000 named segments each: half at fixed positions inside a pre-sized region of
the store, half appended. They commit every two batches, so commits contend for the store
lock and merge each other's index. Reader processes reopen the store in a loop meanwhile
and check that they only ever see committed states: every visible segment reads back its
exact data, and each writer's visible segments are exactly a prefix of its commits.

Segment data is a function of the name's crc32, which the index stores, so a reader checks
80,000 segments with a few vectorised numpy operations.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import PointerArray, StoreWriter
from bigarray.core.verify import verify_store
from bigarray.errors import DuplicateSegmentError, OverlapError

WRITERS = 8
SEGMENTS = 10_000  # per writer
BATCH = 500  # segments per write call
ROWS = 2  # rows per segment
COLS = 2
REGION = SEGMENTS // 2 * ROWS  # rows of each writer's positioned region
COMMIT_EVERY = 2  # batches


def seg_data(h: np.ndarray | int) -> np.ndarray:
    """Data of segments whose names hash to ``h``: (n, ROWS, COLS) int32."""
    base = (np.asarray(h, np.int64).reshape(-1, 1, 1) & 0x3FFFFFFF).astype(np.int32)
    return base + np.arange(ROWS * COLS, dtype=np.int32).reshape(1, ROWS, COLS)


def batches(i: int) -> list[tuple[list[str], int | None]]:
    """Writer ``i``'s batches in order: (names, start_position or None to append)."""
    out: list[tuple[list[str], int | None]] = []
    half = SEGMENTS // 2 // BATCH
    for b in range(half):
        out.append(([f"w{i}-p{b}-{k}" for k in range(BATCH)], i * REGION + b * BATCH * ROWS))
        out.append(([f"w{i}-a{b}-{k}" for k in range(BATCH)], None))
    return out


def writer_proc(path: str, i: int, result: str) -> None:
    w = StoreWriter(path)
    commits = 0
    t0 = time.perf_counter()
    for n, (names, pos) in enumerate(batches(i), 1):
        h = np.fromiter((zlib.crc32(s.encode()) for s in names), np.int64, len(names))
        data = seg_data(h)
        w.write_rows(list(data), names, start_position=pos)
        if n % COMMIT_EVERY == 0:
            w.flush()
            commits += 1
    w.close()
    Path(result).write_text(json.dumps({"commits": commits, "s": time.perf_counter() - t0}))


def check_state(path: str) -> dict[str, int]:
    """Open the store, check every visible segment; return visible segments per writer."""
    x = PointerArray(path)
    if not len(x.indices):
        return {}
    a = x.indices.arrays
    bounds = np.asarray(a.bounds)
    data = np.asarray(x)
    hashes = np.asarray(a.hashes)
    if len(bounds):
        assert bool(np.all(bounds[:, 1] - bounds[:, 0] == ROWS)), "a segment changed length"
        got = np.stack([data[bounds[:, 0] + r] for r in range(ROWS)], axis=1)
        want = seg_data(hashes)
        bad = np.flatnonzero(np.any(got != want, axis=(1, 2)))
        assert not bad.size, f"segment {a.name(int(bad[0]))!r} reads back wrong data"
    names = x.indices.names_list()
    per: dict[str, set[str]] = {}
    for n in names:
        per.setdefault(n.split("-")[0], set()).add(n)
    counts = {}
    for w, got_names in per.items():
        i = int(w[1:])
        # committed states only: a whole number of commits, and exactly their names
        assert len(got_names) % (COMMIT_EVERY * BATCH) == 0, (w, len(got_names))
        k = len(got_names) // BATCH
        want_names = {s for names_, _ in batches(i)[:k] for s in names_}
        assert got_names == want_names, f"{w}: visible segments are not a prefix of its commits"
        counts[w] = len(got_names)
    del x
    return counts


def reader_proc(path: str, stop: str, result: str) -> None:
    passes, last = 0, {}
    while not os.path.exists(stop):
        counts = check_state(path)
        # states only move forward: a later open never shows fewer commits of a writer
        assert all(counts.get(w, 0) >= c for w, c in last.items()), (last, counts)
        last = counts
        passes += 1
    Path(result).write_text(json.dumps({"passes": passes, "seen": sum(last.values())}))


def test_eight_writers_and_readers(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    # the positioned regions are committed rows (zeros) before the writers start
    w = StoreWriter(path, dtype="int32", shape=(WRITERS * REGION, COLS))
    w.close()
    fork = multiprocessing.get_context("fork")
    stop = tmp_path / "stop"
    readers = [
        fork.Process(target=reader_proc, args=(path, str(stop), str(tmp_path / f"r{j}.json")))
        for j in range(2)
    ]
    writers = [
        fork.Process(target=writer_proc, args=(path, i, str(tmp_path / f"w{i}.json")))
        for i in range(WRITERS)
    ]
    for p in readers + writers:
        p.start()
    for p in writers:
        p.join(300)
    stop.touch()
    for p in readers:
        p.join(120)
    assert [p.exitcode for p in writers] == [0] * WRITERS
    assert [p.exitcode for p in readers] == [0, 0], "a reader failed (see its traceback)"
    commits = sum(
        json.loads((tmp_path / f"w{i}.json").read_text())["commits"] for i in range(WRITERS)
    )
    reads = [json.loads((tmp_path / f"r{j}.json").read_text()) for j in range(2)]
    assert commits == WRITERS * SEGMENTS // BATCH // COMMIT_EVERY
    # nothing lost: every segment of every writer, with its data, and checksums intact
    counts = check_state(path)
    assert counts == {f"w{i}": SEGMENTS for i in range(WRITERS)}
    assert len(PointerArray(path).indices) == WRITERS * SEGMENTS
    report = verify_store(path)
    assert report.ok, str(report)
    print(
        f"\nconcurrency: {WRITERS} writers x {SEGMENTS:,} segments = {WRITERS * SEGMENTS:,} "
        f"checked, {commits} commits merged; readers made {[r['passes'] for r in reads]} "
        "passes, all committed states"
    )


def _commit_at_once(
    path: str, barrier: Any, names: list[str], start: int | None, result: str
) -> None:
    w = StoreWriter(path)
    h = np.fromiter((zlib.crc32(s.encode()) for s in names), np.int64, len(names))
    w.write_rows(list(seg_data(h)), names, start_position=start)
    barrier.wait()
    try:
        w.flush()
        out = {"ok": True}
    except (OverlapError, DuplicateSegmentError) as exc:
        out = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        w.abort()
    w.close()
    Path(result).write_text(json.dumps(out))


def _race(tmp_path: Path, jobs: list[tuple[list[str], int | None]]) -> list[dict[str, Any]]:
    path = str(tmp_path / "store")
    StoreWriter(path, dtype="int32", shape=(1000, COLS)).close()
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(len(jobs))
    procs = [
        fork.Process(
            target=_commit_at_once, args=(path, barrier, names, start, str(tmp_path / f"c{j}.json"))
        )
        for j, (names, start) in enumerate(jobs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(jobs)
    return [json.loads((tmp_path / f"c{j}.json").read_text()) for j in range(len(jobs))]


def test_two_commits_at_once_both_succeed(tmp_path: Path) -> None:
    """Disjoint work committed at the same instant: serialised under the lock, merged."""
    a = [f"a{k}" for k in range(300)]
    b = [f"b{k}" for k in range(300)]
    out = _race(tmp_path, [(a, None), (b, 0)])
    assert out == [{"ok": True}, {"ok": True}]
    x = PointerArray(tmp_path / "store")
    assert set(x.indices) == set(a) | set(b)
    check_state_any(str(tmp_path / "store"))
    assert verify_store(tmp_path / "store").ok


def check_state_any(path: str) -> None:
    x = PointerArray(path)
    for name in x.indices:
        assert np.array_equal(x[name], seg_data(zlib.crc32(name.encode()))[0]), name


@pytest.mark.parametrize("clash", ["overlap", "duplicate-name"])
def test_conflicting_commits_one_wins_one_gets_a_clear_error(tmp_path: Path, clash: str) -> None:
    """Two sessions claim the same rows (or the same name) and commit at once: the first
    commit wins; the other gets OverlapError/DuplicateSegmentError naming both segments."""
    if clash == "overlap":
        jobs = [(["left"], 10), (["right"], 11)]  # rows [10, 12) and [11, 13)
        err, pattern = "OverlapError", "overlap"
    else:
        jobs = [(["same"], 10), (["same"], 100)]
        err, pattern = "DuplicateSegmentError", "used twice"
    out = _race(tmp_path, jobs)
    winners = [o for o in out if o["ok"]]
    losers = [o for o in out if not o["ok"]]
    assert len(winners) == 1 and len(losers) == 1, out
    assert losers[0]["error"] == err and pattern in losers[0]["message"]
    x = PointerArray(tmp_path / "store")
    assert len(x.indices) == 1
    report = verify_store(tmp_path / "store")
    assert report.ok, str(report)
    if clash == "duplicate-name":  # disjoint rows: the winner's data is intact
        check_state_any(str(tmp_path / "store"))


# ------------------------------------------------------------ sessions, threads, other programs

CHILD_PROGRAM = """
import sys
import numpy as np
from bigarray import PointerArrayWriter

w = PointerArrayWriter(sys.argv[1], dtype="int16", remove_exist=sys.argv[2] == "1")
print(repr(w.writer))
for i in range(100):
    w.write({f"child{i}": np.full(3, i, np.int16)})
w.close()
"""


@pytest.mark.parametrize("remove_exist", [False, True])
def test_a_program_started_later_owns_its_own_writer(tmp_path: Path, remove_exist: bool) -> None:
    """A parent opens and closes a writer; a child program (it inherits the environment)
    opens its own writer on the same store: it is its own owner and its writes commit."""
    import subprocess
    import sys

    from bigarray import PointerArrayWriter

    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int16") as w:
        w.write({"parent": np.arange(2, dtype=np.int16)})
    script = tmp_path / "child.py"
    script.write_text(CHILD_PROGRAM)
    proc = subprocess.run(
        [sys.executable, str(script), str(path), "1" if remove_exist else "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "owner" in proc.stdout and "worker" not in proc.stdout
    x = PointerArray(path)
    assert len(x.indices) == (100 if remove_exist else 101)
    np.testing.assert_array_equal(x["child42"], [42, 42, 42])


def test_threads_writing_while_another_flushes_lose_nothing(tmp_path: Path) -> None:
    """4 threads write 500 segments each into one writer while a fifth flushes in a
    loop: every segment is committed with its bytes."""
    import threading

    w = StoreWriter(str(tmp_path / "s"), dtype="int32", shape=(0, 3), fsync=False)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(500):
                w.write_rows([np.full((1 + i % 3, 3), t * 10_000 + i, np.int32)], [f"t{t}-{i}"])
        except BaseException as exc:
            errors.append(exc)

    def flusher() -> None:
        while not done.is_set():
            w.flush()

    f = threading.Thread(target=flusher)
    f.start()
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    f.join()
    w.close()
    assert errors == []
    x = PointerArray(tmp_path / "s")
    assert len(x.indices) == 2000
    for t in range(4):
        for i in (0, 1, 250, 499):
            np.testing.assert_array_equal(x[f"t{t}-{i}"], np.full((1 + i % 3, 3), t * 10_000 + i))
    assert verify_store(str(tmp_path / "s")).ok


def test_threads_racing_on_the_first_write_of_a_new_store(tmp_path: Path) -> None:
    """The first write creates the variable: threads racing on it all succeed."""
    import threading

    for rep in range(10):
        w = StoreWriter(str(tmp_path / f"s{rep}"))
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def job(
            t: int,
            w: StoreWriter = w,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                w.write_rows([np.full((2, 4), t, np.float32)], [f"t{t}"])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=job, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        w.close()
        assert errors == []
        x = PointerArray(tmp_path / f"s{rep}")
        assert len(x.indices) == 6 and x.shape == (12, 4)


REMOVER = """
import sys
import numpy as np
from bigarray import PointerArrayWriter
from bigarray.errors import StoreExistsError

try:
    w = PointerArrayWriter(sys.argv[1], dtype="int8", remove_exist=True)
except StoreExistsError as exc:
    print("refused:", exc)
else:
    w.write({"intruder": np.ones(2, np.int8)})
    w.close()
    print("replaced")
"""


def test_remove_exist_refuses_a_store_another_program_is_writing(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "s"
    w = StoreWriter(str(path), dtype="int8")
    w.write_rows([np.ones(4, np.int8)], ["before"])
    w.flush()
    w.write_rows([np.full(4, 2, np.int8)], ["after"])
    script = tmp_path / "remover.py"
    script.write_text(REMOVER)
    proc = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:") and "live writer session" in proc.stdout
    w.close()
    x = PointerArray(path)
    assert sorted(x.indices) == ["after", "before"]
    assert verify_store(str(path)).ok
    # once nobody writes it, remove_exist replaces it
    proc = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith("replaced"), proc.stdout + proc.stderr
    assert list(PointerArray(path).indices) == ["intruder"]


def test_a_store_replaced_under_a_writer_fails_its_commit_cleanly(tmp_path: Path) -> None:
    import shutil

    from bigarray.errors import CommitConflictError

    path = tmp_path / "s"
    w = StoreWriter(str(path), dtype="int8")
    w.write_rows([np.ones(4, np.int8)], ["old"])
    shutil.rmtree(path)  # by hand: no writer could have refused it
    with StoreWriter(str(path), dtype="int8") as other:
        other.write_rows([np.full(2, 5, np.int8)], ["new"])
    with pytest.raises(CommitConflictError, match="deleted or replaced"):
        w.flush()
    w.discard()
    assert list(PointerArray(path).indices) == ["new"]
    assert verify_store(str(path)).ok


def _own_writer(args: tuple[str, int]) -> None:
    from bigarray import MmapArrayWriter

    path, k = args
    with MmapArrayWriter(path=path, shape=(300, 25, 8), dtype="float64") as w:
        w.write(np.full((100, 25, 8), k, np.float64), start_position=100 * k)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_each_with_their_own_writer_on_a_new_path(tmp_path: Path, method: str) -> None:
    """The 2020 library's pattern: every pool worker opens its own MmapArrayWriter on the
    same new path and writes its own rows; every close() commits, nothing is lost."""
    from bigarray import MmapArray

    for rep in range(3):
        path = str(tmp_path / f"m{rep}")
        with multiprocessing.get_context(method).Pool(3) as pool:
            pool.map(_own_writer, [(path, k) for k in (2, 0, 1)])
        x = np.asarray(MmapArray(path))
        assert x.shape == (300, 25, 8)
        np.testing.assert_array_equal(x[:, 0, 0], np.repeat([0.0, 1.0, 2.0], 100))
        assert verify_store(path).ok


def test_a_child_forked_while_the_store_lock_is_held_does_not_keep_it(tmp_path: Path) -> None:
    """A Pool started while another thread holds the store lock (mid-commit) must not hold
    that lock for the child's whole life: every later writer would wait forever."""
    import fcntl

    from bigarray.core.fileutil import locked

    lock = str(tmp_path / ".lock")
    with locked(lock):
        pid = os.fork()
        if pid == 0:  # the child lives on after the parent released the lock
            time.sleep(20)
            os._exit(0)
    try:
        fd = os.open(lock, os.O_RDWR)
        try:
            # the child drops its copy as soon as it runs (a loaded machine may take a moment)
            deadline = time.monotonic() + 8
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # the child still holds it
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            os.close(fd)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def _member_writes(w: StoreWriter) -> None:
    w.write_rows([np.ones(4, np.int8)], ["from-member"])


def test_a_store_replaced_under_a_session_whose_owner_never_wrote(tmp_path: Path) -> None:
    """Only a member process wrote; the store is deleted and re-created by hand before the
    owner commits: the commit fails cleanly, the new store is untouched."""
    import shutil

    from bigarray.errors import CommitConflictError

    path = tmp_path / "s"
    w = StoreWriter(str(path), dtype="int8")
    p = multiprocessing.get_context("fork").Process(target=_member_writes, args=(w,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    shutil.rmtree(path)
    with StoreWriter(str(path), dtype="int8") as other:
        other.write_rows([np.full(2, 5, np.int8)], ["new"])
    with pytest.raises(CommitConflictError, match="deleted or replaced"):
        w.close()
    w.discard()
    assert list(PointerArray(path).indices) == ["new"]


FIRST_WRITE_WHILE_FLUSHING = """
import sys
import threading
import numpy as np
from bigarray import PointerArrayWriter

for rep in range(20):
    w = PointerArrayWriter(f"{sys.argv[1]}/s{rep}", dtype="int32")
    stop = threading.Event()

    def flusher(w=w, stop=stop):
        while not stop.is_set():
            w.flush()

    t = threading.Thread(target=flusher)
    t.start()
    w.write({"a": np.arange(3)})
    stop.set()
    t.join()
    w.close()
print("ok")
"""


def test_the_first_write_while_another_thread_flushes_does_not_deadlock(tmp_path: Path) -> None:
    """The first write of a writer without a shape creates the variable (store lock) while
    a flush holds the store lock: both take the locks in one order, so neither waits forever."""
    import subprocess
    import sys

    script = tmp_path / "first.py"
    script.write_text(FIRST_WRITE_WHILE_FLUSHING)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a first write racing a flush deadlocked")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    for rep in (0, 19):
        np.testing.assert_array_equal(PointerArray(tmp_path / f"s{rep}")["a"], [0, 1, 2])


RACER = """
import sys
import time
import numpy as np
from bigarray import PointerArrayWriter
from bigarray.errors import StoreExistsError

path, rm, secs = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
end = time.monotonic() + secs
n = 0
while time.monotonic() < end:
    try:
        with PointerArrayWriter(path, dtype="int32", remove_exist=rm, fsync=False) as w:
            w.write({f"{int(rm)}-{n}": np.arange(3, dtype="int32")})
        n += 1
    except StoreExistsError as exc:
        if "live writer session" not in str(exc):  # the one expected refusal
            raise
print(n)
"""


def test_remove_exist_racing_a_plain_writer_never_leaves_an_unusable_location(
    tmp_path: Path,
) -> None:
    """A remove_exist writer and a plain writer loop on one path: the remover renames the
    directory away while the other waits for its lock. Neither ever finds the location
    unusable ("not a bigarray store"), and the store left opens and verifies."""
    import subprocess
    import sys

    script = tmp_path / "racer.py"
    script.write_text(RACER)
    path = str(tmp_path / "s")
    for _rep in range(2):
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), path, rm, "4"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rm in ("1", "0")
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        x = PointerArray(path)
        assert len(x.indices) >= 1 and x.dtype == np.int32
        assert verify_store(path).ok


def test_a_positioned_write_refuses_rows_another_open_writer_appended(tmp_path: Path) -> None:
    """Writer A appended rows and has not committed; writer B (another session) writes at a
    position inside them: B's write raises before any byte is written, and A's commit
    keeps A's bytes. Rows past A's are still free for B."""
    from bigarray import MmapArrayWriter, PointerArrayWriter

    path = tmp_path / "s"
    with PointerArrayWriter(path, dtype="int32") as w:
        w.write({"a": np.full(3, 1, np.int32)})
    a = PointerArrayWriter(path)
    assert a.write({"x": np.full(4, 2, np.int32)}) == (3, 7)
    b = PointerArrayWriter(path)
    with pytest.raises(OverlapError, match="another open writer"):
        b.write({"y": np.full(2, 9, np.int32)}, start_position=4)
    with MmapArrayWriter(path) as m, pytest.raises(OverlapError, match="another open writer"):
        m.write(np.full(2, 9, np.int32), start_position=6)
    b.write({"z": np.full(2, 8, np.int32)}, start_position=7)
    a.close()
    b.close()
    x = PointerArray(path)
    assert x[:].tolist() == [1, 1, 1, 2, 2, 2, 2, 8, 8]
    assert dict(x.indices.items()) == {"a": (0, 3), "x": (3, 7), "z": (7, 9)}
    assert verify_store(str(path)).ok


def test_a_write_checks_names_against_a_commit_that_races_its_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write reads the committed index to check its names. Another session committing
    between that read of the manifest and the mapping of its index files can delete those
    files (the soak saw it: a pool worker's write failed with 'the store was damaged'); the
    write opens the newer commit instead and goes on."""
    from bigarray.core.store import Store

    p = tmp_path / "s"
    w = StoreWriter(p, shape=(0, 2), dtype="i4")
    w.write_rows([np.ones((1, 2), "i4")], ["a"])
    w.flush()
    other = StoreWriter(p, shape=(0, 2), dtype="i4")
    real_init = Store.__init__
    raced: list[Path] = []

    def init_then_commit_elsewhere(self: Store, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        if raced or self.manifest.segments is None:
            return
        named = p / self.manifest.segments.all_runs[0].files["names"]
        raced.append(named)
        for i in range(200):  # until the commits since delete the index files just named
            other.write_rows([np.ones((1, 2), "i4")], [f"o{i}"])
            other.flush()
            if not named.exists():
                return

    monkeypatch.setattr(Store, "__init__", init_then_commit_elsewhere)
    w.write_rows([np.ones((1, 2), "i4")], ["b"])
    monkeypatch.undo()
    assert raced and not raced[0].exists()  # the race happened
    w.close()
    other.close()
    x = PointerArray(p)
    assert {"a", "b", "o0"} <= set(x.indices)
    assert verify_store(str(p)).ok


def test_verify_of_a_store_being_committed_to_checks_the_newest_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bigarray verify`` on a live store: commits landing while it runs may delete the
    index files of the commit it read. That is no damage: it verifies the newer commit."""
    from bigarray.core import verify

    p = tmp_path / "s"
    w = StoreWriter(p, shape=(0, 2), dtype="i4")
    w.write_rows([np.ones((1, 2), "i4")], ["a"])
    w.flush()
    real = verify._verify_index
    raced: list[Path] = []

    def commit_then_verify_index(report: Any, path: str, manifest: Any, store: Any) -> Any:
        if not raced:
            named = p / manifest.segments.all_runs[0].files["names"]
            raced.append(named)
            for i in range(200):
                w.write_rows([np.ones((1, 2), "i4")], [f"n{i}"])
                w.flush()
                if not named.exists():
                    break
        return real(report, path, manifest, store)

    monkeypatch.setattr(verify, "_verify_index", commit_then_verify_index)
    report = verify.verify_store(p)
    assert raced and not raced[0].exists()  # the race happened
    assert report.ok, str(report)
    w.close()


def test_verify_while_another_writers_appends_are_in_flight_reports_no_damage(
    tmp_path: Path,
) -> None:
    """A commit sums the blocks of its rows, which may share a block with rows another open
    writer appended and is still writing (rows no commit has written: the manifest records
    them). Those bytes change after the commit: verify says so in a note, not as damage;
    once that writer commits, its blocks are summed again and verify is clean."""
    from bigarray.core.store import Store

    p = tmp_path / "s"
    with StoreWriter(p, shape=(0, 2), dtype="i8") as w:
        w.write_rows([np.zeros((5, 2), "i8")], ["seed"])
    b = StoreWriter(p, shape=(0, 2), dtype="i8")
    a = StoreWriter(p, shape=(0, 2), dtype="i8")
    b.write_rows([np.full((5, 2), 9, "i8")], ["b"])  # rows [5, 10), not committed
    a.write_rows([np.full((5, 2), 3, "i8")], ["a"])  # rows [10, 15)
    a.close()  # sums block 0, holding b's rows as they are now
    shard = Store(p).manifest.variables["data"].shards[0]
    # b's last bytes land after a's commit (as a pwrite still running would)
    fd = os.open(p / shard.path, os.O_RDWR)
    try:
        os.pwrite(fd, np.full((5, 2), 8, "i8").tobytes(), shard.offset + 5 * 16)
    finally:
        os.close(fd)
    report = verify_store(str(p))
    assert report.ok, str(report)
    assert any("no commit has written yet" in n for n in report.notes), report.notes
    b.close()  # b's commit sums its blocks again
    report = verify_store(str(p))
    assert report.ok and not report.notes, str(report)
