"""Resource faults: a full disk, a read-only store, many open stores.

- Disk full is simulated with ``RLIMIT_FSIZE`` in a child process (``SIGXFSZ`` ignored, so
  the write returns ``EFBIG``): the writer raises a clear ``WriteFailedError``, the previous
  commit stays intact, and the same commit succeeds once space is back.
- A read-only store: the tests run as root, for whom ``chmod`` stops nothing, so the child
  drops to ``nobody`` (``setuid``) first; as another user ``chmod`` is enough.
- File descriptors: each open array holds at most one descriptor per mapped file (the data,
  and index files over 1 MiB); closing them gives every descriptor back; writers leak none.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import PointerArray, StoreWriter
from bigarray.core.verify import verify_store
from bigarray.errors import ReadOnlyError, WriteFailedError


def in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a forked child; return its result dict (or its traceback)."""
    ctx = multiprocessing.get_context("fork")
    r, w = ctx.Pipe(duplex=False)

    def main() -> None:
        try:
            out = fn(*args)
        except BaseException:  # report anything, the parent asserts
            out = {"traceback": traceback.format_exc()}
        w.send(out)

    p = ctx.Process(target=main)
    p.start()
    out = r.recv() if r.poll(120) else {"traceback": "child sent nothing"}
    p.join(30)
    assert p.exitcode == 0, out
    assert "traceback" not in out, out["traceback"]
    return out


def check_intact(path: Path, segs: dict[str, np.ndarray]) -> None:
    x = PointerArray(path)
    assert set(x.indices) == set(segs)
    for n, a in segs.items():
        assert np.array_equal(x[n], a)
    report = verify_store(path)
    assert report.ok, str(report)


# --------------------------------------------------------------------------- disk full


def _limit_fsize(nbytes: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))


def _lift_fsize() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def _data_write_fails(path: str) -> dict[str, Any]:
    w = StoreWriter(path)
    _limit_fsize(os.path.getsize(os.path.join(path, "data.npy")) + 4096)
    try:
        w.write_rows([np.ones((200_000, 4), "f4")], ["big"])  # 3.2 MB: past the limit
    except WriteFailedError as exc:
        err = (type(exc).__name__, str(exc))
    else:
        return {"traceback": "no error"}
    w.abort()
    w.close()
    _lift_fsize()
    return {"error": err}


def _commit_fails_then_retries(path: str, names: list[str]) -> dict[str, Any]:
    w = StoreWriter(path)
    rows = [np.full((1, 4), i, "f4") for i in range(len(names))]
    w.write_rows(rows, names)  # the data fits ...
    size = os.path.getsize(os.path.join(path, "data.npy"))
    _limit_fsize(size + 1024)  # ... but the new index generation does not
    try:
        w.flush()
    except WriteFailedError as exc:
        err = (type(exc).__name__, str(exc))
    else:
        return {"traceback": "commit did not fail"}
    before_retry = sorted(PointerArray(path).indices)
    _lift_fsize()
    w.flush()  # space is back: the same commit goes through
    w.close()
    return {"error": err, "before_retry": before_retry}


def test_disk_full_during_data_write(tmp_path: Path, make_store: Any) -> None:
    _, segs = make_store(tmp_path / "s")
    out = in_child(_data_write_fails, str(tmp_path / "s"))
    name, msg = out["error"]
    assert name == "WriteFailedError"
    assert "file size limit" in msg and "the last commit is intact" in msg
    check_intact(tmp_path / "s", segs)
    # and a later writer appends normally
    w = StoreWriter(tmp_path / "s")
    w.write_rows([np.zeros((2, 4), "f4")], ["after"])
    w.close()
    check_intact(tmp_path / "s", {**segs, "after": np.zeros((2, 4), "f4")})


