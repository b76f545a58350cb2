"""The training-data face: PyTorch datasets, samplers and collation over a store's segments.

A store's segments (one utterance, one document, one time series each) are the samples.
Everything here keeps the index as numpy arrays (memory-mapped locally), never as Python
objects, so DataLoader workers do not grow through copy-on-read of lists and dicts, and every
object pickles by reference (URL, variable, the committed snapshot): a worker started by
``spawn`` or ``forkserver`` receives a few hundred bytes and reopens the store itself.

=========================  ===============================================================
:class:`SegmentDataset`    map-style dataset: ``ds[i] -> (name, tensor)`` in row order
:class:`SegmentSampler`    ``DistributedSampler``-compatible; every segment exactly once per
                           epoch across ranks; deterministic; resumes mid-epoch
:class:`BucketBatchSampler`  batches within a row (frame, token) budget, lengths bucketed
:func:`collate_padded`     ``(B, T, ...)`` padded data, ``lengths``, ``mask``
:func:`collate_packed`     ``(N, ...)`` concatenated data with ``cu_seqlens`` (varlen attention)
:class:`SegmentIterableDataset`  object storage: whole chunks by byte ranges, a shuffle
                           buffer, every segment exactly once across ranks x workers
=========================  ===============================================================

Sharding rule (all three): the epoch's order is a permutation drawn from
``numpy.random.default_rng([seed, epoch])``; rank ``r`` of ``R`` takes items ``r::R`` of it.
Nothing is padded or dropped unless asked (``pad=True`` repeats items so every rank gets the
same count, as ``DistributedSampler`` does; ``drop_last=True`` drops the tail instead).

Examples
--------
>>> from torch.utils.data import DataLoader                          # doctest: +SKIP
>>> from bigarray.torch import SegmentDataset, BucketBatchSampler, collate_padded
>>> ds = SegmentDataset("features.bigarray")                         # doctest: +SKIP
>>> batches = BucketBatchSampler(ds, max_frames=16_000, seed=0)      # doctest: +SKIP
>>> loader = DataLoader(ds, batch_sampler=batches, num_workers=2,
...                     collate_fn=collate_padded)                   # doctest: +SKIP
>>> for epoch in range(10):                                          # doctest: +SKIP
...     batches.set_epoch(epoch)
...     for batch in loader:
...         batch.data, batch.lengths, batch.mask
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "bigarray.torch needs PyTorch: pip install 'bigarray[torch]' (or install torch "
        "for your platform from https://pytorch.org first)"
    ) from exc

from .core.filesystem import is_local
from .core.store import StoreReader, open_cached
from .errors import SamplerError, SchemaError, SegmentIndexError, StoreChangedError
from .lazy import LazyArray, open_array

__all__ = [
    "BucketBatchSampler",
    "PackedBatch",
    "PaddedBatch",
    "SegmentBatch",
    "SegmentDataset",
    "SegmentIterableDataset",
    "SegmentSampler",
    "collate_packed",
    "collate_padded",
]

#: Indices go to Python in blocks of this many (never the whole epoch as a list).
_BLOCK = 4096


# ----------------------------------------------------------------------------- helpers
def _dist_defaults(num_replicas: int | None, rank: int | None, who: str) -> tuple[int, int]:
    """``num_replicas``/``rank`` given, or taken from ``torch.distributed`` when it is
    initialised (else 1 and 0), then checked."""
    if num_replicas is None or rank is None:
        dist = torch.distributed
        up = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if up else 1
        if rank is None:
            rank = dist.get_rank() if up else 0
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)):
        raise SamplerError(f"{who}: num_replicas={num_replicas!r} must be an int >= 1")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise SamplerError(f"{who}: rank={rank!r} must be an int in [0, num_replicas)")
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise SamplerError(
            f"{who}: rank={rank!r} with num_replicas={num_replicas!r}; expected "
            "num_replicas >= 1 and 0 <= rank < num_replicas"
        )
    return int(num_replicas), int(rank)


def _check_seed(seed: Any, who: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SamplerError(f"{who}: seed={seed!r} must be a non-negative int")
    return int(seed)


def _permutation(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64, copy=False)


def _shard(order: np.ndarray, replicas: int, rank: int, drop_last: bool, pad: bool) -> np.ndarray:
    """Items ``rank::replicas`` of ``order``, after dropping or padding its tail if asked."""
    n = len(order)
    if drop_last:
        order = order[: n - n % replicas]
    elif pad and n % replicas and n:
        extra = replicas - n % replicas
        order = np.concatenate([order, np.resize(order, extra)])
    return order[rank::replicas]


def _torch_dtype(dtype: np.dtype, where: str) -> torch.dtype:
    try:
        return torch.from_numpy(np.empty(0, dtype)).dtype
    except TypeError:
        raise SchemaError(
            f"{where}: torch has no tensor type for numpy {dtype}; pass a transform that "
            "casts each segment (e.g. transform=lambda t: t.to(torch.int32)) or store a "
            "dtype torch supports"
        ) from None


def _in_worker() -> bool:
    return get_worker_info() is not None


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A new tensor; inside a DataLoader worker, in shared memory from the start, so sending
    it to the main process costs no copy (what ``default_collate`` does)."""
    if _in_worker():
        try:
            base = torch.empty(0, dtype=dtype)
            storage = base._typed_storage()._new_shared(math.prod(shape), device="cpu")
            return base.new(storage).view(shape)
        except (AttributeError, RuntimeError, TypeError):  # an older or newer private API
            pass
    return torch.empty(shape, dtype=dtype)


