"""Disjoint writes into one store from several processes (case ``write-2proc``).

Each child process is spawned once per system, regenerates only its own rows (untimed), and then
waits. For every timed repetition the parent prepares a fresh target (a pre-sized ``.npy``, or a
bigarray writer created in the parent as the seed example does), sends it to every child, and
times from "go" until every child has written its region and the parent has committed
(``writer.close()`` for bigarray; nothing for the raw peers).

Children are spawned (not forked): the parent may already run threads (a dask cluster), and
forking a threaded process is the very deadlock the 2020 library suffered from.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import cases_bigarray as ba
from benchmarks.harness import Context, Measurement, remove_path, settle_page_cache
from benchmarks.peers import npy_reader, offsets_dict, presize_npy, pwrite_all
from benchmarks.workloads import Workload

METHODS = ("memmap", "pwrite", "bigarray")


def _child(
    method: str,
    workload: Workload,
    seg_lo: int,
    seg_hi: int,
    inbox: Any,
    outbox: Any,
) -> None:
    """Child body: build my rows, report ready, then write them into each target I am sent."""
    try:
        r0, r1 = int(workload.offsets[seg_lo]), int(workload.offsets[seg_hi])
        data = workload.rows(r0, r1)
        # Segment views relative to my block, built once: the dict is the writer's input, not work.
        segments = {
            workload.names[i]: data[
                int(workload.offsets[i]) - r0 : int(workload.offsets[i + 1]) - r0
            ]
            for i in range(seg_lo, seg_hi)
        }
        outbox.put(("ready", seg_lo, ""))
    except BaseException:
        outbox.put(("error", seg_lo, traceback.format_exc()))
        return
    while True:
        target = inbox.get()
        if target is None:
            return
        try:
            if method == "memmap":
                mm = np.load(target, mmap_mode="r+")
                mm[r0:r1] = data
                del mm
            elif method == "pwrite":
                path, header, row_bytes = target
                pwrite_all(path, data, header + r0 * row_bytes)
            else:
                ba.write_part(target, segments, r0)
            outbox.put(("done", seg_lo, ""))
        except BaseException:
            outbox.put(("error", seg_lo, traceback.format_exc()))


def _prepare(method: str, path: Path, workload: Workload) -> tuple[Any, Any]:
    """Untimed: create the target of one repetition; return (what children get, what to close)."""
    if method == "bigarray":
        writer = ba.create_writer(path, workload)
        return writer, writer
    presize_npy(path, workload.shape, workload.dtype)
    if method == "memmap":
        return str(path), None
    header = int(np.load(str(path), mmap_mode="r").offset)
    return (str(path), header, workload.row_nbytes), None


def _wait(outbox: Any, kind: str, n: int, procs: list[Any], timeout: float) -> None:
    """Collect ``n`` messages of ``kind`` from the children, failing fast on errors or deaths."""
    deadline = time.monotonic() + timeout
    got = 0
    while got < n:
        try:
            status, _, detail = outbox.get(timeout=0.5)
        except queue.Empty:
            if any(p.exitcode is not None for p in procs):
                raise RuntimeError("a writer process died") from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"writer processes did not report {kind!r} in {timeout:g} s"
                ) from None
            continue
        if status == "error":
            if "NotImplementedError" in detail.strip().splitlines()[-1]:
                raise NotImplementedError(detail.strip().splitlines()[-1])
            raise RuntimeError(f"writer process failed:\n{detail}")
        got += 1


def _verify(method: str, path: Path, workload: Workload) -> None:
    """Read a few segments back: a fast writer that loses segments must not score."""
    if method == "bigarray":
        reader = ba.open_reader(path)
    else:
        reader = npy_reader(path, offsets_dict(workload))
    try:
        workload.verify(reader)
    finally:
        reader.close()


def parallel_write(ctx: Context, method: str, n_procs: int) -> Measurement:
    """Time disjoint writes of the ``ragged`` workload from ``n_procs`` spawned processes."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    wl = ctx.workload("ragged")
    path = ctx.path(f"par-{method}-{n_procs}")
    # Prepare the first target before spawning anything: an unimplemented bigarray fails here, cheaply.
    target, closer = _prepare(method, path, wl)

    mp = multiprocessing.get_context("spawn")
    outbox = mp.Queue()
    inboxes = [mp.Queue() for _ in range(n_procs)]
    procs = [
        mp.Process(target=_child, args=(method, wl, lo, hi, inbox, outbox), daemon=True)
        for (lo, hi), inbox in zip(wl.split(n_procs), inboxes, strict=True)
    ]
    for p in procs:
        p.start()
    times: list[float] = []
    try:
        _wait(outbox, "ready", n_procs, procs, timeout=max(120.0, ctx.timeout))
        # Repetition 0 is an untimed warm-up (fresh memory is slow to fault in on a VM).
        for rep in range(ctx.repeat + 1):
            if rep:
                remove_path(path)
                target, closer = _prepare(method, path, wl)
            settle_page_cache()
            t0 = time.perf_counter()
            for inbox in inboxes:
                inbox.put(target)
            _wait(outbox, "done", n_procs, procs, timeout=max(120.0, ctx.timeout))
            if closer is not None:
                ba.close_writer(closer)
            if rep:
                times.append(time.perf_counter() - t0)
        _verify(method, path, wl)
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()  # our own child, by its handle
                p.join(5)
        remove_path(path)
    return Measurement(times=times, work=float(wl.nbytes), info={"processes": n_procs})
