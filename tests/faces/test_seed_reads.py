"""Reading through the seed arrays as 2020 code does: views, copies, numpy names, pools.

Each test is one read-side item of the 2020 library's behaviour that code relies on.
"""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray import MmapArray, MmapArrayWriter, PointerArray


@pytest.fixture
def pointer(make_store: Any) -> tuple[Path, dict[str, np.ndarray]]:
    """The 2020 README's store: ``name0`` .. ``name7``, ten int32 each, 0 to 79 in order."""
    segs = {f"name{i}": np.arange(i * 10, i * 10 + 10, dtype="int32") for i in range(8)}
    return make_store(segments=segs, dtype="int32", trailing=())


@pytest.fixture
def matrix(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.arange(300 * 25 * 8, dtype="float64").reshape(300, 25, 8)
    with MmapArrayWriter(str(tmp_path / "m"), shape=data.shape, dtype="float64") as w:
        w.write(data, start_position=0)
    return tmp_path / "m", data


def _describe(a: np.ndarray) -> tuple[str, str, tuple[int, ...], np.ndarray]:
    return type(a).__name__, str(a.dtype), a.shape, np.array(a)


# --------------------------------------------------------------------------- dtype views


def test_dtype_reinterpreting_views_pickle_as_what_they_show(
    pointer: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, _ = pointer
    x = PointerArray(path)
    for view in (x.view("uint32"), x[10:20].view("int16"), x[10:20].view("uint8")):
        back = pickle.loads(pickle.dumps(view))
        assert back.dtype == view.dtype and back.shape == view.shape
        np.testing.assert_array_equal(back, np.asarray(view))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dtype_views_reach_pool_workers_intact(
    pointer: tuple[Path, dict[str, np.ndarray]], method: str
) -> None:
    path, _ = pointer
    x = PointerArray(path)
    views = [x.view("uint32"), x[10:20].view("int16"), x[10:20]]
    with multiprocessing.get_context(method).Pool(2) as pool:
        got = pool.map(_describe, views)
    for (_, dtype, shape, values), view in zip(got, views, strict=True):
        assert (dtype, shape) == (str(view.dtype), view.shape)
        np.testing.assert_array_equal(values, np.asarray(view))


# --------------------------------------------------------------------------- in-memory results


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.copy(),
        lambda x: x[[0, 1]],
        lambda x: x[x > 3],
        lambda x: np.sort(x),
        lambda x: x.astype("f8"),
        lambda x: x.take([0, 2]),
        lambda x: x.flatten(),
    ],
    ids=["copy", "fancy", "mask", "np.sort", "astype", "take", "flatten"],
)
def test_in_memory_results_are_plain_writable_ndarrays(
    pointer: tuple[Path, dict[str, np.ndarray]], make: object
) -> None:
    path, _ = pointer
    x = PointerArray(path)
    got = make(x)  # type: ignore[operator]
    assert type(got) is np.ndarray
    assert got.flags.writeable
    expected = np.array(got)
    got[0] = 7
    expected[0] = 7
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(x[:10], np.arange(10))  # the store is untouched


def test_views_of_the_file_stay_read_only_store_arrays(
    pointer: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, _ = pointer
    x = PointerArray(path)
    for view in (x[2:9], x[::2], x[3:4], x.astype("int32", copy=False)):
        assert isinstance(view, PointerArray) and not view.flags.writeable
    assert np.shares_memory(x["name3"], x) and not x["name3"].flags.writeable


# --------------------------------------------------------------------------- numpy names


class Name(str):
    """A str subclass, as some libraries hand out."""


def test_numpy_str_and_str_subclass_names_index_by_name(
    pointer: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, segs = pointer
    x = PointerArray(path)
    for key in (np.str_("name3"), Name("name3"), np.array(["name3"])[0]):
        np.testing.assert_array_equal(x[key], segs["name3"])
        assert key in x.indices


def test_names_from_np_array_split_index_a_pointer_array(
    pointer: tuple[Path, dict[str, np.ndarray]],
) -> None:
    path, segs = pointer
    x = PointerArray(path)
    for part in np.array_split(list(segs), 3):  # numpy.str_ elements
        for name in part:
            np.testing.assert_array_equal(x[name], segs[str(name)])


# --------------------------------------------------------------------------- items()


def test_indices_items_is_a_reusable_view(pointer: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, segs = pointer
    x = PointerArray(path)
    items = x.indices.items()
    expected = [(n, (10 * i, 10 * i + 10)) for i, n in enumerate(segs)]
    assert len(items) == 8
    assert list(items) == expected
    assert list(items) == expected  # a second pass sees everything again
    assert ("name2", (20, 30)) in items and ("name2", (0, 1)) not in items
    assert dict(items) == dict(expected)


# --------------------------------------------------------------------------- pool jobs


def _job_sum(job: tuple[MmapArray, int]) -> tuple[float, tuple[int, ...]]:
    x, i = job
    return float(np.sum(x[i])), x.shape


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_mmap_array_as_a_pool_map_job_argument_reads_correctly(
    matrix: tuple[Path, np.ndarray], method: str
) -> None:
    path, data = matrix
    x = MmapArray(str(path))
    parts = [x, x[100:200], x[::7], x.view("int64"), x.reshape(-1, 8)]
    with multiprocessing.get_context(method).Pool(2) as pool:
        sums = pool.map(_job_sum, [(x, i) for i in range(0, 300, 37)])
        got = pool.map(_describe, parts)
    assert sums == [(float(data[i].sum()), data.shape) for i in range(0, 300, 37)]
    for (_, dtype, shape, values), part in zip(got, parts, strict=True):
        assert (dtype, shape) == (str(part.dtype), part.shape)
        np.testing.assert_array_equal(values, np.asarray(part))