def test_disk_full_during_commit_keeps_the_previous_commit(tmp_path: Path, make_store: Any) -> None:
    _, segs = make_store(tmp_path / "s")
    names = [f"n{i}" for i in range(30_000)]  # an index of ~1.3 MB
    out = in_child(_commit_fails_then_retries, str(tmp_path / "s"), names)
    assert out["error"][0] == "WriteFailedError"
    assert "file size limit" in out["error"][1]
    assert out["before_retry"] == sorted(segs)  # the failed commit changed nothing visible
    new = {n: np.full((1, 4), i, "f4") for i, n in enumerate(names)}
    x = PointerArray(tmp_path / "s")
    assert len(x.indices) == len(segs) + len(names)
    assert np.array_equal(x["n29999"], new["n29999"])
    assert verify_store(tmp_path / "s").ok


# --------------------------------------------------------------------------- read-only


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A directory that user ``nobody`` can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="bigarray-ro-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in d.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(d, ignore_errors=True)


def _as_reader_only(path: str, expected: dict[str, list[Any]]) -> dict[str, Any]:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)  # nobody: the permission bits now apply
    x = PointerArray(path)
    ok = all(np.array_equal(x[n], np.array(a, "f4")) for n, a in expected.items())
    report_ok = verify_store(path).ok
    try:
        w = StoreWriter(path)
        w.write_rows([np.zeros((1, 4), "f4")], ["nope"])
        w.close()
    except ReadOnlyError as exc:
        return {"read": ok, "verify": report_ok, "error": str(exc)}
    return {"traceback": "writing to a read-only store did not fail"}


def test_read_only_store_reads_and_refuses_writes(shared_dir: Path, make_store: Any) -> None:
    path, segs = make_store(shared_dir / "s")
    before = {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    for p in [path, *path.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    out = in_child(_as_reader_only, str(path), {n: a.tolist() for n, a in segs.items()})
    assert out["read"] and out["verify"]
    assert "not writable" in out["error"] or "read-only" in out["error"]
    after = {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before


# --------------------------------------------------------------------------- descriptors


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_many_open_stores_hold_a_bounded_number_of_descriptors(
    tmp_path: Path, make_store: Any
) -> None:
    n = 150
    stores = [make_store(tmp_path / f"s{i}", 3, seed=i) for i in range(n)]
    gc.collect()
    base = _fds()
    arrays = [PointerArray(path) for path, _ in stores]
    assert all(
        np.array_equal(x["seg00002"], segs["seg00002"]) for x, (_, segs) in zip(arrays, stores)
    )
    held = _fds() - base
    # (+5: in the full suite, other threads of this process, a dask cluster's sockets,
    # may open a few descriptors meanwhile; a leak per store would show as 2n, or n)
    slack = 5
    assert held <= n + slack, f"{held} descriptors for {n} open stores (one data map each)"
    del arrays
    gc.collect()
    assert _fds() <= base + slack, "descriptors leaked after closing the arrays"


def _open_many_under_a_low_limit(root: str, n: int) -> dict[str, Any]:
    # A budget of 48 descriptors above what this forked child inherited (the full suite's
    # process holds cluster sockets and more): far fewer than the 400 stores opened below.
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (used + 48, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )
    total = 0.0
    for _ in range(4):
        for i in range(n):  # open, read, drop: far more stores than descriptors
            x = PointerArray(os.path.join(root, f"s{i}"))
            total += float(np.sum(x))
            del x
    w_fds = []
    for _ in range(100):  # writers too give their descriptors back
        w = StoreWriter(os.path.join(root, "s0"))
        w.close()
        w_fds.append(len(os.listdir("/proc/self/fd")))
    return {"total": total, "writer_fds": [min(w_fds), max(w_fds)]}


def test_opening_many_stores_in_turn_never_runs_out_of_descriptors(
    tmp_path: Path, make_store: Any
) -> None:
    n = 100
    total = 0
    for i in range(n):  # integers: the sums are exact
        _, segs = make_store(tmp_path / f"s{i}", 2, dtype="i4", seed=i)
        total += sum(int(a.sum()) for a in segs.values())
    out = in_child(_open_many_under_a_low_limit, str(tmp_path), n)
    assert out["total"] == 4 * total
    lo, hi = out["writer_fds"]
    assert hi - lo <= 1, f"writers leak descriptors: {lo} .. {hi}"