# ----------------------------------------------------------------------------- dataset
class SegmentBatch(Sequence[tuple[str, torch.Tensor]]):
    """The segments of one batch, as :meth:`SegmentDataset.__getitems__` returns them.

    A sequence of ``(name, tensor)`` like a list of ``ds[i]`` (so any ``collate_fn``
    works), that also keeps the rows as read-only numpy views, from which
    :func:`collate_padded` and :func:`collate_packed` copy each byte once, straight into the
    (shared-memory) batch tensor.
    """

    __slots__ = ("arrays", "indices", "names")

    def __init__(self, names: list[str], arrays: list[np.ndarray], indices: np.ndarray) -> None:
        self.names = names
        self.arrays = arrays
        self.indices = indices

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        return (self.names[k], torch.from_numpy(np.array(self.arrays[k])))

    def __repr__(self) -> str:
        return f"<SegmentBatch of {len(self)} segments>"


class _BatchIndices(list[int]):
    """A batch of indices from :class:`BucketBatchSampler` that says which dataset it was
    planned for, so :meth:`SegmentDataset.__getitems__` can refuse another one."""

    __slots__ = ("token",)

    def __init__(self, items: Any, token: int) -> None:
        super().__init__(items)
        self.token = token

    def __reduce__(self) -> Any:
        return (_BatchIndices, (list(self), self.token))


