"""One shuffled training epoch through ``torch.utils.data.DataLoader``: bigarray vs its peers.

The W1 data (20,000 segments of 50-150 rows x 128 float32, 1.02 GB at ``--size W1``) is
stored once in every format, then each system runs one epoch through
``DataLoader(num_workers=2)`` with batches of about 16,000 rows, shuffled, from the page cache
(one untimed warm-up epoch first). Reported per system: samples/s and MB/s (the segments'
own bytes, padding not counted), the median of ``--repeat`` epochs, and every worker's
anonymous resident memory (``RssAnon``) at its first and at its last batch.

Systems
-------
``bigarray (bucketed)``
    :class:`bigarray.torch.SegmentDataset` + ``BucketBatchSampler(max_frames=16,000)`` +
    ``collate_padded`` (each batch read straight into a shared-memory tensor).
``bigarray (160 per batch)``
    The same dataset with ``SegmentSampler`` and ``batch_size=160``: the peers' batching.
``numpy memmap + dict``
    One ``.npy`` through ``np.load(mmap_mode="r")`` and a Python dict name -> (start, stop).
``Megatron-style .bin/.idx``
    Raw rows in ``.bin``, ``sizes``/``pointers`` in ``.idx``, read with ``np.memmap`` and
    ``np.frombuffer`` as Megatron's ``MMapIndexedDataset`` does.
``HF datasets``
    Arrow (``Array2D(shape=(None, 128))``), ``with_format("numpy")``, batched ``__getitems__``.
``LitData``
    ``litdata.optimize`` (64 MB chunks) + ``StreamingDataset(shuffle=True)`` +
    ``StreamingDataLoader``.
``MosaicML streaming``
    ``MDSWriter`` (``ndarray:float32``, 64 MB shards) + ``StreamingDataset(local=...,
    shuffle=True)`` + ``DataLoader``.

Peers get ``batch_size = round(16,000 / mean length)`` (160 at W1) and a ``pad_sequence``
collate; a peer whose package is missing is reported as skipped. Each epoch is checked: every
segment delivered once and every row counted (a fast wrong loader shows as an error).

``--s3`` adds the same epoch from a moto S3 server on 127.0.0.1 (a smaller store: moto is
slow): bigarray's ``SegmentIterableDataset`` against LitData and MosaicML streaming reading
the same server.

Run: ``python -m benchmarks.bench_torch --size W1`` (``--size smoke`` takes seconds).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.workloads import make_workload

ROWS_PER_BATCH = 16_000
CHUNK = "64MB"


# ----------------------------------------------------------------------------- measuring
def _rss_anon(pid: int) -> tuple[int, int]:
    """``(RssAnon, Private_Dirty)`` bytes of ``pid``, or -1s.

    A forked worker's ``RssAnon`` includes every anonymous page it shares with the parent;
    ``Private_Dirty`` counts only the pages it owns: its own allocations and the parent's
    pages it copied on write (or on read, through reference counts), the growth that
    matters.
    """
    out = [-1, -1]
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    out[0] = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Private_Dirty:"):
                    out[1] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out[0], out[1]


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


@dataclass
class Epoch:
    seconds: float
    samples: int
    rows: int
    rss_start: dict[int, tuple[int, int]] = field(default_factory=dict)
    rss_end: dict[int, tuple[int, int]] = field(default_factory=dict)


def run_epoch(loader: Any, before: set[int]) -> Epoch:
    """Consume one epoch; every batch is ``(data, lengths)``-like. Tracks workers' RssAnon."""
    samples = rows = 0
    start: dict[int, tuple[int, int]] = {}
    end: dict[int, tuple[int, int]] = {}
    workers: list[int] = []
    try:
        last = len(loader) - 1
    except TypeError:
        last = -1
    t0 = time.perf_counter()
    for k, batch in enumerate(loader):
        lengths = batch.lengths if hasattr(batch, "lengths") else batch[1]
        samples += len(lengths)
        rows += int(lengths.sum())
        # reading smaps_rollup walks the worker's page tables and holds its mmap lock: a few
        # samples per epoch only (at the first batch, the last one, and every 64th)
        if k == 0:
            workers = sorted(_children() - before)
            start = end = {p: _rss_anon(p) for p in workers}
        elif k == last or k % (64 if last >= 0 else 4) == 63 % (64 if last >= 0 else 4):
            end = {p: _rss_anon(p) for p in workers}
    seconds = time.perf_counter() - t0
    return Epoch(seconds, samples, rows, start, end)


