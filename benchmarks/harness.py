"""Timing, the case registry, and the run of one case.

Vocabulary
----------
- A **case** is one question from ``benchmarks/README.md`` ("read 5,000 random segments by
  name"), run on one workload, with several **systems** (peers, bigarray, references) that each
  answer it on the same data in the same run.
- A system's ``run(ctx)`` returns a :class:`Measurement`: seconds per repetition plus the amount
  of work (bytes or items) so the report can derive GB/s or microseconds per item.
- A :class:`Goal` compares a *subject* system (bigarray, or a bigarray variant) to a *baseline*
  system of the same case, or to an absolute limit. Goals are reported, never enforced: a slow
  result is a finding, not a failure, because these machines are shared and noisy.

Adding a case: see :mod:`benchmarks.cases` (one :func:`register` call).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from benchmarks.memory import proc_field_kib
from benchmarks.workloads import Workload, make_workload

Unit = Literal["GB/s", "us/segment", "ms", "s"]
GoalKind = Literal["faster", "within", "max_seconds", "max_metric"]

STATUS_OK = "ok"
STATUS_NOT_IMPLEMENTED = "not implemented"


# ---------------------------------------------------------------------------- exceptions
class SkipSystem(Exception):
    """Raised by a system that cannot run here (missing optional package, too big); not an error."""


class SystemTimeout(Exception):
    """Raised when a system ran past its time limit (for peers known not to finish).

    ``metrics`` keeps what was measured before the limit (e.g. the pickled graph size).
    """

    def __init__(self, message: str, metrics: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics = dict(metrics or {})


# ---------------------------------------------------------------------------- results
@dataclass
class Measurement:
    """What a system returns for one case.

    Parameters
    ----------
    times
        Seconds of each timed repetition.
    work
        Bytes processed (for ``GB/s`` cases) or items processed (for ``us/segment`` cases) per
        repetition; None where the case unit is plain seconds or milliseconds.
    metrics
        Extra named numbers a goal may check (e.g. ``graph_pickle_bytes``).
    info
        Anything else worth keeping in the JSON (peak memory, notes); not checked.
    value
        Result used to cross-check systems (e.g. the sum), compared by the case's ``check``.
    """

    times: list[float]
    work: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    value: Any = None


@dataclass
class SystemResult:
    """One system's outcome in one case (JSON-able)."""

    system: str
    role: str
    status: str
    times: list[float] = field(default_factory=list)
    median_s: float | None = None
    work: float | None = None
    figure: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def ok(self) -> bool:
        """True when the system produced a number."""
        return self.status == STATUS_OK

    def cost(self) -> float | None:
        """Seconds per unit of work (per byte, per item, or per run); lower is better."""
        if self.median_s is None:
            return None
        return self.median_s / self.work if self.work else self.median_s


@dataclass(frozen=True)
class Goal:
    """A target for a subject system, as in the goal column of BENCHMARKS.md.

    ``kind``:

    - ``"faster"``: ratio = baseline cost / subject cost (a speed-up); met if ratio >= value.
    - ``"within"``: ratio = subject cost / baseline cost (a slowdown); met if ratio <= value.
    - ``"max_seconds"``: the subject's median seconds <= value (no baseline).
    - ``"max_metric"``: the subject's ``metrics[metric]`` <= value (no baseline).

    Cost is seconds per unit of work (see :meth:`SystemResult.cost`), so systems that processed
    different amounts (a slow peer timed on fewer reads) still compare fairly.
    """

    text: str
    subject: str
    kind: GoalKind
    value: float
    baseline: str | None = None
    metric: str | None = None

    def evaluate(self, results: dict[str, SystemResult]) -> GoalResult:
        """Compute the ratio (or value) and whether the goal is met; None where unknown."""
        subj = results.get(self.subject)
        base = results.get(self.baseline) if self.baseline else None
        ratio: float | None = None
        if subj is not None and subj.ok:
            sc = subj.cost()
            if self.kind in ("faster", "within"):
                bc = base.cost() if base is not None and base.ok else None
                if sc and bc:
                    ratio = bc / sc if self.kind == "faster" else sc / bc
            elif self.kind == "max_seconds":
                ratio = subj.median_s
            elif self.kind == "max_metric" and self.metric:
                ratio = subj.metrics.get(self.metric)
        met: bool | None = None
        if ratio is not None:
            met = ratio >= self.value if self.kind == "faster" else ratio <= self.value
        return GoalResult(
            text=self.text,
            subject=self.subject,
            baseline=self.baseline,
            kind=self.kind,
            target=self.value,
            metric=self.metric,
            ratio=ratio,
            met=met,
        )