class SegmentDataset(Dataset[tuple[str, Any]]):
    """The segments of a store as a map-style ``torch.utils.data.Dataset``.

    ``ds[i]`` is ``(name, tensor)`` for the ``i``-th segment in row order; ``len(ds)`` is the
    number of segments. The dataset reads the committed snapshot it was opened at (segments
    appended later are not seen; open it again for those).

    Parameters
    ----------
    path_or_url
        A store directory (memory-mapped) or an fsspec URL (``s3://...``: byte ranges).
    variable
        Which variable (default ``"data"`` or the only one).
    storage_options
        fsspec options for a URL.
    transform
        Called on each segment's tensor; the sample is ``(name, transform(tensor))``.
        The fast paths of :func:`collate_padded` and :func:`collate_packed` apply only
        without a transform.

    Attributes
    ----------
    names : numpy.ndarray
        Segment names (``str`` dtype), built on demand (not kept: it costs memory).
    lengths : numpy.ndarray
        Rows per segment, int64.
    handle : bigarray.lazy.LazyArray
        The array-like handle the dataset reads.

    Raises
    ------
    SchemaError
        The store has no segment index (it was written without names).

    Notes
    -----
    Pickles by reference (the handle, the segment count and a CRC of the segment bounds):
    DataLoader workers under fork, spawn and forkserver reopen the store lazily and check
    that it still holds the same segments (:class:`~bigarray.errors.StoreChangedError`
    otherwise). The index is never turned into Python objects; ``ds[i]`` decodes one name.

    Examples
    --------
    >>> ds = SegmentDataset("features.bigarray")       # doctest: +SKIP
    >>> name, x = ds[0]                                 # doctest: +SKIP
    """

    _bounds: np.ndarray | None
    _lengths: np.ndarray | None
    _remote: StoreReader | None
    _remote_pid: int
    _view: np.ndarray | None
    _view_pid: int

    def __init__(
        self,
        path_or_url: str | os.PathLike[str],
        variable: str | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        handle = open_array(path_or_url, variable, storage_options)
        bounds = handle.segment_bounds()
        if bounds is None:
            raise SchemaError(
                f"{handle.url!r} has no segment index (it was written without names), so it has "
                "no segments to sample; write it with named segments (PointerArrayWriter, "
                "to_bigarray(..., segments=...)), or read row ranges with bigarray.open()"
            )
        self.handle: LazyArray = handle
        self.transform = transform
        self._count = len(bounds)
        self._crc = _bounds_crc(bounds)
        self._ident = _local_identity(handle.url)
        self._init_local()
        self._bounds = bounds
        _torch_dtype(handle.dtype, repr(self))

    def _init_local(self) -> None:
        """Per-process state, rebuilt after unpickling."""
        self._bounds = None
        self._lengths = None
        self._remote = None
        self._remote_pid = -1
        self._view = None
        self._view_pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "transform": self.transform,
            "_count": self._count,
            "_crc": self._crc,
            "_ident": self._ident,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_local()

    # ------------------------------------------------------------------ metadata
    @property
    def url(self) -> str:
        """Where the store lives (an absolute path, or the URL)."""
        return self.handle.url

    @property
    def token(self) -> int:
        """A number that identifies this dataset's segments (URL, variable, segment bounds):
        samplers record it and refuse a state or a dataset with another."""
        key = f"{self.url}\0{self.handle.variable}\0{self._count}\0{self._crc}"
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))

    @property
    def bounds(self) -> np.ndarray:
        """``(n, 2)`` int64 ``[start, stop)`` rows of every segment (read-only, mapped)."""
        if self._bounds is None:
            b = self._segment_arrays().bounds
            if b is None or len(b) < self._count or _bounds_crc(b[: self._count]) != self._crc:
                raise StoreChangedError(
                    f"the store {self.url!r} changed after this dataset was opened: its segment "
                    f"index no longer starts with the {self._count:,} segments the dataset (and "
                    "any sampler built on it) refers to. Open the dataset again and build new "
                    "samplers."
                )
            self._bounds = b[: self._count]
        return self._bounds

    @property
    def lengths(self) -> np.ndarray:
        """Rows of every segment, int64 (row order)."""
        if self._lengths is None:
            b = self.bounds
            self._lengths = b[:, 1] - b[:, 0]
        return self._lengths

    @property
    def names(self) -> np.ndarray:
        """Every segment name as a numpy ``str`` array, decoded vectorised (not cached)."""
        arrays = self._segment_arrays()
        off = np.asarray(arrays.name_offsets[: self._count + 1], np.int64)
        raw = np.asarray(arrays.names, np.uint8)
        sizes = np.diff(off)
        width = int(sizes.max(initial=0))
        if width == 0:
            return np.full(self._count, "", dtype="U1")
        grid = np.zeros((self._count, width), np.uint8)
        rows = np.repeat(np.arange(self._count), sizes)
        cols = np.arange(int(off[-1]) - int(off[0])) - np.repeat(off[:-1] - off[0], sizes)
        grid[rows, cols] = raw[int(off[0]) : int(off[-1])]
        fixed = grid.view(f"S{width}").reshape(-1)
        if int(raw[int(off[0]) : int(off[-1])].max(initial=0)) < 128:
            return fixed.astype(f"U{width}")
        return np.char.decode(fixed, "utf-8", "surrogatepass")

    def name(self, i: int) -> str:
        """Name of segment ``i`` (row order)."""
        return str(self._segment_arrays().name(self._index(i)))

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"<bigarray.torch.SegmentDataset {self.url!r} variable={self.handle.variable!r} "
            f"{self._count:,} segments, rows of {self.handle.shape[1:]} {self.handle.dtype}>"
        )

    # ------------------------------------------------------------------ reading
    def _index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise SegmentIndexError(
                f"{type(self).__name__} takes an int index (a position in row order), got "
                f"{index!r} of type {type(index).__name__}; for a name use ds.handle[name]"
            )
        i = int(index)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise SegmentIndexError(
                f"segment index {int(index)} is out of range for {self!r}: expected "
                f"0 <= i < {self._count:,} (a sampler built for a bigger dataset gives such "
                "indices; build the sampler on this dataset)"
            )
        return i

    def _rows(self, i: int) -> np.ndarray:
        b = self.bounds
        return self.read_rows(int(b[i, 0]), int(b[i, 1]))

    def __getitem__(self, index: Any) -> tuple[str, Any]:
        i = self._index(index)
        t = torch.from_numpy(np.array(self._rows(i)))
        return self.name(i), (t if self.transform is None else self.transform(t))

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """A batch at once (``DataLoader`` calls this): for remote stores all byte ranges
        go out together; without a transform the result is a :class:`SegmentBatch` that the
        collate functions copy from once."""
        token = getattr(indices, "token", None)
        if token is not None and token != self.token:
            raise SamplerError(
                f"a batch planned by a sampler for another dataset reached {self!r}; build the "
                "sampler on the dataset the DataLoader reads (BucketBatchSampler(ds, ...))"
            )
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":  # the per-item check says what is wrong
            idx = np.fromiter((self._index(i) for i in indices), np.int64, len(indices))
        idx = idx.astype(np.int64, copy=False)
        idx = np.where(idx < 0, idx + self._count, idx)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self._count):
            bad = [i for i in indices if not -self._count <= int(i) < self._count]
            self._index(bad[0])
        b = self.bounds[idx]
        if is_local(self.url):
            view = self._rows_view()
            if view is not None:
                arrays = [view[s:e] for s, e in b.tolist()]
            else:
                arrays = [self.handle.read_rows(s, e) for s, e in b.tolist()]
        else:
            arrays = self._remote_store().read_ranges(self.handle.variable, b.tolist())
        seg = self._segment_arrays()
        names = [seg.name(int(i)) for i in idx]
        if self.transform is None:
            return SegmentBatch(names, arrays, idx)
        return [(n, self.transform(torch.from_numpy(np.array(a)))) for n, a in zip(names, arrays)]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of the variable as numpy (a read-only view of the memory map
        for a local store; one concurrent byte-range read for a remote one)."""
        if is_local(self.url):
            view = self._rows_view()
            if view is not None:
                return view[max(0, start) : max(0, stop)]
            return self.handle.read_rows(start, stop)
        return self._remote_store().read_rows(self.handle.variable, start, stop)

    def _rows_view(self) -> np.ndarray | None:
        """This process's read-only view of every row of the snapshot when one local data
        file holds them (slicing it is the cheapest read there is), else ``None``."""
        if self._view_pid != os.getpid():
            self._view = None
            self._view_pid = os.getpid()
            if is_local(self.url):
                from .core.store import open_local

                # open the snapshot through the handle first: it checks, in this process,
                # that the store was not replaced since the dataset was made
                self.handle.read_rows(0, 0)
                with open_local(self.url, with_index=False) as store:
                    var = store.variable(self.handle.variable)
                    if len(var.shards) == 1 and var.shards[0].start == 0:
                        (data,) = store.shard_views(var)
                        self._view = np.asarray(data)[: len(self.handle)]
        return self._view

    def _segment_arrays(self) -> Any:
        """The index arrays (names, offsets, bounds) as this process reads them."""
        if is_local(self.url):
            return self.handle.indices.arrays
        return self._remote_store().index.arrays

    def _remote_store(self) -> Any:
        """This process's byte-range reader (rows below the snapshot never change), shared
        through the per-process cache of open stores. Per process: an fsspec client
        inherited through fork is not usable in the child."""
        if self._remote is None or self._remote_pid != os.getpid():
            store = open_cached(
                self.url, self.handle.storage_options or None, commit=self.handle.commit
            )
            if store.manifest.generation < self.handle.generation:
                raise StoreChangedError(
                    f"the store {self.url!r} changed after this dataset was opened: its "
                    f"generation went back from {self.handle.generation} to "
                    f"{store.manifest.generation} (it was replaced). Open the dataset again."
                )
            self._remote = store
            self._remote_pid = os.getpid()
            self._bounds = None
            self._lengths = None
        return self._remote

    # ------------------------------------------------------------------ checks
    def check_unchanged(self) -> None:
        """Raise :class:`~bigarray.errors.StoreChangedError` if the store no longer holds the
        segments this dataset was opened on (it was replaced or rewritten). Appends are fine.
        The samplers call this at the start of every epoch."""
        try:
            fresh = open_array(self.url, self.handle.variable, self.handle.storage_options or None)
        except Exception as exc:
            raise StoreChangedError(
                f"the store {self.url!r} changed after this dataset was opened and cannot be "
                f"opened now ({type(exc).__name__}: {exc}). Restore it, or open the dataset again."
            ) from exc
        h = self.handle
        why = ""
        ident = self.__dict__.get("_ident")
        if ident is not None and _local_identity(self.url) != ident:
            why = "another store now stands at its path (it was replaced)"
        elif fresh.generation < h.generation:
            why = f"its generation went back from {h.generation} to {fresh.generation}"
        elif fresh.dtype != h.dtype or fresh.shape[1:] != h.shape[1:]:
            why = f"it now holds {fresh.dtype} rows of shape {fresh.shape[1:]}"
        elif len(fresh) < len(h):
            why = f"it now holds {len(fresh):,} rows, fewer than the {len(h):,} read before"
        else:
            b = fresh.segment_bounds()
            if b is None or len(b) < self._count or _bounds_crc(b[: self._count]) != self._crc:
                why = "its segment index no longer starts with the segments read before"
            elif is_local(self.url) and len(h):
                k = max(1, 4096 // max(1, h.dtype.itemsize * math.prod(h.shape[1:])))
                for a, z in ((0, min(k, len(h))), (max(0, len(h) - k), len(h))):
                    if not np.array_equal(fresh.read_rows(a, z), h.read_rows(a, z)):
                        why = f"rows [{a}, {z}) hold other bytes now (it was replaced)"
                        break
        if why:
            raise StoreChangedError(
                f"the store {self.url!r} changed after this dataset was opened: {why}. The "
                "segments the samplers refer to are gone; open the dataset again and build new "
                "samplers."
            )


def _local_identity(url: str) -> tuple[int, int] | None:
    """(device, inode) of a local store's directory: a store replaced at the same path
    (``remove_exist``, a copy switched into place) is a new directory; appends are not."""
    if not is_local(url):
        return None
    try:
        st = os.stat(url)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _bounds_crc(bounds: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(bounds, "<i8").view(np.uint8).data)


def _dataset_info(dataset: Any, who: str) -> tuple[int, int, Any]:
    """(length, token, the dataset if it can check itself) of a dataset given to a sampler."""
    if isinstance(dataset, SegmentDataset):
        return len(dataset), dataset.token, dataset
    try:
        n = len(dataset)
    except TypeError:
        raise SamplerError(
            f"{who} takes a SegmentDataset (or any sized dataset), got {type(dataset).__name__}"
        ) from None
    return int(n), zlib.crc32(f"len={n}".encode()), None


# ----------------------------------------------------------------------------- samplers
class _ResumableSampler:
    """Shared epoch, resume and state logic of the two samplers."""

    _kind = ""
    _config: tuple[str, ...] = ()

    def __init__(self, dataset: Any, num_replicas: Any, rank: Any, seed: Any) -> None:
        who = type(self).__name__
        self._n, self._token, self._checkable = _dataset_info(dataset, who)
        self.num_replicas, self.rank = _dist_defaults(num_replicas, rank, who)
        self.seed = _check_seed(seed, who)
        self.epoch = 0
        self._resume: int | None = None
        self._yielded = 0
        self._pass_start = 0  # where the current iteration began (a resume point, or 0)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on (call it every epoch, as
        with ``DistributedSampler``: without it every epoch has the same order). After
        :meth:`load_state_dict`, setting the saved epoch keeps the resume position."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise SamplerError(f"set_epoch({epoch!r}): the epoch must be a non-negative int")
        if int(epoch) != self.epoch:  # a loop that resumes calls set_epoch(resumed epoch) first
            # a new epoch starts at its first item: a checkpoint taken now says position 0
            self._resume = None
            self._yielded = 0
            self._pass_start = 0
        self.epoch = int(epoch)

    def _items(self) -> Any:
        """This rank's items of the current epoch (numpy)."""
        raise NotImplementedError

    def _start(self) -> int:
        if self._checkable is not None:
            self._checkable.check_unchanged()
        start = self._resume or 0
        self._resume = None
        self._yielded = start
        self._pass_start = start
        return start

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The position in the current epoch, to resume from with :meth:`load_state_dict`.

        Parameters
        ----------
        consumed
            How many items the training loop has used since this iteration of the sampler
            began (indices for :class:`SegmentSampler`, batches for
            :class:`BucketBatchSampler`); after a resume, counted from the resume point, so
            ``enumerate(loader)`` steps can be passed as they are. By default, how many this
            sampler has yielded; a ``DataLoader`` with workers draws a few batches ahead
            (``prefetch_factor``), so pass what the loop consumed, e.g.
            ``consumed=steps * batch_size``.
        """
        if consumed is None:
            pos = self._yielded
        else:
            if isinstance(consumed, bool) or not isinstance(consumed, (int, np.integer)):
                raise SamplerError(f"state_dict(consumed={consumed!r}): expected an int >= 0")
            if consumed < 0:
                raise SamplerError(f"state_dict(consumed={consumed!r}): expected >= 0")
            pos = self._pass_start + int(consumed)
            total = len(self._items())
            if pos > total:
                raise SamplerError(
                    f"state_dict(consumed={consumed!r}): this iteration began at item "
                    f"{self._pass_start:,} of {total:,} items this epoch, so at most "
                    f"{total - self._pass_start:,} can have been consumed"
                )
        state = {"kind": self._kind, "dataset": self._token, "num_segments": self._n}
        state.update({k: getattr(self, k) for k in self._config})
        state.update({"epoch": self.epoch, "position": pos})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next iteration yields exactly the items of ``state``'s epoch not yet
        consumed, then later epochs as usual.

        Raises
        ------
        SamplerError
            The state was saved by another kind of sampler, for another dataset, or with
            other settings (rank, replicas, seed, ...).
        """
        who = type(self).__name__
        if not isinstance(state, Mapping) or state.get("kind") != self._kind:
            got = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
            raise SamplerError(f"{who}.load_state_dict: expected a {who} state_dict, got {got!r}")
        if state.get("dataset") != self._token or state.get("num_segments") != self._n:
            raise SamplerError(
                f"{who}.load_state_dict: the state was saved for another dataset "
                f"({state.get('num_segments')!r} segments, token {state.get('dataset')!r}) than "
                f"this sampler's ({self._n:,} segments, token {self._token}); resume with the "
                "same store"
            )
        for key in self._config:
            if _plain(state.get(key)) != _plain(getattr(self, key)):
                raise SamplerError(
                    f"{who}.load_state_dict: the state was saved with {key}={state.get(key)!r} "
                    f"but this sampler has {key}={getattr(self, key)!r}; build the sampler with "
                    "the same settings to resume"
                )
        epoch, pos = _plain(state.get("epoch")), _plain(state.get("position"))
        if not isinstance(epoch, int) or not isinstance(pos, int) or epoch < 0 or pos < 0:
            raise SamplerError(f"{who}.load_state_dict: bad epoch/position in {dict(state)!r}")
        self.epoch = epoch
        self._resume = pos
        self._yielded = pos
        self._pass_start = pos