def pad_collate(batch: list[Any]) -> tuple[Any, Any]:
    """The peers' collate: ``pad_sequence`` and lengths."""
    from torch.nn.utils.rnn import pad_sequence

    tensors = [b[1] if isinstance(b, tuple) else b for b in batch]
    lengths = torch.tensor([len(t) for t in tensors])
    return pad_sequence(tensors, batch_first=True), lengths


# pad_sequence copies the peers' read-only arrays anyway: torch's warning about them is noise
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def dict_collate(key: str, batch: list[dict[str, Any]]) -> tuple[Any, Any]:
    return pad_collate([torch.from_numpy(np.asarray(b[key]).reshape(-1, _F)) for b in batch])


_F = 128  # features per row (set from the workload)


# ----------------------------------------------------------------------------- map datasets
class MemmapDict(Dataset):  # type: ignore[type-arg]
    """numpy memmap + a Python dict of names (the physical reference)."""

    def __init__(self, npy: str, names: list[str], offsets: np.ndarray) -> None:
        self.data = np.load(npy, mmap_mode="r")
        self.names = list(names)
        self.index = {n: (int(a), int(b)) for n, a, b in zip(names, offsets[:-1], offsets[1:])}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Any:
        name = self.names[i]
        a, b = self.index[name]
        return name, torch.from_numpy(np.array(self.data[a:b]))


class MegatronStyle(Dataset):  # type: ignore[type-arg]
    """``.bin`` + ``.idx`` read like Megatron-LM's ``MMapIndexedDataset``."""

    def __init__(self, prefix: str) -> None:
        idx = np.load(prefix + ".idx.npz")
        self.sizes = idx["sizes"]
        self.pointers = idx["pointers"]
        self.features = int(idx["features"])
        self._bin = np.memmap(prefix + ".bin", mode="r", order="C")
        self._buf = memoryview(self._bin)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> Any:
        n = int(self.sizes[i])
        a = np.frombuffer(self._buf, np.float32, n * self.features, int(self.pointers[i])).reshape(
            n, self.features
        )
        return torch.from_numpy(a.copy())


class HFTorch(Dataset):  # type: ignore[type-arg]
    """A HuggingFace ``datasets`` Arrow dataset (numpy format), fetched batch-wise."""

    def __init__(self, path: str) -> None:
        from datasets import load_from_disk

        self.hf = load_from_disk(path).with_format("numpy")

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, i: int) -> Any:
        return torch.from_numpy(np.asarray(self.hf[int(i)]["data"], np.float32))

    def __getitems__(self, idx: list[int]) -> list[Any]:
        rows = self.hf[list(idx)]["data"]
        return [torch.from_numpy(np.asarray(r, np.float32)) for r in rows]