@dataclass
class GoalResult:
    """A goal's outcome (JSON-able). ``ratio`` is a ratio, or seconds / the metric for absolute goals."""

    text: str
    subject: str
    baseline: str | None
    kind: str
    target: float
    metric: str | None
    ratio: float | None
    met: bool | None


@dataclass
class CaseResult:
    """One case's outcome (JSON-able)."""

    name: str
    title: str
    workload: dict[str, Any]
    unit: str
    anchor: str
    systems: list[SystemResult]
    goals: list[GoalResult]
    seconds: float

    def by_system(self) -> dict[str, SystemResult]:
        """Results keyed by system name."""
        return {r.system: r for r in self.systems}

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``json.dump``."""
        return asdict(self)


# ---------------------------------------------------------------------------- registry
@dataclass
class System:
    """A contender in a case: ``run(ctx)`` performs and times the work.

    ``role`` is ``"bigarray"`` (the library under test), ``"peer"`` (a competitor named in
    BENCHMARKS.md) or ``"reference"`` (a physical bound such as a raw ``write()``).
    """

    name: str
    run: Callable[[Context], Measurement]
    role: Literal["bigarray", "peer", "reference"] = "peer"


@dataclass
class Case:
    """A benchmark question; register it with :func:`register`.

    Parameters
    ----------
    name
        Short id used on the command line (``--cases write,random-reads``).
    title
        One line for the table header.
    workload
        ``"ragged"`` (W1) or ``"tiny"`` (W1-1M).
    unit
        How the report shows each system: ``"GB/s"`` (work = bytes), ``"us/segment"``
        (work = items), ``"ms"`` or ``"s"`` (work ignored).
    systems
        Factory returning the systems, called when the case runs (so a case may depend on the
        machine, e.g. its core count).
    goals
        Targets from the goal column.
    anchor
        The anchor figures from BENCHMARKS.md, printed for orientation.
    check
        ``check(reference_value, value) -> bool`` cross-checking the systems' results; the first
        system that returned a value is the reference.
    default
        Whether the case runs when ``--cases`` is not given.
    """

    name: str
    title: str
    workload: Literal["ragged", "tiny"]
    unit: Unit
    systems: Callable[[Context], list[System]]
    goals: list[Goal] = field(default_factory=list)
    anchor: str = ""
    check: Callable[[Any, Any], bool] | None = None
    default: bool = True


CASES: dict[str, Case] = {}


def register(case: Case) -> Case:
    """Add ``case`` to the registry (names are unique)."""
    if case.name in CASES:
        raise ValueError(f"benchmark case {case.name!r} is registered twice")
    CASES[case.name] = case
    return case


# ---------------------------------------------------------------------------- context
class Context:
    """Per-run state shared by the cases: workloads, their data, stores built once, clusters.

    Parameters
    ----------
    size
        Size flag (``smoke``, ``W1``, ``large``).
    repeat
        Timed repetitions per system; the median is reported.
    workdir
        Scratch directory for stores; removed by :meth:`close` when we created it.
    timeout
        Seconds after which a system run in a child process is stopped (peers known to hang).
    """

    def __init__(
        self,
        size: str,
        repeat: int = 5,
        workdir: str | Path | None = None,
        timeout: float = 120.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.size = size
        self.repeat = max(1, int(repeat))
        self.timeout = timeout
        self._own_workdir = workdir is None
        self.workdir = Path(
            tempfile.mkdtemp(prefix="bigarray-bench-") if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._workloads: dict[str, Workload] = {}
        self._memo: dict[tuple[str, str], Any] = {}
        self._stores: dict[tuple[str, str], Path] = {}
        self._clusters: dict[int, Any] = {}
        self._counter = 0

    # workloads and their in-RAM data -------------------------------------------------
    def workload(self, kind: str) -> Workload:
        """The workload ``kind`` at this run's size (built once)."""
        if kind not in self._workloads:
            self._workloads[kind] = make_workload(kind, self.size)
        return self._workloads[kind]

    def memo(self, what: str, kind: str, factory: Callable[[], Any]) -> Any:
        """``factory()`` computed once per run for (``what``, workload ``kind``)."""
        key = (what, kind)
        if key not in self._memo:
            self._memo[key] = factory()
        return self._memo[key]

    def data(self, kind: str) -> np.ndarray:
        """The concatenated source array of workload ``kind`` in RAM (built once, untimed)."""

        def build() -> np.ndarray:
            wl = self.workload(kind)
            self.log(
                f"  generating {wl.label}: {wl.n_segments:,} segments, {wl.nbytes / 1e9:.2f} GB"
            )
            return wl.materialize()

        return self.memo("data", kind, build)

    def segments(self, kind: str) -> dict[str, np.ndarray]:
        """``{name: view}`` over :meth:`data`, the input of dict-taking writers (built once)."""
        return self.memo(
            "segments", kind, lambda: self.workload(kind).segment_dict(self.data(kind))
        )

    def release(self, keep: str | None = None) -> None:
        """Drop cached data of workloads other than ``keep`` (bounded memory at --size large)."""
        for key in list(self._memo):
            if key[1] != keep:
                del self._memo[key]
        gc.collect()

    # scratch paths and stores built once --------------------------------------------
    def path(self, stem: str) -> Path:
        """A fresh path under the work directory (nothing is created)."""
        self._counter += 1
        return self.workdir / f"{self._counter:04d}-{stem}"

    def store(self, key: str, kind: str, build: Callable[[Path], Any]) -> Path:
        """Path of store ``key`` for workload ``kind``, built by ``build(path)`` on first use.

        The write case registers what it wrote through :meth:`adopt_store`, so read cases reuse
        it instead of writing the data again.
        """
        if (key, kind) not in self._stores:
            path = self.path(f"{key}-{kind}")
            self.log(f"  building store {key} for {kind}")
            build(path)
            self._stores[(key, kind)] = path
        return self._stores[(key, kind)]

    def adopt_store(self, key: str, kind: str, path: Path) -> None:
        """Remember ``path`` as store ``key`` for ``kind`` (replacing and deleting an older one)."""
        old = self._stores.get((key, kind))
        if old is not None and old != path:
            remove_path(old)
        self._stores[(key, kind)] = path

    def has_store(self, key: str, kind: str) -> bool:
        """Whether store ``key`` for ``kind`` exists already."""
        return (key, kind) in self._stores

    # dask.distributed clusters ----------------------------------------------------------
    def client(self, n_workers: int) -> Any:
        """A ``distributed.Client`` on a LocalCluster of ``n_workers`` processes, 1 thread each.

        Clusters are kept for the whole run (start-up is seconds, and not what we measure).
        """
        if n_workers not in self._clusters:
            from distributed import Client, LocalCluster

            self.log(f"  starting LocalCluster: {n_workers} worker processes x 1 thread")
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                # Workers must not spill or pause on our 1 GB arrays, and their memory limit
                # would only add noise to timings: the client watches peak RSS instead.
                memory_limit=0,
                silence_logs=40,
            )
            self._clusters[n_workers] = Client(cluster)
        return self._clusters[n_workers]

    def close(self) -> None:
        """Close clusters and remove the work directory if this context created it."""
        if self._clusters:
            import logging

            # Shutting a LocalCluster down logs a page of INFO lines; they are not results.
            for name in (
                "distributed",
                "distributed.scheduler",
                "distributed.nanny",
                "distributed.core",
            ):
                logging.getLogger(name).setLevel(logging.ERROR)
        for client in self._clusters.values():
            cluster = client.cluster
            with contextlib.suppress(Exception):
                client.close()
            with contextlib.suppress(Exception):
                cluster.close()
        self._clusters.clear()
        self._memo.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def remove_path(path: str | Path) -> None:
    """Remove a file or a directory tree if it exists."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


# ---------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, result). ``perf_counter`` is monotonic and fine-grained."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def repeat_timed(
    fn: Callable[[], Any],
    repeat: int,
    setup: Callable[[], Any] | None = None,
    warmup: bool = True,
) -> tuple[list[float], Any]:
    """Time ``fn`` ``repeat`` times; return (seconds per run, last result).

    ``setup`` runs untimed before every run (e.g. delete the previous output). With ``warmup``,
    one untimed run first warms the page cache and any lazy imports, as BENCHMARKS.md asks
    ("the page cache is warm unless a case says otherwise").
    """
    if warmup:
        if setup is not None:
            setup()
        fn()
    times: list[float] = []
    out: Any = None
    for _ in range(repeat):
        if setup is not None:
            setup()
        # A collection in the middle of a run would be charged to whoever triggered it.
        gc.collect()
        gc.disable()
        try:
            dt, out = timed(fn)
        finally:
            gc.enable()
        times.append(dt)
    return times, out


def settle_page_cache() -> None:
    """Write back dirty pages left by earlier writes (untimed, before a timed write).

    Without it, a write is throttled by the kernel for the gigabyte an *earlier* system left
    dirty (its first repetition ran 3-10x slower in our runs), so the order of systems would
    decide the result. Every timed write then starts from the same clean page cache.
    """
    dirty = proc_field_kib("Dirty", "/proc/meminfo")
    # os.sync() flushes the whole machine; skip it when little is dirty (smoke runs, and tests
    # running beside us would otherwise pay for our flushes and we for theirs).
    if hasattr(os, "sync") and (dirty is None or dirty > SETTLE_DIRTY_KIB):
        os.sync()


#: Dirty page-cache size (KiB) above which :func:`settle_page_cache` flushes.
SETTLE_DIRTY_KIB = 128 * 1024


def warm_file(path: str | Path) -> None:
    """Read every file under ``path`` once so that later reads hit the page cache."""
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    buf = bytearray(16 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


# ---------------------------------------------------------------------------- child runs
def _child_entry(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Body of a child run: own process group (so the parent can stop it and its pool), run, reply."""
    os.setpgrp()
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # report everything, the parent decides
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_in_child(fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
    """Run ``fn(*args)`` in a fresh spawned process; stop it after ``timeout`` seconds.

    For peers that BENCHMARKS.md reports as not finishing (``da.from_array`` on a memmap with the
    processes scheduler): the child starts its own process group, so on timeout we kill exactly
    that group (the child and the pool it started), nothing else.

    Raises
    ------
    SystemTimeout
        When the child did not answer in time.
    NotImplementedError
        Re-raised when the child raised it (a bigarray hook not written yet).
    RuntimeError
        When the child raised anything else.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_entry, args=(child, fn, args), daemon=False)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise SystemTimeout(f"did not finish in {timeout:g} s")
        status, payload = parent.recv()
    except EOFError:
        status, payload = "error", f"child exited with code {proc.exitcode}"
    finally:
        if proc.pid is not None and (proc.is_alive() or proc.exitcode is None):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.join(10)
        parent.close()
    if status == "error":
        if str(payload).startswith("NotImplementedError"):
            raise NotImplementedError(str(payload).splitlines()[0])
        raise RuntimeError(f"child process failed: {payload}")
    return payload


# ---------------------------------------------------------------------------- running a case
def _figure(unit: str, median: float, work: float | None) -> float:
    """Turn a median time into the figure shown for ``unit``."""
    if unit == "GB/s":
        return (work or 0.0) / median / 1e9 if median > 0 else float("inf")
    if unit == "us/segment":
        return median / (work or 1.0) * 1e6
    if unit == "ms":
        return median * 1e3
    return median


@contextlib.contextmanager
def _stage(ctx: Context, msg: str) -> Iterator[None]:
    t0 = time.perf_counter()
    ctx.log(msg)
    yield
    ctx.log(f"    ... {time.perf_counter() - t0:.1f} s")


def run_system(case: Case, system: System, ctx: Context) -> SystemResult:
    """Run one system of a case; every outcome is a :class:`SystemResult`, never an exception."""
    res = SystemResult(system=system.name, role=system.role, status=STATUS_OK)
    try:
        with _stage(ctx, f"  {case.name} / {system.name}"):
            m = system.run(ctx)
    except NotImplementedError as exc:
        res.status = STATUS_NOT_IMPLEMENTED
        res.note = str(exc)
        return res
    except SkipSystem as exc:
        res.status = "skipped"
        res.note = str(exc)
        return res
    except SystemTimeout as exc:
        res.status = "timeout"
        res.note = str(exc)
        res.metrics = exc.metrics
        return res
    except Exception as exc:  # a broken system must not hide the others' numbers
        res.status = "error"
        res.note = f"{type(exc).__name__}: {exc}"
        ctx.log(traceback.format_exc())
        return res
    res.times = [float(t) for t in m.times]
    res.median_s = float(statistics.median(m.times))
    res.work = m.work
    res.figure = _figure(case.unit, res.median_s, m.work)
    res.metrics = dict(m.metrics)
    res.info = dict(m.info)
    res.info["_value"] = m.value  # popped by run_case after the cross-check
    return res


def run_case(case: Case, ctx: Context) -> CaseResult:
    """Run every system of ``case`` and evaluate its goals."""
    t0 = time.perf_counter()
    ctx.log(f"case {case.name}: {case.title}")
    results = [run_system(case, s, ctx) for s in case.systems(ctx)]
    ref: Any = None
    ref_name = ""
    for r in results:
        value = r.info.pop("_value", None)
        if value is None or case.check is None or not r.ok:
            continue
        if ref_name == "":
            ref, ref_name = value, r.system
        elif not case.check(ref, value):
            # A fast wrong answer must not count as a result.
            r.status = "wrong result"
            r.note = f"result {value!r} disagrees with {ref_name} ({ref!r})"
    by_name = {r.system: r for r in results}
    goals = [g.evaluate(by_name) for g in case.goals]
    return CaseResult(
        name=case.name,
        title=case.title,
        workload=ctx.workload(case.workload).describe(),
        unit=case.unit,
        anchor=case.anchor,
        systems=results,
        goals=goals,
        seconds=time.perf_counter() - t0,
    )