def _plain(value: Any) -> Any:
    """A state value as JSON or ``torch.save`` may give it back: lists as tuples, numpy
    integers as ints (so a state survives a round trip through either)."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.integer) and not isinstance(value, bool):
        return int(value)
    return value


class SegmentSampler(_ResumableSampler, Sampler[int]):
    """Indices of a :class:`SegmentDataset` for one rank, ``DistributedSampler``-compatible.

    Across all ranks every segment appears exactly once per epoch (ranks get at most one
    index more than another); ``pad=True`` repeats indices so that every rank gets the same
    count, ``drop_last=True`` drops the tail instead.

    Parameters
    ----------
    dataset
        The dataset (a :class:`SegmentDataset`, or any sized dataset).
    num_replicas, rank
        Default: from ``torch.distributed`` when initialised, else 1 and 0.
    shuffle
        A new permutation every epoch (``numpy.random.default_rng([seed, epoch])``).
    seed
        Same seed, same epoch: same order, on every machine.
    drop_last, pad
        Make ranks even by dropping or by repeating indices (default: neither).

    Examples
    --------
    >>> s = SegmentSampler(ds, num_replicas=2, rank=0, seed=1)      # doctest: +SKIP
    >>> loader = DataLoader(ds, sampler=s, batch_size=32, collate_fn=collate_padded)
    """

    _kind = "bigarray.torch.SegmentSampler"
    _config = ("num_replicas", "rank", "shuffle", "seed", "drop_last", "pad")

    def __init__(
        self,
        dataset: Any,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pad: bool = False,
    ) -> None:
        _ResumableSampler.__init__(self, dataset, num_replicas, rank, seed)
        if drop_last and pad:
            raise SamplerError("SegmentSampler: drop_last=True and pad=True exclude each other")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.pad = bool(pad)

    def _items(self) -> np.ndarray:
        order = _permutation(self._n, self.seed, self.epoch, self.shuffle)
        return _shard(order, self.num_replicas, self.rank, self.drop_last, self.pad)

    def __iter__(self) -> Iterator[int]:
        start = self._start()
        mine = self._items()
        for a in range(start, len(mine), _BLOCK):
            for i in mine[a : a + _BLOCK].tolist():
                self._yielded += 1
                yield i

    def __len__(self) -> int:
        n, r = self._n, self.num_replicas
        if self.drop_last:
            return n // r
        if self.pad:
            return -(-n // r)
        return n // r + (self.rank < n % r)

    @property
    def num_samples(self) -> int:
        """Indices this rank yields per epoch (``DistributedSampler``'s name for ``len``)."""
        return len(self)


class BucketBatchSampler(_ResumableSampler, Sampler[list[int]]):
    """Batches of segment indices whose rows add up to at most ``max_frames``, lengths grouped.

    Each epoch: the segments are put in length buckets (quantiles of the lengths), each
    bucket is taken in the epoch's shuffled order and cut greedily into batches within the
    budget, then the batches of all buckets are shuffled together, and rank ``r`` of ``R``
    takes batches ``r::R``. Every segment is in exactly one batch of one rank per epoch
    (ranks get at most one batch more than another; ``pad``/``drop_last`` make them even).

    Parameters
    ----------
    dataset
        A :class:`SegmentDataset` (or anything with ``lengths`` and ``len``).
    max_frames
        Most rows (frames, tokens) in one batch, counting every segment's full length.
    num_replicas, rank, shuffle, seed, drop_last, pad
        As for :class:`SegmentSampler` (here the items are batches).
    buckets
        Number of length buckets (default 16; 1 disables bucketing), or a sorted sequence
        of length boundaries (a segment of ``L`` rows goes to bucket
        ``searchsorted(boundaries, L, "right")``).
    max_batch_size
        Also cap the number of segments per batch (default: no cap).

    Raises
    ------
    SamplerError
        ``max_frames`` is smaller than the longest segment (the message names it), or a
        setting is invalid.

    Examples
    --------
    >>> b = BucketBatchSampler(ds, max_frames=16_000)                  # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_sampler=b, collate_fn=collate_packed)
    """

    _kind = "bigarray.torch.BucketBatchSampler"
    _config = (
        "max_frames",
        "num_replicas",
        "rank",
        "shuffle",
        "seed",
        "drop_last",
        "pad",
        "buckets",
        "max_batch_size",
    )

    def __init__(
        self,
        dataset: Any,
        max_frames: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buckets: int | Sequence[int] = 16,
        drop_last: bool = False,
        pad: bool = False,
        max_batch_size: int | None = None,
    ) -> None:
        _ResumableSampler.__init__(self, dataset, num_replicas, rank, seed)
        who = "BucketBatchSampler"
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            raise SamplerError(
                f"{who} needs the segment lengths: give it a SegmentDataset (or a dataset "
                f"with a .lengths array), not {type(dataset).__name__}"
            )
        self._lengths = np.asarray(lengths, np.int64).reshape(-1)
        if len(self._lengths) != self._n:
            raise SamplerError(
                f"{who}: dataset.lengths has {len(self._lengths)} values for {self._n} segments"
            )
        if (
            isinstance(max_frames, bool)
            or not isinstance(max_frames, (int, np.integer))
            or max_frames < 1
        ):
            raise SamplerError(
                f"{who}: max_frames={max_frames!r} must be an int >= 1 (rows per batch)"
            )
        if self._n:
            j = int(np.argmax(self._lengths))
            longest = int(self._lengths[j])
            if longest > max_frames:
                name = dataset.name(j) if isinstance(dataset, SegmentDataset) else f"#{j}"
                raise SamplerError(
                    f"{who}: max_frames={int(max_frames):,} is smaller than the longest segment, "
                    f"{name!r} (index {j}) with {longest:,} rows, which fits in no batch; raise "
                    f"max_frames to at least {longest:,}, or leave such segments out (a Subset)"
                )
        if max_batch_size is not None and (
            isinstance(max_batch_size, bool)
            or not isinstance(max_batch_size, (int, np.integer))
            or max_batch_size < 1
        ):
            raise SamplerError(
                f"{who}: max_batch_size={max_batch_size!r} must be None or an int >= 1"
            )
        if drop_last and pad:
            raise SamplerError(f"{who}: drop_last=True and pad=True exclude each other")
        self.max_frames = int(max_frames)
        self.max_batch_size = None if max_batch_size is None else int(max_batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.pad = bool(pad)
        self.buckets: int | tuple[int, ...]
        if isinstance(buckets, (int, np.integer)) and not isinstance(buckets, bool):
            if buckets < 1:
                raise SamplerError(f"{who}: buckets={buckets!r} must be >= 1")
            self.buckets = int(buckets)
            qs = np.linspace(0, 1, self.buckets + 1)[1:-1]
            cut = np.quantile(self._lengths, qs) if self._n else np.zeros(0)
            self._edges = np.unique(np.ceil(cut).astype(np.int64))
        else:
            try:
                edges = np.asarray(buckets, np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise SamplerError(
                    f"{who}: buckets={buckets!r}: expected an int or a sequence of ints"
                ) from None
            if np.any(np.diff(edges) <= 0):
                raise SamplerError(f"{who}: bucket boundaries {buckets!r} must increase strictly")
            self.buckets = tuple(int(e) for e in edges)
            self._edges = edges
        self._cache: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    def _epoch_batches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment order, batch offsets, batch order) of the whole epoch, before sharding
        over ranks: batch ``k`` is ``order[offsets[k]:offsets[k + 1]]``."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        order = _permutation(self._n, self.seed, self.epoch, self.shuffle)
        bucket = np.searchsorted(self._edges, self._lengths[order], "right")
        order = order[np.argsort(bucket, kind="stable")]  # buckets in turn, shuffled within
        nb = len(self._edges) + 1
        ends = np.searchsorted(np.sort(bucket, kind="stable"), np.arange(1, nb + 1), "left")
        starts = np.concatenate([[0], ends[:-1]])
        cuts: list[int] = [0]
        csum = np.concatenate([[0], np.cumsum(self._lengths[order])])
        cap = self.max_batch_size or self._n or 1
        for a, z in zip(starts.tolist(), ends.tolist()):
            p = a
            while p < z:  # one searchsorted per batch: greedy, no loop over segments
                q = int(np.searchsorted(csum, csum[p] + self.max_frames, "right")) - 1
                q = max(p + 1, min(q, z, p + cap))
                cuts.append(q)
                p = q
        offsets = np.asarray(cuts, np.int64)
        batches = np.arange(len(offsets) - 1, dtype=np.int64)
        if self.shuffle:  # mix the buckets: shuffle the batch order
            batches = np.random.default_rng([self.seed, self.epoch, 1]).permutation(batches)
        self._cache = (self.epoch, (order, offsets, batches))
        return order, offsets, batches

    def _items(self) -> np.ndarray:
        _, _, batches = self._epoch_batches()
        return _shard(batches, self.num_replicas, self.rank, self.drop_last, self.pad)

    def __iter__(self) -> Iterator[list[int]]:
        start = self._start()
        order, offsets, _ = self._epoch_batches()
        mine = self._items()
        token = self._token
        for k in mine[start:].tolist():
            self._yielded += 1
            yield _BatchIndices(order[offsets[k] : offsets[k + 1]].tolist(), token)

    def __len__(self) -> int:
        return len(self._items())


# ----------------------------------------------------------------------------- collation
class PaddedBatch(NamedTuple):
    """A padded batch (:func:`collate_padded`).

    Attributes
    ----------
    names : list of str
    data : torch.Tensor
        ``(B, T, *row_shape)``, ``T`` the longest segment; rows past a segment's length hold
        the padding value.
    lengths : torch.Tensor
        int64 ``(B,)`` rows of each segment.
    mask : torch.Tensor
        bool ``(B, T)``, True on real rows.
    """

    names: list[str]
    data: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor

    def segments(self) -> list[torch.Tensor]:
        """The segments again, unpadded (views of ``data``)."""
        return [self.data[k, :n] for k, n in enumerate(self.lengths.tolist())]


class PackedBatch(NamedTuple):
    """Segments concatenated along rows (:func:`collate_packed`), as variable-length
    attention kernels (``flash_attn_varlen_func``, ``torch.nested``) take them.

    Attributes
    ----------
    names : list of str
    data : torch.Tensor
        ``(N, *row_shape)``, N the total rows.
    lengths : torch.Tensor
        int64 ``(B,)``.
    cu_seqlens : torch.Tensor
        int32 ``(B + 1,)`` offsets: segment ``k`` is ``data[cu_seqlens[k]:cu_seqlens[k+1]]``.
    max_seqlen : int
        The longest segment's rows.
    """

    names: list[str]
    data: torch.Tensor
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    def segments(self) -> list[torch.Tensor]:
        """The segments again (views of ``data``)."""
        return list(torch.split(self.data, self.lengths.tolist()))


def _unzip(batch: Any, who: str) -> tuple[list[str], list[Any]]:
    if isinstance(batch, SegmentBatch):
        return list(batch.names), list(batch.arrays)
    names, arrays = [], []
    for k, item in enumerate(batch):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, x = item
        else:
            name, x = str(k), item
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.asarray(x))
        if not isinstance(x, torch.Tensor):
            raise SchemaError(
                f"{who}: item {k} is {type(x).__name__}; expected (name, tensor) pairs as "
                "SegmentDataset yields, or tensors (a transform must return a tensor for "
                "this collate function)"
            )
        if x.ndim < 1:
            raise SchemaError(f"{who}: item {k} is a 0-d tensor; segments have rows (ndim >= 1)")
        names.append(name)
        arrays.append(x)
    return names, arrays


def _row_layout(arrays: list[Any], who: str) -> tuple[tuple[int, ...], Any]:
    first = arrays[0]
    rest = tuple(first.shape[1:])
    dtype = first.dtype
    for k, a in enumerate(arrays):
        if tuple(a.shape[1:]) != rest or a.dtype != dtype:
            raise SchemaError(
                f"{who}: segment {k} has rows of shape {tuple(a.shape[1:])} {a.dtype}, the first "
                f"has {rest} {dtype}; every segment of a batch needs the same row shape and dtype"
            )
    tdtype = _torch_dtype(dtype, who) if isinstance(dtype, np.dtype) else dtype
    return rest, tdtype


def _copy_rows(dst: torch.Tensor, src: Any) -> None:
    if isinstance(src, np.ndarray):
        dst.numpy()[...] = src
    else:
        dst.copy_(src)


def collate_padded(batch: Any, *, padding_value: float = 0) -> PaddedBatch:
    """Pad a batch of segments to the longest one.

    Parameters
    ----------
    batch
        What the DataLoader fetched: a :class:`SegmentBatch`, or a list of ``(name, tensor)``
        (or plain tensors / arrays) with the same row shape and dtype.
    padding_value
        Value of the rows past each segment's end.

    Returns
    -------
    PaddedBatch
        ``names``, ``data`` ``(B, T, ...)``, ``lengths`` int64 ``(B,)``, ``mask`` bool ``(B, T)``.

    Notes
    -----
    Inside a worker the batch tensor is allocated in shared memory and every row is copied
    once, from the memory map straight into it. Use
    ``functools.partial(collate_padded, padding_value=...)`` for another value.
    """
    who = "collate_padded"
    names, arrays = _unzip(batch, who)
    if not arrays:
        raise SchemaError(f"{who}: the batch is empty")
    rest, tdtype = _row_layout(arrays, who)
    lengths = torch.tensor([int(a.shape[0]) for a in arrays], dtype=torch.int64)
    t_max = int(lengths.max())
    out = _empty((len(arrays), t_max, *rest), tdtype)
    if all(isinstance(a, np.ndarray) for a in arrays):  # the SegmentBatch path: numpy copies
        flat = out.numpy()
        for k, a in enumerate(arrays):
            n = len(a)
            flat[k, :n] = a
            flat[k, n:] = padding_value
    else:
        for k, a in enumerate(arrays):
            n = int(a.shape[0])
            _copy_rows(out[k, :n], a)
            if n < t_max:
                out[k, n:] = padding_value
    mask = torch.arange(t_max)[None, :] < lengths[:, None]
    return PaddedBatch(names, out, lengths, mask)


def collate_packed(batch: Any) -> PackedBatch:
    """Concatenate a batch of segments along rows, with ``cu_seqlens`` offsets.

    Parameters
    ----------
    batch
        A :class:`SegmentBatch`, or a list of ``(name, tensor)`` (or plain tensors/arrays).

    Returns
    -------
    PackedBatch
        ``names``, ``data`` ``(N, ...)``, ``lengths`` int64, ``cu_seqlens`` int32 ``(B+1,)``,
        ``max_seqlen``.
    """
    who = "collate_packed"
    names, arrays = _unzip(batch, who)
    if not arrays:
        raise SchemaError(f"{who}: the batch is empty")
    rest, tdtype = _row_layout(arrays, who)
    sizes = [int(a.shape[0]) for a in arrays]
    lengths = torch.tensor(sizes, dtype=torch.int64)
    cu = torch.zeros(len(sizes) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0).to(torch.int32)
    out = _empty((sum(sizes), *rest), tdtype)
    if all(isinstance(a, np.ndarray) for a in arrays):
        flat = out.numpy()
        if len(arrays):
            np.concatenate(arrays, out=flat)
    else:
        pos = 0
        for a, n in zip(arrays, sizes):
            _copy_rows(out[pos : pos + n], a)
            pos += n
    return PackedBatch(names, out, lengths, cu, max(sizes))


# ----------------------------------------------------------------------------- iterable
class SegmentIterableDataset(IterableDataset[tuple[str, Any]]):
    """The segments of a store as an ``IterableDataset`` for object storage.

    Each worker reads whole chunks (about ``chunk_bytes`` each, cut on segment boundaries)
    with concurrent byte-range requests, the next chunk while the current one is consumed,
    and yields ``(name, tensor)`` through a shuffle buffer. Chunks go to the
    ``num_replicas x num_workers`` readers round-robin in an order drawn from
    ``default_rng([seed, epoch])``, so across all ranks and workers every segment is yielded
    exactly once per epoch (readers may get different counts: up to one chunk more).

    Parameters
    ----------
    path_or_url, variable, storage_options, transform
        As for :class:`SegmentDataset`.
    shuffle
        Shuffle the chunk order and, within each reader, the segments through the buffer.
    seed
        Same seed, epoch, ranks and workers: same order.
    buffer_size
        Segments held in the shuffle buffer (about ``buffer_size`` x mean segment bytes of
        memory, plus two chunks).
    chunk_bytes
        Target bytes per read (default 64 MiB; smaller when the store has fewer chunks than
        four per reader).
    num_replicas, rank
        Default: from ``torch.distributed`` when initialised, else 1 and 0.

    Notes
    -----
    Call :meth:`set_epoch` every epoch. With ``persistent_workers=True`` the workers keep the
    copy they received at the first epoch; they then advance the epoch by one on each pass.
    """

    def __init__(
        self,
        path_or_url: str | os.PathLike[str],
        variable: str | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 1024,
        chunk_bytes: int = 64 << 20,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        who = type(self).__name__
        self.segments = SegmentDataset(
            path_or_url, variable, storage_options=storage_options, transform=transform
        )
        self.num_replicas, self.rank = _dist_defaults(num_replicas, rank, who)
        self.seed = _check_seed(seed, who)
        for key, value in (("buffer_size", buffer_size), ("chunk_bytes", chunk_bytes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise SamplerError(f"{who}: {key}={value!r} must be an int >= 1")
        self.shuffle = bool(shuffle)
        self.buffer_size = int(buffer_size)
        self.chunk_bytes = int(chunk_bytes)
        self.epoch = 0
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next pass on."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise SamplerError(f"set_epoch({epoch!r}): the epoch must be a non-negative int")
        self.epoch = int(epoch)
        self._passes = 0

    def chunks(self, readers: int) -> np.ndarray:
        """``(k + 1,)`` segment offsets of the chunks read for ``readers`` readers."""
        ds = self.segments
        n = len(ds)
        b = ds.bounds
        if n == 0:
            return np.zeros(1, np.int64)
        h = ds.handle
        row_nbytes = max(1, h.dtype.itemsize * math.prod(h.shape[1:]))
        total = int(b[-1, 1] - b[0, 0]) * row_nbytes
        target = min(self.chunk_bytes, max(1, -(-total // (readers * 4))))
        # cut where the running byte count crosses a multiple of the target (segment bounds)
        ends = (b[:, 1] - b[0, 0]) * row_nbytes
        k = np.searchsorted(ends, np.arange(1, -(-total // target) + 1) * target, "left") + 1
        return np.unique(np.concatenate([[0], np.minimum(k, n), [n]])).astype(np.int64)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        info = get_worker_info()
        workers, wid = (1, 0) if info is None else (info.num_workers, info.id)
        readers = self.num_replicas * workers
        me = self.rank * workers + wid
        epoch = self.epoch + self._passes
        self._passes += 1
        ds = self.segments
        cuts = self.chunks(readers)
        order = _permutation(len(cuts) - 1, self.seed, epoch, self.shuffle)
        mine = order[me::readers].tolist()
        rng = np.random.default_rng([self.seed, epoch, me, 2])
        b = ds.bounds
        seg = ds._segment_arrays()

        def fetch(c: int) -> tuple[int, np.ndarray]:
            lo, hi = int(cuts[c]), int(cuts[c + 1])
            rows = ds.read_rows(int(b[lo, 0]), int(b[hi - 1, 1]))
            return c, rows

        buf: list[tuple[int, np.ndarray]] = []
        with ThreadPoolExecutor(1) as pool:
            pending: Future[tuple[int, np.ndarray]] | None = (
                pool.submit(fetch, mine[0]) if mine else None
            )
            for j in range(len(mine)):
                assert pending is not None
                c, rows = pending.result()
                pending = pool.submit(fetch, mine[j + 1]) if j + 1 < len(mine) else None
                lo, hi = int(cuts[c]), int(cuts[c + 1])
                base = int(b[lo, 0])
                within = rng.permutation(hi - lo) if self.shuffle else np.arange(hi - lo)
                for i in (within + lo).tolist():
                    item = (i, rows[int(b[i, 0]) - base : int(b[i, 1]) - base])
                    if not self.shuffle:
                        yield self._sample(seg, *item)
                        continue
                    buf.append(item)
                    if len(buf) >= self.buffer_size:
                        k = int(rng.integers(len(buf)))
                        buf[k], buf[-1] = buf[-1], buf[k]
                        yield self._sample(seg, *buf.pop())
        for k in rng.permutation(len(buf)).tolist():
            yield self._sample(seg, *buf[k])

    def _sample(self, seg: Any, i: int, rows: np.ndarray) -> tuple[str, Any]:
        t = torch.from_numpy(np.array(rows))
        tf = self.segments.transform
        return seg.name(i), (t if tf is None else tf(t))

    def __repr__(self) -> str:
        return f"<bigarray.torch.SegmentIterableDataset over {self.segments!r}>"