# ----------------------------------------------------------------------------- builders
def _segments(npy: str, offsets: np.ndarray, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    data = np.load(npy, mmap_mode="r")
    for i, name in enumerate(names):
        yield name, np.asarray(data[offsets[i] : offsets[i + 1]])


def _litdata_sample(npy: str, offsets: np.ndarray, names: list[str], i: int) -> dict[str, Any]:
    data = np.load(npy, mmap_mode="r")
    return {"name": names[i], "data": np.array(data[offsets[i] : offsets[i + 1]])}


def build_all(work: str, size: str, only: set[str]) -> dict[str, Any]:
    """Write W1 in every format (untimed). Returns paths and facts."""
    from bigarray import PointerArrayWriter

    w = make_workload("ragged", size)
    global _F
    _F = w.n_features
    names = w.names
    offsets = w.offsets
    info: dict[str, Any] = {
        "workload": w.describe(),
        "names": names,
        "offsets": offsets,
        "lengths": w.lengths,
    }
    store = os.path.join(work, "w1.bigarray")
    npy = os.path.join(store, "data.npy")
    if not os.path.exists(store):
        data = w.materialize()
        with PointerArrayWriter(store, dtype="float32", remove_exist=True) as wr:
            wr.write({n: data[a:b] for n, a, b in zip(names, offsets[:-1], offsets[1:])})
        del data
        gc.collect()
    info["bigarray"] = store
    info["npy"] = npy  # the bigarray data file is a plain .npy: the memmap peer reads it
    prefix = os.path.join(work, "megatron")
    if not os.path.exists(prefix + ".bin"):
        shutil.copyfile(npy, prefix + ".bin.tmp")
        with open(prefix + ".bin.tmp", "rb") as f:
            header = len(f.read(4096).split(b"\n", 1)[0]) + 1
        # drop the .npy header: a .bin holds the rows only
        src = np.memmap(prefix + ".bin.tmp", np.uint8, "r", offset=header)
        src.tofile(prefix + ".bin")
        del src
        os.remove(prefix + ".bin.tmp")
        np.savez(
            prefix + ".idx.npz",
            sizes=w.lengths.astype(np.int32),
            pointers=(offsets[:-1] * w.row_nbytes).astype(np.int64),
            features=np.int64(w.n_features),
        )
    info["megatron"] = prefix
    if "HF datasets" in only:
        info["hf"] = _build_hf(work, npy, offsets, names, w.n_features)
    if "LitData" in only:
        info["litdata"] = _build_litdata(work, npy, offsets, names)
    if "MosaicML streaming" in only:
        info["mds"] = _build_mds(work, npy, offsets, names)
    return info


def _build_hf(work: str, npy: str, offsets: np.ndarray, names: list[str], f: int) -> str | None:
    try:
        from datasets import Array2D, Dataset, Features, Value
    except ImportError:
        return None
    path = os.path.join(work, "hf")
    if os.path.exists(path):
        return path

    def gen() -> Iterator[dict[str, Any]]:
        for name, rows in _segments(npy, offsets, names):
            yield {"name": name, "data": rows}

    feats = Features({"name": Value("string"), "data": Array2D(shape=(None, f), dtype="float32")})
    ds = Dataset.from_generator(gen, features=feats, cache_dir=os.path.join(work, "hf-cache"))
    ds.save_to_disk(path)
    shutil.rmtree(os.path.join(work, "hf-cache"), ignore_errors=True)
    return path


def _build_litdata(work: str, npy: str, offsets: np.ndarray, names: list[str]) -> str | None:
    try:
        from litdata import optimize
    except ImportError:
        return None
    path = os.path.join(work, "litdata")
    if os.path.exists(path):
        return path
    optimize(
        fn=functools.partial(_litdata_sample, npy, offsets, names),
        inputs=list(range(len(names))),
        output_dir=path,
        chunk_bytes=CHUNK,
        num_workers=1,
        mode="overwrite",
    )
    return path


def _build_mds(work: str, npy: str, offsets: np.ndarray, names: list[str]) -> str | None:
    try:
        from streaming import MDSWriter
    except ImportError:
        return None
    path = os.path.join(work, "mds")
    if os.path.exists(path):
        return path
    cols = {"name": "str", "data": "ndarray:float32"}
    with MDSWriter(out=path, columns=cols, size_limit=CHUNK) as out:
        for name, rows in _segments(npy, offsets, names):
            out.write({"name": name, "data": rows})
    return path


# ----------------------------------------------------------------------------- systems
def systems(info: dict[str, Any], workers: int, batch: int) -> dict[str, Callable[[int], Any]]:
    """name -> make_loader(epoch)."""
    from torch.utils.data import DataLoader

    from bigarray.torch import BucketBatchSampler, SegmentDataset, SegmentSampler, collate_padded

    kw: dict[str, Any] = {"num_workers": workers, "multiprocessing_context": "fork"}
    out: dict[str, Callable[[int], Any]] = {}
    bds = SegmentDataset(info["bigarray"])

    def big_bucketed(epoch: int) -> Any:
        s = BucketBatchSampler(bds, ROWS_PER_BATCH, seed=0)
        s.set_epoch(epoch)
        return DataLoader(bds, batch_sampler=s, collate_fn=collate_padded, **kw)

    def big_plain(epoch: int) -> Any:
        s = SegmentSampler(bds, seed=0)
        s.set_epoch(epoch)
        return DataLoader(bds, sampler=s, batch_size=batch, collate_fn=collate_padded, **kw)

    out["bigarray (bucketed)"] = big_bucketed
    out[f"bigarray ({batch} per batch)"] = big_plain

    def shuffled(ds: Any, collate: Any = pad_collate) -> Callable[[int], Any]:
        def make(epoch: int) -> Any:
            g = torch.Generator().manual_seed(epoch)
            return DataLoader(
                ds, batch_size=batch, shuffle=True, generator=g, collate_fn=collate, **kw
            )

        return make

    out["numpy memmap + dict"] = shuffled(MemmapDict(info["npy"], info["names"], info["offsets"]))
    out["Megatron-style .bin/.idx"] = shuffled(MegatronStyle(info["megatron"]))
    if info.get("hf"):
        out["HF datasets"] = shuffled(HFTorch(info["hf"]))
    if info.get("litdata"):
        from litdata import StreamingDataLoader, StreamingDataset

        def lit(epoch: int) -> Any:
            ds = StreamingDataset(info["litdata"], shuffle=True, seed=epoch)
            return StreamingDataLoader(
                ds, batch_size=batch, num_workers=workers, collate_fn=_lit_collate
            )

        out["LitData"] = lit
    if info.get("mds"):

        def mds(epoch: int) -> Any:
            from streaming import StreamingDataset
            from streaming.base.util import clean_stale_shared_memory

            clean_stale_shared_memory()
            ds = StreamingDataset(
                local=info["mds"], shuffle=True, shuffle_seed=epoch, batch_size=batch
            )
            return DataLoader(ds, batch_size=batch, collate_fn=_mds_collate, **kw)

        out["MosaicML streaming"] = mds
    return out


def _lit_collate(batch: list[dict[str, Any]]) -> tuple[Any, Any]:
    return dict_collate("data", batch)


def _mds_collate(batch: list[dict[str, Any]]) -> tuple[Any, Any]:
    return dict_collate("data", batch)


# ----------------------------------------------------------------------------- running
def measure(
    name: str, make: Callable[[int], Any], repeat: int, n: int, rows: int
) -> dict[str, Any]:
    before = _children()
    epochs = []
    try:
        run_epoch(make(0), before)  # warm-up: page cache, imports, peer caches
        for r in range(repeat):
            e = run_epoch(make(r + 1), before)
            if e.samples != n or e.rows != rows:
                raise ValueError(
                    f"{name} delivered {e.samples} samples / {e.rows} rows in an epoch, expected "
                    f"{n} / {rows}"
                )
            epochs.append(e)
    except Exception as exc:  # a peer failing is a result, not a crash of the benchmark
        return {"system": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
    secs = statistics.median(e.seconds for e in epochs)
    mb = rows * _F * 4 / 1e6

    def worst(which: str, k: int) -> float:
        vals = [v[k] for e in epochs for v in getattr(e, which).values()]
        return max(vals, default=-1) / 1e6

    def growth(k: int) -> float:
        vals = [
            e.rss_end[p][k] - e.rss_start[p][k]
            for e in epochs
            for p in e.rss_start
            if p in e.rss_end
        ]
        return max(vals, default=0) / 1e6

    return {
        "system": name,
        "seconds": [round(e.seconds, 4) for e in epochs],
        "samples_per_s": n / secs,
        "mb_per_s": mb / secs,
        "worker_rss_anon_start_mb": worst("rss_start", 0),
        "worker_rss_anon_end_mb": worst("rss_end", 0),
        "worker_rss_anon_growth_mb": growth(0),
        "worker_private_dirty_start_mb": worst("rss_start", 1),
        "worker_private_dirty_end_mb": worst("rss_end", 1),
        "worker_private_dirty_growth_mb": growth(1),
    }


# ----------------------------------------------------------------------------- S3 (moto)
@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 in a child process; yields its endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def run_s3(
    info: dict[str, Any], workers: int, batch: int, repeat: int, n_s3: int
) -> list[dict[str, Any]]:
    """bigarray's iterable dataset vs LitData and MosaicML streaming, from one moto server."""
    import s3fs
    from torch.utils.data import DataLoader

    from bigarray.torch import SegmentIterableDataset

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    results = []
    names = info["names"][:n_s3]
    offsets = info["offsets"][: n_s3 + 1]
    rows = int(offsets[-1])
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        opts = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        fs = s3fs.S3FileSystem(**opts)
        fs.call_s3("create_bucket", Bucket="bench")
        # a smaller bigarray store with the first n_s3 segments
        from bigarray import PointerArray, PointerArrayWriter

        src = PointerArray(info["bigarray"])
        small = os.path.join(tmp, "small.bigarray")
        with PointerArrayWriter(small, dtype="float32") as w:
            w.write(
                {
                    nm: np.asarray(src[int(a) : int(b)])
                    for nm, a, b in zip(names, offsets[:-1], offsets[1:])
                }
            )
        fs.put(small, "s3://bench/w1.bigarray", recursive=True)
        kw: dict[str, Any] = {"num_workers": workers, "multiprocessing_context": "fork"}

        def big(epoch: int) -> Any:
            from bigarray.torch import collate_padded

            ds = SegmentIterableDataset(
                "s3://bench/w1.bigarray", storage_options=opts, seed=0, buffer_size=4 * batch
            )
            ds.set_epoch(epoch)
            return DataLoader(ds, batch_size=batch, collate_fn=collate_padded, **kw)

        makers: dict[str, Callable[[int], Any]] = {"bigarray (SegmentIterableDataset)": big}
        os.environ["S3_ENDPOINT_URL"] = endpoint  # MosaicML streaming
        os.environ["AWS_ENDPOINT_URL"] = endpoint  # boto3 (LitData)
        os.environ["AWS_ALLOW_HTTP"] = (
            "true"  # obstore (LitData's downloader) refuses http otherwise
        )
        npy = os.path.join(small, "data.npy")
        try:
            lit_dir = _build_litdata(tmp, npy, offsets, names)
            if lit_dir:
                fs.put(lit_dir, "s3://bench/litdata", recursive=True)
                from litdata import StreamingDataLoader, StreamingDataset

                try:  # LitData's obstore downloader refuses the plain-http test server
                    from litdata.streaming import downloader

                    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"
                except (ImportError, AttributeError, TypeError):
                    pass

                def lit(epoch: int) -> Any:
                    ds = StreamingDataset(
                        "s3://bench/litdata",
                        shuffle=True,
                        seed=epoch,
                        cache_dir=os.path.join(tmp, f"litcache{epoch}"),
                    )
                    return StreamingDataLoader(
                        ds, batch_size=batch, num_workers=workers, collate_fn=_lit_collate
                    )

                makers["LitData"] = lit
        except Exception as exc:
            results.append({"system": "LitData", "error": f"{type(exc).__name__}: {exc}"[:500]})
        try:
            mds_dir = _build_mds(tmp, npy, offsets, names)
            if mds_dir:
                fs.put(mds_dir, "s3://bench/mds", recursive=True)

                def mds(epoch: int) -> Any:
                    from streaming import StreamingDataset
                    from streaming.base.util import clean_stale_shared_memory

                    clean_stale_shared_memory()
                    cache = os.path.join(tmp, f"mdscache{epoch}")
                    ds = StreamingDataset(
                        remote="s3://bench/mds",
                        local=cache,
                        shuffle=True,
                        shuffle_seed=epoch,
                        batch_size=batch,
                    )
                    return DataLoader(ds, batch_size=batch, collate_fn=_mds_collate, **kw)

                makers["MosaicML streaming"] = mds
        except Exception as exc:
            results.append(
                {"system": "MosaicML streaming", "error": f"{type(exc).__name__}: {exc}"[:500]}
            )
        for name, make in makers.items():
            print(f"  s3: {name}", file=sys.stderr, flush=True)
            results.append(measure(name, make, repeat, n_s3, rows))
    return results


# ----------------------------------------------------------------------------- report
def table(results: list[dict[str, Any]], title: str) -> str:
    ok = [r for r in results if "error" not in r]
    peers = [r for r in ok if not r["system"].startswith("bigarray")]
    best = max(peers, key=lambda r: r["samples_per_s"], default=None)
    lines = [
        title,
        f"{'system':34} {'samples/s':>10} {'MB/s':>8} {'vs best peer':>12} "
        f"{'worker MB: anon start/end':>26} {'private start/end':>18}",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['system']:34} error: {r['error']}")
            continue
        ratio = f"{r['samples_per_s'] / best['samples_per_s']:.2f}x" if best else "-"
        rss = f"{r['worker_rss_anon_start_mb']:.0f} / {r['worker_rss_anon_end_mb']:.0f}"
        priv = f"{r['worker_private_dirty_start_mb']:.0f} / {r['worker_private_dirty_end_mb']:.0f}"
        lines.append(
            f"{r['system']:34} {r['samples_per_s']:10.0f} {r['mb_per_s']:8.0f} {ratio:>12} "
            f"{rss:>26} {priv:>18}"
        )
    if best:
        lines.append(f"best peer: {best['system']}")
    return "\n".join(lines)


PEERS = ("HF datasets", "LitData", "MosaicML streaming")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_torch", description=__doc__.split("\n")[0]
    )
    p.add_argument("--size", default="smoke", choices=["smoke", "W1", "large"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated optional peers to include"
    )
    p.add_argument("--s3", action="store_true", help="also the epoch from a moto S3 server")
    p.add_argument("--s3-segments", type=int, default=2000)
    p.add_argument("--s3-only", action="store_true", help="skip the local epoch (with --s3)")
    p.add_argument("--workdir", help="where to write the formats (default: a temporary directory)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    only = {s.strip() for s in args.peers.split(",") if s.strip()}
    tmp = None
    work = args.workdir
    if work is None:
        tmp = tempfile.mkdtemp(prefix="bench-torch-")
        work = tmp
    os.makedirs(work, exist_ok=True)
    try:
        print(f"building the formats in {work} ...", file=sys.stderr, flush=True)
        info = build_all(work, args.size, only)
        n = len(info["names"])
        rows = int(info["offsets"][-1])
        batch = max(1, round(ROWS_PER_BATCH / float(np.mean(info["lengths"]))))
        results: list[dict[str, Any]] = []
        for name, make in () if args.s3_only else systems(info, args.workers, batch).items():
            print(f"  {name}", file=sys.stderr, flush=True)
            results.append(measure(name, make, args.repeat, n, rows))
        for peer in sorted(only & set(PEERS)) if not args.s3_only else ():
            if not any(r["system"] == peer for r in results):
                extra = "bench-streaming" if peer == "MosaicML streaming" else "bench-torch"
                results.append(
                    {"system": peer, "error": f"not installed (pip install 'bigarray[{extra}]')"}
                )
        title = (
            f"one shuffled epoch, DataLoader(num_workers={args.workers}), ~{ROWS_PER_BATCH:,} rows "
            f"per batch ({batch} segments for the peers), {info['workload']['label']}: "
            f"{n:,} segments, {info['workload']['bytes'] / 1e9:.2f} GB, median of {args.repeat}"
        )
        if results:
            print(table(results, title))
        s3_results: list[dict[str, Any]] = []
        if args.s3:
            n_s3 = min(n, args.s3_segments)
            s3_results = run_s3(info, args.workers, batch, args.repeat, n_s3)
            print()
            print(table(s3_results, f"the same from moto S3 on 127.0.0.1 ({n_s3:,} segments)"))
        if args.out:
            doc = {
                "case": "torch-epoch",
                "size": args.size,
                "workers": args.workers,
                "batch": batch,
                "machine": {
                    "host": platform.node(),
                    "cpus": os.cpu_count(),
                    "python": sys.version.split()[0],
                },
                "workload": info["workload"],
                "results": results,
                "s3": s3_results,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            with open(args.out, "w") as f:
                json.dump(doc, f, indent=1, default=float)
        return 1 if any("error" in r and "not installed" not in r["error"] for r in results) else 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
