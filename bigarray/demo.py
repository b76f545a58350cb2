"""``bigarray demo``: the end-to-end tour on generated data.

A speech-like corpus: utterances of variable length (lognormal, 20 to 1,500 frames),
40 float32 features per frame. The demo

1. starts a ``dask.distributed`` LocalCluster of worker processes;
2. has every worker generate its share of utterances and write them, by name, into ONE
   store through a pickled ``PointerArrayWriter`` (no Manager, no server: journals);
3. commits once in the client and checks that every utterance arrived;
4. opens the store with ``xr.open_dataset(path, engine="bigarray", chunks={})``;
5. runs a per-utterance computation (``map_segments``: frames and mean energy per
   utterance) and a global reduction (mean and std of every feature) on the cluster;
6. reads random utterances by name and times them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

FEATURES = 40


@dataclass(frozen=True)
class DemoSize:
    utterances: int
    tasks: int
    reads: int


SIZES = {
    "smoke": DemoSize(utterances=400, tasks=4, reads=200),
    "default": DemoSize(utterances=50_000, tasks=50, reads=5_000),
    "large": DemoSize(utterances=500_000, tasks=250, reads=20_000),
}


def utterance_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Frames per utterance: lognormal around 100 frames (1 s at 100 frames/s)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(100), 0.5, n), 20, 1500).astype(np.int64)


def utterance(name_id: int, frames: int) -> np.ndarray:
    """Deterministic features of utterance ``name_id`` (so any process can check them)."""
    rng = np.random.default_rng(name_id)
    base = rng.standard_normal((1, FEATURES), dtype=np.float32)
    return base + 0.1 * rng.standard_normal((frames, FEATURES), dtype=np.float32)


def _write_share(writer: Any, first: int, lengths: np.ndarray) -> tuple[int, int]:
    """One worker task: generate utterances ``first ...`` and append them by name."""
    batch: dict[str, np.ndarray] = {}
    rows = 0
    for k, frames in enumerate(lengths.tolist()):
        batch[f"utt{first + k:07d}"] = utterance(first + k, frames)
        rows += frames
        if rows >= 250_000:  # ~40 MB per write call keeps worker memory flat
            writer.write(batch)
            batch, rows = {}, 0
    if batch:
        writer.write(batch)
    return len(lengths), int(lengths.sum())


def _segment_stats(block: np.ndarray) -> np.ndarray:
    """Per utterance: frames and mean energy (mean of squares over frames and features)."""
    return np.array([len(block), float(np.mean(np.square(block, dtype=np.float64)))])


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[str]:
    if path:
        yield path
        return
    d = tempfile.mkdtemp(prefix="bigarray-demo-")
    try:
        yield os.path.join(d, "corpus.bigarray")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _say(step: str, seconds: float, detail: str) -> None:
    print(f"  {step:<38} {seconds:8.2f} s   {detail}", flush=True)


def run_demo(
    size: str = "default", workers: int = 2, path: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the tour and print what it did and how fast; returns the figures."""
    import dask
    import xarray as xr
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    from .arrays import PointerArray, PointerArrayWriter
    from .dask_backend import map_segments

    spec = SIZES[size]
    lengths = utterance_lengths(spec.utterances)
    total_rows = int(lengths.sum())
    nbytes = total_rows * FEATURES * 4
    out: dict[str, Any] = {"size": size, "utterances": spec.utterances, "rows": total_rows}
    print(
        f"bigarray demo ({size}): {spec.utterances:,} utterances, {total_rows:,} frames x "
        f"{FEATURES} float32 features = {nbytes / 1e6:,.0f} MB, {workers} worker processes"
    )
    with (
        _workdir(path) as store_path,
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        # 1-2. every worker writes its share of utterances into one store
        t0 = time.perf_counter()
        writer = PointerArrayWriter(
            store_path, shape=(0, FEATURES), dtype="float32", remove_exist=True
        )
        bounds = np.linspace(0, spec.utterances, spec.tasks + 1).astype(int)
        futures = [
            client.submit(_write_share, writer, int(a), lengths[a:b], pure=False)
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        done = 0
        for fut in tqdm(
            as_completed(futures),
            total=len(futures),
            desc="  writing",
            disable=not progress,
            leave=False,
        ):
            done += fut.result()[0]
        t_write = time.perf_counter() - t0
        # 3. one commit in the client merges every worker's journal
        t0 = time.perf_counter()
        writer.close()
        t_commit = time.perf_counter() - t0
        x = PointerArray(store_path)
        assert len(x.indices) == spec.utterances == done, "an utterance went missing"
        _say("generate + write (worker processes)", t_write, f"{nbytes / t_write / 1e9:.2f} GB/s")
        _say("commit (merge journals, index)", t_commit, f"{len(x.indices):,} segments")
        out.update(write_s=t_write, commit_s=t_commit)

        # 4. xarray, lazily, with segment-aligned dask chunks
        t0 = time.perf_counter()
        ds = xr.open_dataset(store_path, engine="bigarray", chunks={})
        t_open = time.perf_counter() - t0
        data = ds["data"]
        n_chunks = len(data.chunks[0]) if data.chunks else 1
        _say("xr.open_dataset(engine='bigarray')", t_open, f"{n_chunks} chunks")

        # 5a. per-utterance computation on the cluster: one result row per utterance
        t0 = time.perf_counter()
        stats = map_segments(_segment_stats, x, dtype="f8", shape=(2,))
        with dask.config.set(scheduler=client):
            per_utt = stats.compute()
        t_map = time.perf_counter() - t0
        # results come in row order; utterances were appended by whichever worker ran first
        order = np.array([int(name[3:]) for name in x.indices])
        assert np.array_equal(per_utt[:, 0], lengths[order]), "frames per utterance disagree"
        energy = dict(zip(order.tolist(), per_utt[:, 1].tolist()))
        _say("per-utterance energy (map_segments)", t_map, f"{len(per_utt):,} results")

        # 5b. global reduction: mean and std of every feature over all frames
        t0 = time.perf_counter()
        # float64 moments in one pass (xarray's default nan-skipping std is ~10x slower)
        s1, s2 = dask.compute(
            data.sum("row", dtype="f8", skipna=False),
            (data.astype("f8") ** 2).sum("row", skipna=False),
        )
        mean = s1.values / total_rows
        std = np.sqrt(np.maximum(s2.values / total_rows - mean**2, 0))
        t_reduce = time.perf_counter() - t0
        _say("global mean/std over all frames", t_reduce, f"{nbytes / t_reduce / 1e9:.2f} GB/s")
        ds.close()
        out.update(open_s=t_open, map_s=t_map, reduce_s=t_reduce)

        # 6. random utterances by name
        rng = np.random.default_rng(1)
        picks = [f"utt{i:07d}" for i in rng.integers(0, spec.utterances, spec.reads)]
        t0 = time.perf_counter()
        for name in picks:
            x[name]
        t_reads = time.perf_counter() - t0
        k = int(picks[0][3:])
        assert np.array_equal(x[picks[0]], utterance(k, int(lengths[k])))
        _say(
            f"read {spec.reads:,} utterances by name",
            t_reads,
            f"{t_reads / spec.reads * 1e6:.1f} us each",
        )
        out.update(read_us=t_reads / spec.reads * 1e6)
        print(
            f"  feature 0: mean {float(mean[0]):+.4f}, std {float(std[0]):.4f}; "
            f"mean energy of utterance {picks[0]}: {energy[k]:.4f}"
        )
    print("done: every utterance written by the workers was committed and read back")
    return out
