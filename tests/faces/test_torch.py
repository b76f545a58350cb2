"""bigarray.torch: datasets, samplers and collation, under real DataLoader workers.

Real parts only: stores written by PointerArrayWriter, DataLoader workers started by fork,
spawn and forkserver (persistent where it saves start-up time), the moto S3 server for the
object-store variant. Segment ``i`` holds rows ``[i, r, i % 7]`` for ``r`` in its rows, so
every batch can be checked against the segment it claims to be.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import BatchSampler, DataLoader  # noqa: E402

from bigarray import MmapArrayWriter, PointerArrayWriter  # noqa: E402
from bigarray.errors import (  # noqa: E402
    BigArrayError,
    SamplerError,
    SchemaError,
    SegmentIndexError,
    StoreChangedError,
)
from bigarray.torch import (  # noqa: E402
    BucketBatchSampler,
    PackedBatch,
    PaddedBatch,
    SegmentBatch,
    SegmentDataset,
    SegmentIterableDataset,
    SegmentSampler,
    collate_packed,
    collate_padded,
)

N = 240  # segments of the shared store
MAX_LEN = 40


def _segment(i: int, n: int) -> np.ndarray:
    rows = np.empty((n, 3), np.float32)
    rows[:, 0] = i
    rows[:, 1] = np.arange(n)
    rows[:, 2] = i % 7
    return rows


def _write(path: str, lengths: np.ndarray, remove_exist: bool = False) -> None:
    with PointerArrayWriter(path, dtype="float32", remove_exist=remove_exist) as w:
        w.write({f"utt{i:05d}": _segment(i, int(n)) for i, n in enumerate(lengths)})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    path = str(tmp_path_factory.mktemp("torch") / "feats")
    lengths = np.random.default_rng(3).integers(1, MAX_LEN + 1, N)
    _write(path, lengths)
    return path, lengths


@pytest.fixture(scope="module")
def ds(store: tuple[str, np.ndarray]) -> SegmentDataset:
    return SegmentDataset(store[0])


def _check_segment(name: str, rows: Any) -> int:
    """The segment index a (name, rows) pair claims, after checking its rows."""
    i = int(name[3:])
    got = rows.numpy() if hasattr(rows, "numpy") else np.asarray(rows)
    np.testing.assert_array_equal(got, _segment(i, len(got)))
    return i


def _names_of(batch: Any) -> list[int]:
    """Check every segment of a collated batch; return their indices."""
    if isinstance(batch, (PaddedBatch, PackedBatch)):
        return [_check_segment(n, s) for n, s in zip(batch.names, batch.segments())]
    raise AssertionError(f"unexpected batch {type(batch)}")


def _exactly_once(per_rank: list[list[int]], n: int = N) -> None:
    counts = collections.Counter(i for r in per_rank for i in r)
    assert sorted(counts) == list(range(n)), "some segment was dropped"
    assert set(counts.values()) == {1}, "some segment came twice"


class _Switch:
    """A batch sampler that delegates to the plan under test, so that one set of persistent
    spawn workers serves every plan (spawned workers take seconds to import torch)."""

    def __init__(self) -> None:
        self.current: Any = None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.current)

    def __len__(self) -> int:
        return len(self.current)


# ----------------------------------------------------------------------------- dataset
def test_dataset_items_are_named_segments_in_row_order(ds: SegmentDataset, store: Any) -> None:
    _, lengths = store
    assert len(ds) == N
    np.testing.assert_array_equal(ds.lengths, lengths)
    assert isinstance(ds.names, np.ndarray) and ds.names[5] == "utt00005"
    assert ds.names.tolist() == [f"utt{i:05d}" for i in range(N)]
    name, x = ds[17]
    assert name == "utt00017" and isinstance(x, torch.Tensor) and x.dtype == torch.float32
    _check_segment(name, x)
    assert ds[-1][0] == f"utt{N - 1:05d}"
    x[0, 0] = -1  # samples are the caller's own copies, not views of the read-only map
    assert ds[17][1][0, 0] == 17


def test_dataset_pickles_by_reference(ds: SegmentDataset) -> None:
    raw = pickle.dumps(ds)
    assert len(raw) < 3000
    again = pickle.loads(raw)
    assert len(again) == N and again.token == ds.token
    _check_segment(*again[200])


def test_dataset_transform_applies_to_each_segment(store: Any) -> None:
    tds = SegmentDataset(store[0], transform=lambda t: t * 2)
    _, x = tds[3]
    np.testing.assert_array_equal(x.numpy(), 2 * _segment(3, len(x)))
    batch = collate_padded(tds.__getitems__([1, 2]))
    for i, seg in zip([1, 2], batch.segments()):
        np.testing.assert_array_equal(seg.numpy(), 2 * _segment(i, len(seg)))


def test_dataset_index_out_of_range_is_a_clear_index_error(ds: SegmentDataset) -> None:
    with pytest.raises(
        SegmentIndexError, match=r"segment index 240 is out of range .*0 <= i < 240"
    ):
        ds[N]
    with pytest.raises(IndexError):  # the builtin a caller would catch
        ds[-N - 1]
    with pytest.raises(
        SegmentIndexError, match=r"takes an int index .*'utt00001'.*ds.handle\[name\]"
    ):
        ds["utt00001"]
    with pytest.raises(SegmentIndexError, match="out of range"):
        ds.__getitems__([0, N + 5])


def test_dataset_of_a_store_without_names_is_refused(tmp_path: Any) -> None:
    path = str(tmp_path / "plain")
    with MmapArrayWriter(path, shape=(10, 2), dtype="float32") as w:
        w.write(np.ones((10, 2), np.float32))
    with pytest.raises(SchemaError, match=r"has no segment index .*PointerArrayWriter"):
        SegmentDataset(path)


def test_no_index_is_materialised_as_python_objects(tmp_path: Any) -> None:
    path = str(tmp_path / "many")
    n = 200_000
    with PointerArrayWriter(path, dtype="uint8") as w:
        w.write({f"s{i}": np.full(1 + i % 3, i % 250, np.uint8) for i in range(n)})
    import gc

    gc.collect()
    before = sys.getallocatedblocks()
    big = SegmentDataset(path)
    assert len(big) == n and int(big.lengths.sum()) == sum(1 + i % 3 for i in range(n))
    sampler = SegmentSampler(big, num_replicas=2, rank=1, seed=4)
    first = [i for _, i in zip(range(10), sampler)]
    buckets = BucketBatchSampler(big, max_frames=2_000, seed=4)
    nb = len(buckets)
    assert nb >= n * 2 // 2_000
    blob = pickle.dumps(big)
    del first, blob
    gc.collect()
    grown = sys.getallocatedblocks() - before
    # a list of the indices, names or bounds would be >= 200,000 Python objects
    assert grown < 20_000, f"{grown} Python objects for {n} segments"
    assert len(pickle.dumps(big)) < 3000


# ----------------------------------------------------------------------------- collation
def test_collate_padded_round_trips(ds: SegmentDataset) -> None:
    idx = [5, 0, 33, 7]
    for batch in (ds.__getitems__(idx), [ds[i] for i in idx]):
        out = collate_padded(batch, padding_value=-9)
        assert out.names == [f"utt{i:05d}" for i in idx]
        lengths = [int(ds.lengths[i]) for i in idx]
        assert out.lengths.tolist() == lengths and out.lengths.dtype == torch.int64
        assert out.data.shape == (4, max(lengths), 3)
        assert out.mask.dtype == torch.bool and out.mask.sum(1).tolist() == lengths
        assert bool((out.data[~out.mask] == -9).all())
        for i, seg in zip(idx, out.segments()):
            np.testing.assert_array_equal(seg.numpy(), _segment(i, int(ds.lengths[i])))


def test_collate_packed_round_trips(ds: SegmentDataset) -> None:
    idx = [9, 2, 100]
    for batch in (ds.__getitems__(idx), [ds[i] for i in idx], [ds[i][1] for i in idx]):
        out = collate_packed(batch)
        lengths = [int(ds.lengths[i]) for i in idx]
        assert out.data.shape == (sum(lengths), 3)
        assert out.cu_seqlens.dtype == torch.int32
        assert out.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
        assert out.max_seqlen == max(lengths)
        for i, seg in zip(idx, out.segments()):
            np.testing.assert_array_equal(seg.numpy(), _segment(i, int(ds.lengths[i])))


def test_segment_batch_works_with_the_default_collate(ds: SegmentDataset) -> None:
    batch = ds.__getitems__([3, 4])
    assert isinstance(batch, SegmentBatch) and len(batch) == 2
    names, tensors = zip(*batch)
    assert names == ("utt00003", "utt00004")
    _check_segment(names[1], tensors[1])


def test_collate_refuses_mixed_rows_and_non_tensors() -> None:
    a, b = torch.zeros(3, 2), torch.zeros(2, 5)
    with pytest.raises(SchemaError, match=r"segment 1 has rows of shape \(5,\).*same row shape"):
        collate_padded([("a", a), ("b", b)])
    with pytest.raises(SchemaError, match=r"item 0 is dict; expected \(name, tensor\) pairs"):
        collate_packed([("a", {"x": 1})])
    with pytest.raises(SchemaError, match="empty"):
        collate_packed([])


# ----------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("replicas", [1, 3])
def test_sampler_covers_every_segment_once_across_ranks(
    ds: SegmentDataset, shuffle: bool, replicas: int
) -> None:
    per_rank = [
        list(SegmentSampler(ds, num_replicas=replicas, rank=r, shuffle=shuffle))
        for r in range(replicas)
    ]
    assert [len(r) for r in per_rank] == [
        len(SegmentSampler(ds, num_replicas=replicas, rank=r)) for r in range(replicas)
    ]
    _exactly_once(per_rank)
    if not shuffle:
        assert sorted(per_rank[0]) == per_rank[0]


def test_sampler_pad_and_drop_last_make_ranks_even(ds: SegmentDataset) -> None:
    padded = [list(SegmentSampler(ds, num_replicas=7, rank=r, pad=True)) for r in range(7)]
    assert {len(r) for r in padded} == {-(-N // 7)}
    assert set().union(*padded) == set(range(N))
    dropped = [list(SegmentSampler(ds, num_replicas=7, rank=r, drop_last=True)) for r in range(7)]
    assert {len(r) for r in dropped} == {N // 7}
    assert len(set().union(*dropped)) == N - N % 7


def test_same_seed_same_order_and_epochs_differ(ds: SegmentDataset) -> None:
    a = SegmentSampler(ds, seed=11)
    b = SegmentSampler(ds, seed=11)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(SegmentSampler(ds, seed=12)) != first
    x, y = BucketBatchSampler(ds, 100, seed=5), BucketBatchSampler(ds, 100, seed=5)
    assert list(x) == list(y)
    x.set_epoch(3)
    y.set_epoch(3)
    assert list(x) == list(y) != list(BucketBatchSampler(ds, 100, seed=5))


@pytest.mark.parametrize("shuffle", [False, True])
def test_bucket_batches_respect_max_frames_and_cover_every_segment(
    ds: SegmentDataset, shuffle: bool
) -> None:
    per_rank = []
    for rank in range(2):
        s = BucketBatchSampler(ds, 120, num_replicas=2, rank=rank, shuffle=shuffle, seed=2)
        batches = list(s)
        assert len(batches) == len(s)
        for batch in batches:
            assert int(ds.lengths[batch].sum()) <= 120
        per_rank.append([i for b in batches for i in b])
    _exactly_once(per_rank)


def test_bucketing_groups_similar_lengths(ds: SegmentDataset) -> None:
    def padding(buckets: int) -> float:
        s = BucketBatchSampler(ds, 200, buckets=buckets, seed=1)
        padded = sum(len(b) * int(ds.lengths[b].max()) for b in s)
        return padded / int(ds.lengths.sum())

    assert padding(16) < padding(1)
    edges = BucketBatchSampler(ds, 200, buckets=[10, 20, 30])
    for b in edges:
        assert len(set(np.searchsorted([10, 20, 30], ds.lengths[b], "right"))) == 1
    capped = BucketBatchSampler(ds, 10_000, max_batch_size=8)
    assert max(len(b) for b in capped) == 8


def test_max_frames_below_the_longest_segment_names_it(ds: SegmentDataset) -> None:
    j = int(np.argmax(ds.lengths))
    with pytest.raises(
        SamplerError,
        match=rf"max_frames=5 is smaller than the longest segment, 'utt{j:05d}' \(index {j}\) "
        rf"with {MAX_LEN} rows.*at least {MAX_LEN}",
    ):
        BucketBatchSampler(ds, 5)


def test_sampler_settings_are_checked(ds: SegmentDataset) -> None:
    with pytest.raises(SamplerError, match=r"rank=2 with num_replicas=2"):
        SegmentSampler(ds, num_replicas=2, rank=2)
    with pytest.raises(SamplerError, match=r"seed=-1 must be a non-negative int"):
        SegmentSampler(ds, seed=-1)
    with pytest.raises(SamplerError, match="exclude each other"):
        BucketBatchSampler(ds, 100, pad=True, drop_last=True)
    with pytest.raises(SamplerError, match=r"needs the segment lengths"):
        BucketBatchSampler(list(range(5)), 100)
    with pytest.raises(BigArrayError, match="must increase strictly"):
        BucketBatchSampler(ds, 100, buckets=[5, 5])


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("k", [0, 1, 13])
def test_segment_sampler_resumes_with_exactly_the_remaining_batches(
    ds: SegmentDataset, k: int
) -> None:
    sampler = SegmentSampler(ds, num_replicas=2, rank=1, seed=8)
    sampler.set_epoch(2)
    loader = DataLoader(ds, sampler=sampler, batch_size=4, collate_fn=collate_packed)
    full = [b.names for b in loader]
    it = iter(loader)
    for _ in range(k):
        next(it)
    state = sampler.state_dict(consumed=k * 4)
    fresh = SegmentSampler(ds, num_replicas=2, rank=1, seed=8)
    fresh.load_state_dict(pickle.loads(pickle.dumps(state)))
    rest = [b.names for b in DataLoader(ds, sampler=fresh, batch_size=4, collate_fn=collate_packed)]
    assert rest == full[k:]
    assert [
        b.names for b in DataLoader(ds, sampler=fresh, batch_size=4, collate_fn=collate_packed)
    ] == full


def test_bucket_sampler_resumes_after_k_batches_through_workers(ds: SegmentDataset) -> None:
    sampler = BucketBatchSampler(ds, 150, num_replicas=2, rank=0, seed=8)
    sampler.set_epoch(5)
    kw: dict[str, Any] = {
        "collate_fn": collate_padded,
        "num_workers": 2,
        "multiprocessing_context": "fork",
    }
    full = [b.names for b in DataLoader(ds, batch_sampler=sampler, **kw)]
    k = 4
    seen = []
    for step, batch in enumerate(DataLoader(ds, batch_sampler=sampler, **kw)):
        seen.append(batch.names)
        if step + 1 == k:
            # the workers have drawn batches ahead: the loop says how many it consumed
            state = sampler.state_dict(consumed=k)
            break
    resumed = BucketBatchSampler(ds, 150, num_replicas=2, rank=0, seed=8)
    resumed.load_state_dict(state)
    rest = [b.names for b in DataLoader(ds, batch_sampler=resumed, **kw)]
    assert seen + rest == full and len(rest) == len(full) - k


def test_resume_survives_set_epoch_of_the_saved_epoch(ds: SegmentDataset) -> None:
    sampler = BucketBatchSampler(ds, 150, seed=1)
    sampler.set_epoch(3)
    full = list(sampler)
    resumed = BucketBatchSampler(ds, 150, seed=1)
    resumed.load_state_dict({**sampler.state_dict(consumed=5)})
    for epoch in range(3, 5):  # the usual loop, started at the saved epoch
        resumed.set_epoch(epoch)
        got = list(resumed)
        if epoch == 3:
            assert got == full[5:]
        else:
            assert len(got) == len(resumed) and got != full


def test_load_state_dict_refuses_another_dataset_or_settings(
    ds: SegmentDataset, tmp_path: Any
) -> None:
    other_path = str(tmp_path / "other")
    _write(other_path, np.full(N, 3))
    other = SegmentDataset(other_path)
    state = SegmentSampler(ds, seed=1).state_dict()
    with pytest.raises(SamplerError, match=r"saved for another dataset"):
        SegmentSampler(other, seed=1).load_state_dict(state)
    with pytest.raises(SamplerError, match=r"saved with seed=1 but this sampler has seed=2"):
        SegmentSampler(ds, seed=2).load_state_dict(state)
    with pytest.raises(SamplerError, match=r"expected a BucketBatchSampler state_dict"):
        BucketBatchSampler(ds, 100, seed=1).load_state_dict(state)
    # a bucket sampler's batches say which dataset they were planned for
    plan = BucketBatchSampler(other, 100)
    with pytest.raises(SamplerError, match=r"sampler for another dataset"):
        next(iter(DataLoader(ds, batch_sampler=plan, collate_fn=collate_packed)))


def test_store_replaced_between_epochs_is_a_clear_error(tmp_path: Any) -> None:
    path = str(tmp_path / "changing")
    _write(path, np.full(20, 4))
    changing = SegmentDataset(path)
    sampler = SegmentSampler(changing)
    loader = DataLoader(changing, sampler=sampler, batch_size=5, collate_fn=collate_packed)
    assert sum(len(b.names) for b in loader) == 20
    # appending keeps the segments the dataset refers to: fine
    with PointerArrayWriter(path) as w:
        w.write({"late": _segment(99, 2)})
    assert sum(len(b.names) for b in loader) == 20
    _write(path, np.full(20, 5), remove_exist=True)
    with pytest.raises(
        StoreChangedError, match=r"changed after this dataset was opened.*open the dataset again"
    ):
        list(loader)


# ----------------------------------------------------------------------------- workers
def test_two_ranks_two_spawn_workers_every_segment_once(ds: SegmentDataset) -> None:
    """2 ranks x 2 spawned, persistent workers; both samplers, with and without shuffle."""
    switches = [_Switch(), _Switch()]
    loaders = [
        DataLoader(
            ds,
            batch_sampler=sw,
            num_workers=2,
            multiprocessing_context="spawn",
            persistent_workers=True,
            collate_fn=collate_padded,
        )
        for sw in switches
    ]
    plans = []
    for shuffle in (False, True):
        plans.append(
            [
                BatchSampler(
                    SegmentSampler(ds, num_replicas=2, rank=r, shuffle=shuffle, seed=9), 6, False
                )
                for r in range(2)
            ]
        )
        plans.append(
            [
                BucketBatchSampler(ds, 90, num_replicas=2, rank=r, shuffle=shuffle, seed=9)
                for r in range(2)
            ]
        )
    orders = []
    for plan in plans:
        per_rank = []
        for sw, loader, sampler in zip(switches, loaders, plan):
            sw.current = sampler
            batches = list(loader)
            if isinstance(sampler, BucketBatchSampler):
                assert all(int(b.lengths.sum()) <= 90 for b in batches)
            per_rank.append([i for b in batches for i in _names_of(b)])
        _exactly_once(per_rank)
        orders.append(per_rank)
    # through the workers, the order is the sampler's own (the same seed gives the same order)
    sampler = plans[2][0]
    assert orders[2][0] == [i for b in sampler for i in b]
    assert orders[0][0] == sorted(orders[0][0])
    for loader in loaders:
        loader._iterator._shutdown_workers()  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_persistent_workers_across_epochs(ds: SegmentDataset, method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available here")
    sampler = BucketBatchSampler(ds, 100, seed=3)
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=2,
        multiprocessing_context=method,
        persistent_workers=True,
        collate_fn=collate_packed,
    )
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got = [i for b in loader for i in _names_of(b)]
        _exactly_once([got])
        epochs.append(got)
    assert epochs[0] != epochs[1]
    loader._iterator._shutdown_workers()  # type: ignore[union-attr]


def test_iterable_two_ranks_two_workers_every_segment_once(store: Any) -> None:
    # the split over readers does not depend on the start method (the pickling test below
    # covers spawn); fork keeps this test fast
    for shuffle in (True, False):
        per_rank = []
        for rank in range(2):
            it = SegmentIterableDataset(
                store[0],
                num_replicas=2,
                rank=rank,
                shuffle=shuffle,
                seed=1,
                buffer_size=16,
                chunk_bytes=2_000,
            )
            assert len(it.chunks(4)) > 8
            loader = DataLoader(
                it,
                batch_size=5,
                num_workers=2,
                collate_fn=collate_packed,
                multiprocessing_context="fork",
            )
            per_rank.append([i for b in loader for i in _names_of(b)])
        _exactly_once(per_rank)


def test_iterable_pickles_by_reference_and_keeps_its_order(store: Any) -> None:
    it = SegmentIterableDataset(store[0], seed=3, buffer_size=8, chunk_bytes=3_000)
    it.set_epoch(2)
    raw = pickle.dumps(it)
    assert len(raw) < 4000
    assert [n for n, _ in pickle.loads(raw)] == [n for n, _ in it]


def test_iterable_same_seed_same_order_and_epochs_differ(store: Any) -> None:
    def order(epoch: int, seed: int = 1) -> list[str]:
        it = SegmentIterableDataset(store[0], seed=seed, buffer_size=32, chunk_bytes=4_000)
        it.set_epoch(epoch)
        return [n for n, _ in it]

    first = order(0)
    assert first == order(0) and sorted(first) == sorted(order(1)) and first != order(1)
    assert first != order(0, seed=2)
    assert sorted(first) != first


# ----------------------------------------------------------------------------- object storage
def _to_s3(path: str, s3_options: dict[str, Any]) -> str:
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(**s3_options)
    bucket = f"test-{os.urandom(6).hex()}"
    fs.call_s3("create_bucket", Bucket=bucket)
    fs.invalidate_cache()
    url = f"s3://{bucket}/feats.bigarray"
    fs.put(path, url, recursive=True)
    return url


@pytest.mark.s3
def test_object_storage_map_and_iterable(store: Any, s3_options: dict[str, Any]) -> None:
    url = _to_s3(store[0], s3_options)
    remote = SegmentDataset(url, storage_options=s3_options)
    assert len(remote) == N
    _check_segment(*remote[11])
    sampler = BucketBatchSampler(remote, 200, seed=4)
    loader = DataLoader(
        remote,
        batch_sampler=sampler,
        num_workers=2,
        collate_fn=collate_padded,
        multiprocessing_context="fork",
    )
    _exactly_once([[i for b in loader for i in _names_of(b)]])
    # one rank, two forked workers: the client each worker opens is its own (an fsspec
    # client inherited through fork is unusable); the rank split is tested on local stores
    it = SegmentIterableDataset(url, storage_options=s3_options, buffer_size=8)
    loader = DataLoader(
        it, batch_size=7, num_workers=2, collate_fn=collate_packed, multiprocessing_context="fork"
    )
    _exactly_once([[i for b in loader for i in _names_of(b)]])


def test_a_checkpoint_taken_right_after_set_epoch_resumes_the_whole_new_epoch(
    ds: SegmentDataset,
) -> None:
    for make in (lambda: SegmentSampler(ds, seed=3), lambda: BucketBatchSampler(ds, 4000, seed=3)):
        s = make()
        list(s)  # epoch 0 done
        s.set_epoch(1)
        state = s.state_dict()
        assert state["position"] == 0
        t = make()
        t.load_state_dict(state)
        t.set_epoch(1)
        s.set_epoch(1)
        assert [repr(x) for x in t] == [repr(x) for x in s]


def test_resuming_twice_with_enumerate_steps_replays_and_skips_nothing(ds: SegmentDataset) -> None:
    """The README's loop: ``state_dict(consumed=step + 1)`` with ``enumerate(loader)`` steps,
    stopped and resumed twice, sees every batch of the epoch exactly once."""

    def run(state: dict[str, Any] | None, stop: int) -> tuple[list[list[int]], Any]:
        b = BucketBatchSampler(ds, 4000, seed=0)
        if state is not None:
            b.load_state_dict(state)
        b.set_epoch(0)
        seen, ck = [], None
        for step, batch in enumerate(b):
            seen.append(list(batch))
            ck = b.state_dict(consumed=step + 1)
            if step + 1 == stop:
                break
        return seen, ck

    full, _ = run(None, 10**9)
    first, c1 = run(None, 3)
    second, c2 = run(c1, 2)
    third, _ = run(c2, 10**9)
    assert first + second + third == full


def test_a_state_survives_json_and_numpy_ints(ds: SegmentDataset) -> None:
    import json

    b = BucketBatchSampler(ds, 4000, buckets=[500, 1500], seed=1)
    state = json.loads(json.dumps(b.state_dict(consumed=1)))
    again = BucketBatchSampler(ds, 4000, buckets=[500, 1500], seed=1)
    again.load_state_dict(state)  # lists came back for the tuple of buckets
    s = SegmentSampler(ds, seed=1)
    state = s.state_dict(consumed=2)
    state["position"] = np.int64(state["position"])
    state["epoch"] = np.int64(state["epoch"])
    SegmentSampler(ds, seed=1).load_state_dict(state)


def test_consumed_beyond_the_epoch_is_refused(ds: SegmentDataset) -> None:
    s = SegmentSampler(ds, seed=1)
    with pytest.raises(SamplerError, match="at most"):
        s.state_dict(consumed=len(ds) + 1)


def test_a_store_replaced_with_the_same_bounds_is_detected(tmp_path: Any) -> None:
    p = str(tmp_path / "same-bounds.bigarray")

    def write(names: str, mid: float) -> None:
        with PointerArrayWriter(p, remove_exist=True) as w:
            w.write(
                {
                    names[0]: np.zeros(2000, "f4"),
                    names[1]: np.full(2000, mid, "f4"),
                    names[2]: np.zeros(2000, "f4"),
                }
            )

    write("abc", 1.0)
    ds = SegmentDataset(p)
    s = SegmentSampler(ds, shuffle=False)
    assert list(s) == [0, 1, 2]
    write("xyz", 7.0)  # same bounds, same first and last rows
    s.set_epoch(1)
    with pytest.raises(StoreChangedError, match="replaced"):
        list(s)
