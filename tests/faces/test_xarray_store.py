"""``BigArrayStore`` and ``to_bigarray``: CF encoding by xarray, appends, commits, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import xarray as xr

from bigarray import PointerArray
from bigarray.core.format import MANIFEST_NAME
from bigarray.core.verify import verify_store
from bigarray.errors import BigArrayError, NotAStoreError, SchemaError, StoreExistsError
from bigarray.xarray_backend import BigArrayStore, InvalidNameError, to_bigarray

ENGINE = "bigarray"


def _ds(rows: int = 6, offset: int = 0, names: tuple[str, ...] = ("a", "b")) -> xr.Dataset:
    half = rows // 2
    return xr.Dataset(
        {
            "x": (("row", "f"), np.arange(rows * 2, dtype="f4").reshape(rows, 2) + offset),
            "label": ("row", np.arange(rows, dtype="i8") + offset),
        },
        coords={
            "segment": ("segment", list(names)),
            "segment_start": ("segment", [0, half]),
            "segment_stop": ("segment", [half, rows]),
            "f": ("f", [10, 20]),
        },
        attrs={"title": "t"},
    )


def _manifest(path: Any) -> bytes:
    with open(os.path.join(path, MANIFEST_NAME), "rb") as f:
        return f.read()


def test_packing_encoding_is_applied_on_disk_and_decoded_on_open(tmp_path: Any) -> None:
    x = np.linspace(-3, 3, 50, dtype="f4")
    x[7] = np.nan
    ds = xr.Dataset({"x": ("row", x)})
    scale = np.float32(0.001)  # a float32 scale_factor decodes to float32
    enc = {"x": {"dtype": "int16", "scale_factor": scale, "_FillValue": np.int16(-32768)}}
    to_bigarray(ds, tmp_path / "p.bigarray", encoding=enc)
    raw = PointerArray(str(tmp_path / "p.bigarray"), variable="x")
    assert raw.dtype == np.dtype("int16")  # stored packed, as the encoding says
    assert raw[7] == -32768
    with xr.open_dataset(tmp_path / "p.bigarray", engine=ENGINE) as back:
        assert back["x"].dtype == np.dtype("f4")
        np.testing.assert_allclose(back["x"].values, x, atol=0.001)
        assert back["x"].encoding["dtype"] == np.dtype("int16")  # a dtype, not a string
        assert back["x"].encoding["scale_factor"] == scale
        assert "_FillValue" not in back["x"].attrs
    with xr.open_dataset(tmp_path / "p.bigarray", engine=ENGINE, decode_cf=False) as raw_ds:
        assert raw_ds["x"].dtype == np.dtype("int16")
        assert raw_ds["x"].attrs["scale_factor"] == scale


def test_a_large_variable_encoded_block_by_block_is_stored_as_encoded_whole(
    tmp_path: Any,
) -> None:
    """A large numeric variable is CF-encoded in blocks of rows as it is written: the bytes
    stored are those of encoding it whole (packing, NaN to _FillValue), and so are the
    rows appended to it."""
    from xarray import conventions

    from bigarray.xarray_store import _CODERS

    rng = np.random.default_rng(0)
    data = rng.normal(size=(300_001, 16)).astype("f4")  # 19 MB: blocks of 4 MiB
    data[::7777, 3] = np.nan
    enc = {"dtype": "int16", "scale_factor": np.float32(0.001), "_FillValue": np.int16(-32768)}
    ds = xr.Dataset({"x": (("row", "f"), data)})
    path = tmp_path / "big.bigarray"
    to_bigarray(ds, path, encoding={"x": enc})
    to_bigarray(ds, path, mode="a", append_dim="row")
    whole = xr.Variable(("row", "f"), data, encoding=enc)
    want = conventions.encode_cf_variable(whole, name="x", coders=_CODERS)
    with xr.open_dataset(path, engine=ENGINE, decode_cf=False) as raw:
        assert raw["x"].dtype == np.int16
        np.testing.assert_array_equal(raw["x"].values, np.concatenate([want.values] * 2))
        assert raw["x"].attrs == {k: v for k, v in want.attrs.items()}
    with xr.open_dataset(path, engine=ENGINE) as back:
        np.testing.assert_allclose(back["x"].values[:300_001], data, atol=0.001, equal_nan=True)
    assert verify_store(path).ok


def test_encoding_on_open_has_no_none_fill_value(tmp_path: Any) -> None:
    ds = xr.Dataset({"x": ("row", np.arange(3.0))})
    ds["x"].encoding["_FillValue"] = None
    to_bigarray(ds, tmp_path / "s.bigarray")
    with xr.open_dataset(tmp_path / "s.bigarray", engine=ENGINE) as back:
        assert "_FillValue" not in back["x"].encoding
        assert back["x"].encoding["dtype"] == np.dtype("f8")


def test_unknown_encoding_key_is_a_value_error_and_writes_nothing(tmp_path: Any) -> None:
    ds = xr.Dataset({"x": ("row", np.arange(3.0))})
    with pytest.raises(ValueError, match="unexpected encoding"):
        to_bigarray(ds, tmp_path / "e.bigarray", encoding={"x": {"foo": 1}})
    assert os.listdir(tmp_path) == []


def test_invalid_names_raise_like_xarray(tmp_path: Any) -> None:
    with pytest.raises(InvalidNameError, match="string or None"):
        to_bigarray(xr.Dataset({0: ("row", [1])}), tmp_path / "n")
    with pytest.raises(TypeError):
        to_bigarray(xr.Dataset({0: ("row", [1])}), tmp_path / "n")
    with pytest.raises(SchemaError, match="length 1 or greater"):
        to_bigarray(xr.Dataset({"": ("row", [1])}), tmp_path / "n")


def test_multiindex_is_not_implemented_like_xarray(tmp_path: Any) -> None:
    ds = xr.Dataset(coords={"y": ("x", [1, 2]), "z": ("x", ["a", "b"])}).set_index(x=["y", "z"])
    with pytest.raises(NotImplementedError, match="MultiIndex"):
        to_bigarray(ds, tmp_path / "m")


def test_append_rows_along_the_row_dim_adds_segments(tmp_path: Any) -> None:
    path = tmp_path / "a.bigarray"
    to_bigarray(_ds(), path)
    to_bigarray(_ds(4, 100, ("c", "d")), path, mode="a", append_dim="row")
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back.sizes["row"] == 10
        assert back["segment"].values.tolist() == ["a", "b", "c", "d"]
        assert back["segment_start"].values.tolist() == [0, 3, 6, 8]
        assert back["segment_stop"].values.tolist() == [3, 6, 8, 10]
        np.testing.assert_array_equal(back["label"].values[6:], np.arange(4) + 100)
        np.testing.assert_array_equal(back.bigarray.segment("d")["x"], _ds(4, 100).x[2:4])
    report = verify_store(path)  # data and index checksums recorded by the storage core
    assert report.ok, str(report)


def test_accessor_appends_with_the_same_keywords(tmp_path: Any) -> None:
    path = tmp_path / "acc.bigarray"
    _ds().bigarray.to_bigarray(path)
    _ds(4, 100, ("c", "d")).bigarray.to_bigarray(path, mode="a", append_dim="row", fsync=False)
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back.sizes["row"] == 10


def test_append_adds_new_variables(tmp_path: Any) -> None:
    path = tmp_path / "v.bigarray"
    to_bigarray(_ds(), path)
    to_bigarray(xr.Dataset({"y": ("row", np.ones(6)), "z": ((), 3.5)}), path, mode="a")
    with xr.open_dataset(path, engine=ENGINE) as back:
        np.testing.assert_array_equal(back["y"].values, np.ones(6))
        assert float(back["z"]) == 3.5
        assert back.sizes["row"] == 6
    report = verify_store(path)  # the staged variables' checksums came with them
    assert report.ok, str(report)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda d: d.assign(label=("row", np.array(["a"] * 4))), "'label' is <U1 but the store"),
        (lambda d: d.isel(f=[0, 0, 1]), "Unable to update size for existing dimension 'f'"),
        (lambda d: d.drop_vars("label"), r"missing \['label'\]"),
        (lambda d: d.assign_coords(f=[1, 2]), "never rewrites committed values"),
        (lambda d: d.rename({"segment": "segment"}).assign_coords(segment=["a", "z"]), "a"),
    ],
    ids=["dtype", "row-shape", "missing-variable", "rewrite", "duplicate-segment"],
)
def test_append_schema_mismatch_is_an_error_that_changes_nothing(
    tmp_path: Any, bad: Any, match: str
) -> None:
    path = tmp_path / "m.bigarray"
    to_bigarray(_ds(), path)
    before = _manifest(path)
    files = sorted(os.listdir(path))
    with pytest.raises((SchemaError, KeyError), match=match):
        to_bigarray(bad(_ds(4, 100)), path, mode="a", append_dim="row")
    assert _manifest(path) == before
    assert sorted(os.listdir(path)) == files
    with xr.open_dataset(path, engine=ENGINE) as back:
        xr.testing.assert_identical(back.load(), _ds())


def test_append_dim_must_be_the_row_dim(tmp_path: Any) -> None:
    path = tmp_path / "d.bigarray"
    to_bigarray(_ds(), path)
    with pytest.raises(SchemaError, match="row dim 'row' only"):
        to_bigarray(_ds(), path, mode="a", append_dim="f")
    with pytest.raises(SchemaError, match="no store"):
        to_bigarray(_ds(), tmp_path / "new", mode="a", append_dim="row")


def test_mode_w_dash_refuses_and_mode_w_replaces(tmp_path: Any) -> None:
    path = tmp_path / "r.bigarray"
    to_bigarray(_ds(), path)
    with pytest.raises(StoreExistsError, match="mode='w'"):
        to_bigarray(_ds(), path)
    to_bigarray(_ds(4, 7, ("p", "q")), path, mode="w")
    with xr.open_dataset(path, engine=ENGINE) as back:
        xr.testing.assert_identical(back.load(), _ds(4, 7, ("p", "q")))
    assert verify_store(path).ok
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no staging left


def test_mode_w_refuses_a_directory_that_is_not_a_store(tmp_path: Any) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(NotAStoreError, match="not a bigarray store"):
        to_bigarray(_ds(), tmp_path / "mine", mode="w")
    assert (tmp_path / "mine" / "keep.txt").exists()
    # the one rule of every writer and tool: a user's file is never replaced either
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(NotAStoreError, match="refusing to replace it"):
        to_bigarray(_ds(), tmp_path / "notes.txt", mode="w")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_mode_w_keeps_the_old_store_when_the_new_one_fails(tmp_path: Any) -> None:
    import dask.array as dsa

    path = str(tmp_path / "keep.bigarray")
    to_bigarray(xr.Dataset({"a": ("row", np.ones(10))}), path)
    with pytest.raises(SchemaError):
        to_bigarray(xr.Dataset({"a": ("row", np.ones(5))}), path, mode="w", segments={"x": (0, 50)})

    def boom(b: np.ndarray, block_info: Any = None) -> np.ndarray:
        if block_info[0]["chunk-location"][0] == 3:
            raise RuntimeError("task failed")
        return b

    bad = dsa.full(20, 2.0, chunks=5).map_blocks(boom, dtype="f8")
    with pytest.raises(RuntimeError, match="task failed"):
        to_bigarray(xr.Dataset({"a": ("row", bad)}), path, mode="w")
    with pytest.raises(RuntimeError, match="task failed"):
        to_bigarray(xr.Dataset({"a": ("row", bad)}), str(tmp_path / "new"), mode="w")
    assert sorted(os.listdir(tmp_path)) == ["keep.bigarray"]  # nothing new, nothing staged
    with xr.open_dataset(path, engine=ENGINE) as back:
        np.testing.assert_array_equal(back["a"].values, np.ones(10))
    assert verify_store(path).ok


def test_mode_w_never_leaves_the_path_without_a_store(tmp_path: Any) -> None:
    """The replacement takes the old store's place in one step: a reader polling the path
    meanwhile always finds a store (the old one or the new one)."""
    import threading

    path = str(tmp_path / "swap.bigarray")
    ds = xr.Dataset({n: ("row", np.arange(2000.0)) for n in "abcdefgh"})
    to_bigarray(ds, path)
    missing: list[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if not os.path.exists(os.path.join(path, MANIFEST_NAME)):
                missing.append(1)

    t = threading.Thread(target=poll)
    t.start()
    try:
        for _ in range(15):
            to_bigarray(ds, path, mode="w", fsync=False)
    finally:
        done.set()
        t.join()
    assert missing == []


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np, xarray as xr
    from bigarray.xarray_backend import to_bigarray
    ds = xr.Dataset({n: ("row", np.arange(1000.0) + i) for i, n in enumerate("abcd")})
    to_bigarray(ds, sys.argv[1], mode=sys.argv[2])
    """
)


@pytest.mark.parametrize(
    "step", ["dataset-after-variable@2", "after-header", "before-manifest", "after-manifest"]
)
def test_killed_dataset_write_leaves_no_partial_store(tmp_path: Any, step: str) -> None:
    """A new store appears whole (one rename) or not at all; ``mode="w"`` over a store
    killed before its rename leaves the old store as it was."""
    path = str(tmp_path / "k.bigarray")
    env = {**os.environ, "BIGARRAY_CRASH_AT": step}
    proc = subprocess.run([sys.executable, "-c", _CHILD, path, "w-"], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(path)
    to_bigarray(_ds(), path)
    proc = subprocess.run([sys.executable, "-c", _CHILD, path, "w"], env=env)
    assert proc.returncode == -signal.SIGKILL
    with xr.open_dataset(path, engine=ENGINE) as back:
        xr.testing.assert_identical(back.load(), _ds())


_APPEND_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np, xarray as xr
    from bigarray.xarray_backend import to_bigarray
    more = xr.Dataset(
        {n: ("row", np.arange(500.0) + 10 * i) for i, n in enumerate("abcd")},
        coords={"segment": ["p", "q"], "segment_start": ("segment", [0, 200]),
                "segment_stop": ("segment", [200, 500])},
        attrs={"appended": 1},
    )
    to_bigarray(more, sys.argv[1], mode="a", append_dim="row")
    """
)


def _append_base() -> xr.Dataset:
    return xr.Dataset(
        {n: ("row", -np.arange(300.0) - i) for i, n in enumerate("abcd")},
        coords={
            "segment": ["s", "t"],
            "segment_start": ("segment", [0, 100]),
            "segment_stop": ("segment", [100, 300]),
        },
        attrs={"title": "base"},
    )


def _appended() -> xr.Dataset:
    return xr.Dataset(
        {
            n: ("row", np.concatenate([-np.arange(300.0) - i, np.arange(500.0) + 10 * i]))
            for i, n in enumerate("abcd")
        },
        coords={
            "segment": ["s", "t", "p", "q"],
            "segment_start": ("segment", [0, 100, 300, 500]),
            "segment_stop": ("segment", [100, 300, 500, 800]),
        },
        attrs={"title": "base", "appended": 1},
    )


@pytest.mark.parametrize(
    "step",
    [
        "dataset-after-variable@1",
        "dataset-after-variable@3",
        "after-data-fsync",
        "after-header",
        "after-index",
        "before-manifest",
        "after-manifest",
    ],
)
def test_killed_dataset_append_is_the_previous_commit_or_the_whole_new_one(
    tmp_path: Any, step: str
) -> None:
    """mode='a' of four variables, new segments and attributes is one commit: a kill
    between two variables' rows, or between two steps of the commit, leaves the store as
    it was; a kill after the manifest rename leaves all of it. Never a mix."""
    path = str(tmp_path / "ka.bigarray")
    to_bigarray(_append_base(), path)
    env = {**os.environ, "BIGARRAY_CRASH_AT": step}
    proc = subprocess.run([sys.executable, "-c", _APPEND_CHILD, path], env=env)
    assert proc.returncode == -signal.SIGKILL
    want = _appended() if step == "after-manifest" else _append_base()
    with xr.open_dataset(path, engine=ENGINE) as back:
        xr.testing.assert_identical(back.load(), want)
    report = verify_store(path)
    assert report.ok, str(report)
    if step != "after-manifest":  # the append runs again over what the kill left
        proc = subprocess.run([sys.executable, "-c", _APPEND_CHILD, path])
        assert proc.returncode == 0
        with xr.open_dataset(path, engine=ENGINE) as back:
            xr.testing.assert_identical(back.load(), _appended())
        assert verify_store(path).ok


def test_a_dataset_write_is_one_commit_with_checksums_of_every_variable(tmp_path: Any) -> None:
    """mode='w-' and mode='a' (rows, new variables, segments, attributes) each publish one
    manifest generation, and every variable and the index carry checksums."""
    import dask.array as dsa

    from bigarray.core.store import read_manifest

    path = str(tmp_path / "one.bigarray")
    ds = _ds().assign(d=(("row", "f"), dsa.from_array(np.ones((6, 2)), chunks=(2, 2))))
    to_bigarray(ds.assign(s=((), 2.5)), path)
    assert read_manifest(path).generation == 1
    more = _ds(4, 100, ("c", "d")).assign(d=(("row", "f"), dsa.zeros((4, 2), chunks=(3, 2))))
    to_bigarray(more, path, mode="a", append_dim="row")
    to_bigarray(xr.Dataset({"y": ("row", np.ones(10))}, attrs={"v": 2}), path, mode="a")
    m = read_manifest(path)
    assert m.generation == 3
    assert all(v.checksums is not None for v in m.variables.values()), m.variables
    report = verify_store(path)
    assert report.ok and not report.notes, str(report)
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back.attrs == {"title": "t", "v": 2}
        assert back["segment"].values.tolist() == ["a", "b", "c", "d"]
        np.testing.assert_array_equal(back["d"].values[6:], np.zeros((4, 2)))
    # the sums are real: one flipped byte of appended rows fails verification
    data = os.path.join(path, m.variables["label"].shards[0].path)
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) - 8)
        f.write(b"\xff")
    assert not verify_store(path).ok


def test_an_append_whose_task_fails_changes_nothing_and_leaves_no_file(tmp_path: Any) -> None:
    import dask.array as dsa

    def boom(b: np.ndarray, block_info: Any = None) -> np.ndarray:
        if block_info[0]["chunk-location"][0] == 1:
            raise RuntimeError("task failed")
        return b

    path = str(tmp_path / "f.bigarray")
    to_bigarray(_ds(), path)
    before, files = _manifest(path), sorted(os.listdir(path))
    bad = dsa.full(6, 2.0, chunks=2).map_blocks(boom, dtype="f8")
    more = _ds(4, 100, ("c", "d"))
    with pytest.raises(RuntimeError, match="task failed"):  # appended rows
        grown = more.assign(label=("row", bad[:4].astype("i8")))
        to_bigarray(grown, path, mode="a", append_dim="row")
    with pytest.raises(RuntimeError, match="task failed"):  # a new variable only
        to_bigarray(xr.Dataset({"y": ("row", bad)}), path, mode="a")
    assert _manifest(path) == before
    assert sorted(os.listdir(path)) == files
    to_bigarray(more, path, mode="a", append_dim="row")  # the store goes on from its commit
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back.sizes["row"] == 10
        np.testing.assert_array_equal(back["label"].values[6:], np.arange(4) + 100)
    assert verify_store(path).ok


_RACE_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np, xarray as xr
    from bigarray.xarray_backend import to_bigarray
    k = int(sys.argv[2])
    for i in range(5):
        ds = xr.Dataset(
            {"x": ("row", np.full(100, k * 100 + i, float))},
            coords={"segment": [f"s{k}-{i}"], "segment_start": ("segment", [0]),
                    "segment_stop": ("segment", [100])},
        )
        to_bigarray(ds, sys.argv[1], mode="a", append_dim="row", fsync=False)
    """
)


def test_appends_of_concurrent_processes_each_commit_whole(tmp_path: Any) -> None:
    """Appends from three processes at once take turns on the store lock: every append's
    rows land after the rows committed before it, under its own segment."""
    path = str(tmp_path / "race.bigarray")
    to_bigarray(xr.Dataset({"x": ("row", np.zeros(10))}), path)
    procs = [subprocess.Popen([sys.executable, "-c", _RACE_CHILD, path, str(k)]) for k in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back.sizes["row"] == 10 + 3 * 5 * 100
        for name, a, b in zip(
            back.segment.values, back.segment_start.values, back.segment_stop.values
        ):
            k, i = map(int, str(name)[1:].split("-"))
            assert (back["x"].values[a:b] == k * 100 + i).all(), name
        assert back.sizes["segment"] == 15
    assert verify_store(path).ok


def test_append_refuses_a_store_an_open_writer_is_writing(tmp_path: Any) -> None:
    from bigarray import StoreWriter
    from bigarray.errors import CommitConflictError

    path = str(tmp_path / "busy.bigarray")
    to_bigarray(_ds(), path)
    before = _manifest(path)
    with (
        StoreWriter(path, variable="label", named=False),
        pytest.raises(CommitConflictError, match="live writer session"),
    ):
        to_bigarray(_ds(4, 100, ("c", "d")), path, mode="a", append_dim="row")
    assert _manifest(path) == before


def test_dataset_write_publishes_every_variable_in_one_manifest(tmp_path: Any) -> None:
    path = tmp_path / "one.bigarray"
    with BigArrayStore(path, mode="w-") as store:
        _ds().drop_vars(["segment", "segment_start", "segment_stop"]).dump_to_store(store)
        with xr.decode_cf(store) as back:
            assert set(back.variables) == {"x", "label", "f"}
            assert back.attrs == {"title": "t"}


def test_load_async_reads_a_remote_store(tmp_path: Any) -> None:
    import asyncio

    import fsspec

    path = tmp_path / "as.bigarray"
    to_bigarray(_ds(), path)
    fs = fsspec.filesystem("memory")
    fs.put(str(path), "/xr-async/as.bigarray", recursive=True)
    try:
        with xr.open_dataset("memory://xr-async/as.bigarray", engine=ENGINE) as ds:
            assert not ds["x"].variable._in_memory
            loaded = asyncio.run(ds.load_async())
            assert ds["x"].variable._in_memory
            xr.testing.assert_identical(loaded, _ds())
    finally:
        fs.rm("/xr-async", recursive=True)


def test_a_url_is_refused_with_the_way_to_write_one(tmp_path: Any) -> None:
    with pytest.raises(BigArrayError, match="dask_backend.to_bigarray"):
        to_bigarray(_ds(), "memory://nowhere/x.bigarray")
    to_bigarray(_ds(), f"file://{tmp_path}/f.bigarray")  # a file:// URL is local
    assert (tmp_path / "f.bigarray").is_dir()


def test_appended_rows_take_the_store_encoding(tmp_path: Any) -> None:
    path = tmp_path / "enc.bigarray"
    scale = np.float32(0.01)
    packing = {"dtype": "int16", "scale_factor": scale, "_FillValue": np.int16(-1)}
    to_bigarray(_ds(), path, encoding={"x": packing})
    to_bigarray(_ds(4, 100, ("c", "d")), path, mode="a", append_dim="row")
    raw = PointerArray(str(path), variable="x")
    assert raw.dtype == np.dtype("int16") and len(raw) == 10
    with xr.open_dataset(path, engine=ENGINE) as back:
        np.testing.assert_allclose(back["x"].values[6:], _ds(4, 100).x.values, atol=0.01)
    with pytest.raises(SchemaError, match="encoding was provided"):
        to_bigarray(_ds(4, 200, ("e", "f")), path, mode="a", append_dim="row", encoding={"x": {}})


def test_appending_longer_strings_is_refused_not_cut(tmp_path: Any) -> None:
    path = tmp_path / "str.bigarray"
    ds = xr.Dataset({"s": ("row", np.array(["ab", "cd"]))})
    to_bigarray(ds, path)
    to_bigarray(xr.Dataset({"s": ("row", np.array(["e"]))}), path, mode="a", append_dim="row")
    with pytest.raises(SchemaError, match="<U3 but the store holds <U2"):
        to_bigarray(xr.Dataset({"s": ("row", np.array(["fgh"]))}), path, mode="a", append_dim="row")
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back["s"].values.tolist() == ["ab", "cd", "e"]


# ------------------------------------------------------------------ appends keep the committed meaning


def _refused_unchanged(path: Any, more: xr.Dataset, match: str) -> None:
    """Append ``more``: a SchemaError matching ``match``, and the store as it was."""
    before, files = _manifest(path), sorted(os.listdir(path))
    with xr.open_dataset(path, engine=ENGINE) as back:
        held = back.load()
    with pytest.raises(SchemaError, match=match):
        to_bigarray(more, path, mode="a", append_dim="row")
    assert _manifest(path) == before
    assert sorted(os.listdir(path)) == files
    with xr.open_dataset(path, engine=ENGINE) as back:
        xr.testing.assert_identical(back.load(), held)


@pytest.mark.filterwarnings("ignore:Time.*can't be serialized faithfully")
def test_append_refuses_times_that_need_other_units_than_the_committed_ones(
    tmp_path: Any,
) -> None:
    path = tmp_path / "t.bigarray"
    t = np.array(["2000-01-01", "2000-01-02", "2000-01-03"], "M8[ns]")
    dt = np.array([1, 2, 3], "m8[s]").astype("m8[ns]")
    enc = {
        "t": {"units": "days since 2000-01-01", "dtype": "int32"},
        "d": {"units": "seconds", "dtype": "int32"},
    }
    to_bigarray(xr.Dataset({"t": ("row", t), "d": ("row", dt)}), path, encoding=enc)

    def more(t: str, d: Any) -> xr.Dataset:
        return xr.Dataset(
            {"t": ("row", np.array([t], "M8[ns]")), "d": ("row", np.array([d], "m8[ns]"))}
        )

    _refused_unchanged(path, more("2000-01-04T06:00", 4 * 10**9), "units=.days since")
    _refused_unchanged(path, more("2000-01-04", 4 * 10**9 + 5 * 10**6), "units=.seconds")
    # values the committed units hold are appended in those units
    to_bigarray(more("2000-01-05", 5 * 10**9), path, mode="a", append_dim="row")
    raw = PointerArray(str(path), variable="t")
    assert raw.dtype == np.dtype("int32") and raw[:].tolist() == [0, 1, 2, 4]
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back["t"].values.tolist() == np.concatenate([t, more("2000-01-05", 0).t]).tolist()
        assert back["t"].attrs == {} and back["t"].encoding["units"] == "days since 2000-01-01"
        assert back["d"].values.astype("m8[s]").astype(int).tolist() == [1, 2, 3, 5]


def test_append_refuses_times_into_numbers_and_numbers_into_times(tmp_path: Any) -> None:
    path = tmp_path / "k.bigarray"
    to_bigarray(xr.Dataset({"s": ("row", np.array([1.0]))}), path)
    _refused_unchanged(
        path,
        xr.Dataset({"s": ("row", np.array(["2000-01-01"], "M8[ns]"))}),
        "holds float64 values",
    )
    when = tmp_path / "w.bigarray"
    to_bigarray(xr.Dataset({"s": ("row", np.array(["2000-01-01"], "M8[ns]"))}), when)
    _refused_unchanged(when, xr.Dataset({"s": ("row", np.array([1.0]))}), "holds datetime64")


def test_append_refuses_a_changed_units_attribute_and_keeps_the_committed_attributes(
    tmp_path: Any,
) -> None:
    path = tmp_path / "u.bigarray"
    to_bigarray(xr.Dataset({"x": ("row", np.ones(2), {"units": "m", "long_name": "x"})}), path)
    _refused_unchanged(
        path, xr.Dataset({"x": ("row", np.ones(2), {"units": "km"})}), "units='m'.*units='km'"
    )
    # attributes that do not decide decoding: the committed ones stay, as xarray's zarr
    # engine keeps them; an appended variable without units (arithmetic drops attrs) is fine
    to_bigarray(
        xr.Dataset({"x": ("row", np.full(1, 2.0), {"long_name": "other", "new": 1})}),
        path,
        mode="a",
        append_dim="row",
    )
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back["x"].attrs == {"units": "m", "long_name": "x"}
        assert back["x"].values.tolist() == [1.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        (np.arange(3, dtype="i2"), np.array([70000, -1, 5]), "70000, which does not fit"),
        (np.arange(3, dtype="u1"), np.array([300, 2], "u2"), "300, which does not fit"),
        (np.arange(3, dtype="u1"), np.array([-1, 2]), "int64 but the store .* holds uint8"),
        (np.arange(3), np.array([2.7]), "float64 but the store .* holds int64"),
        (np.arange(3), np.array([np.nan]), "float64 but the store .* holds int64"),
        (np.array([True]), np.array([5]), "int64 but the store .* holds bool"),
        (np.array([1.0]), np.array([1 + 1j]), "complex128 but the store .* holds float64"),
        (np.array([1.0]), np.array(["1.5"]), "<U3 but the store .* holds float64"),
    ],
    ids=[
        "int16-wraps",
        "uint8-wraps",
        "signed-into-uint8",
        "fraction",
        "nan",
        "int-into-bool",
        "complex-into-float",
        "text-into-float",
    ],
)
def test_append_refuses_values_the_committed_dtype_cannot_hold(
    tmp_path: Any, first: np.ndarray, second: np.ndarray, match: str
) -> None:
    path = tmp_path / "f.bigarray"
    to_bigarray(xr.Dataset({"s": ("row", first)}), path)
    _refused_unchanged(path, xr.Dataset({"s": ("row", second)}), match)


def test_append_of_dask_values_that_do_not_fit_is_refused_and_changes_nothing(
    tmp_path: Any,
) -> None:
    path = tmp_path / "dk.bigarray"
    to_bigarray(xr.Dataset({"s": ("row", np.arange(3, dtype="i2"))}), path)
    more = xr.Dataset({"s": ("row", np.array([1, 2, 70000, 4]))}).chunk({"row": 2})
    before = _manifest(path)
    with pytest.raises(SchemaError, match="70000, which does not fit"):
        to_bigarray(more, path, mode="a", append_dim="row")
    assert _manifest(path) == before
    to_bigarray(more.isel(row=[0, 1, 3]), path, mode="a", append_dim="row")  # these fit
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back["s"].dtype == np.dtype("i2")
        assert back["s"].values.tolist() == [0, 1, 2, 1, 2, 4]


def test_append_to_packed_and_masked_integers_refuses_what_would_wrap(tmp_path: Any) -> None:
    path = tmp_path / "pk.bigarray"
    packing = {"dtype": "int16", "scale_factor": 0.01, "_FillValue": np.int16(-32768)}
    masked = {"dtype": "int16", "_FillValue": np.int16(-1)}
    ds = xr.Dataset({"x": ("row", [1.0, np.nan]), "m": ("row", [1.0, np.nan])})
    to_bigarray(ds, path, encoding={"x": packing, "m": masked})
    _refused_unchanged(path, ds.assign(x=("row", [1000.0, 0.0])), "100000, which does not fit")
    _refused_unchanged(path, ds.assign(m=("row", [1.5, 0.0])), "would round them")
    _refused_unchanged(path, ds.assign(m=("row", [1e6, 0.0])), "1000000, which does not fit")
    # packed values round by design, NaN becomes the fill value
    to_bigarray(ds.assign(x=("row", [0.004, np.nan])), path, mode="a", append_dim="row")
    with xr.open_dataset(path, engine=ENGINE) as back:
        np.testing.assert_allclose(back["x"].values, [1.0, np.nan, 0.0, np.nan])
        np.testing.assert_array_equal(back["m"].values, [1.0, np.nan, 1.0, np.nan])


def test_unsigned_encoding_without_fill_value_stores_signed_and_reads_unsigned(
    tmp_path: Any,
) -> None:
    path = tmp_path / "un.bigarray"
    ds = xr.Dataset({"f": ("row", np.array([0, 200, 255], "u1"))})
    to_bigarray(ds, path, encoding={"f": {"dtype": "i1", "_Unsigned": "true"}})
    raw = PointerArray(str(path), variable="f")
    assert raw.dtype == np.dtype("i1") and raw[:].tolist() == [0, -56, -1]
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back["f"].dtype == np.dtype("u1")
        assert back["f"].values.tolist() == [0, 200, 255]
    to_bigarray(xr.Dataset({"f": ("row", np.array([7], "u1"))}), path, mode="a", append_dim="row")
    _refused_unchanged(path, xr.Dataset({"f": ("row", np.array([256], "u2"))}), "256")
    with pytest.raises(SchemaError, match="256, which does not fit"):
        to_bigarray(
            xr.Dataset({"f": ("row", np.array([256], "u2"))}),
            tmp_path / "u2.bigarray",
            encoding={"f": {"dtype": "i1", "_Unsigned": "true"}},
        )
    signed = tmp_path / "s.bigarray"
    neg = xr.Dataset({"g": ("row", np.array([-5, 3], "i1"))})
    to_bigarray(neg, signed, encoding={"g": {"dtype": "u1", "_Unsigned": "false"}})
    assert PointerArray(str(signed), variable="g")[:].tolist() == [251, 3]
    with xr.open_dataset(signed, engine=ENGINE) as back:
        assert back["g"].dtype == np.dtype("i1") and back["g"].values.tolist() == [-5, 3]


def test_a_transposed_append_is_transposed_to_the_stored_dims(tmp_path: Any) -> None:
    path = tmp_path / "tr.bigarray"
    to_bigarray(_ds(), path)
    more = _ds(4, 100, ("c", "d"))
    to_bigarray(more.transpose("f", "row", "segment"), path, mode="a", append_dim="row")
    with xr.open_dataset(path, engine=ENGINE) as back:
        assert back["x"].dims == ("row", "f")
        np.testing.assert_array_equal(back["x"].values[6:], more["x"].values)
    other = more.rename({"f": "g"}).drop_vars("g")
    _refused_unchanged(path, other, "changing a variable's dims is not supported")


@pytest.mark.filterwarnings("ignore:variable 'x' will be stored as signed integers")
def test_unsigned_with_a_fill_value_refuses_values_that_would_wrap(tmp_path: Any) -> None:
    path = tmp_path / "uf.bigarray"
    enc = {"x": {"dtype": "i1", "_Unsigned": "true", "_FillValue": np.uint8(255)}}
    to_bigarray(xr.Dataset({"x": ("row", [0.0, 200.0, np.nan])}), path, encoding=enc)
    _refused_unchanged(path, xr.Dataset({"x": ("row", [300.0])}), "300, which does not fit")
    to_bigarray(xr.Dataset({"x": ("row", [100.0, np.nan])}), path, mode="a", append_dim="row")
    with xr.open_dataset(path, engine=ENGINE) as back:
        np.testing.assert_array_equal(back["x"].values, [0.0, 200.0, np.nan, 100.0, np.nan])
    with pytest.raises(SchemaError, match="-1, which does not fit"):
        to_bigarray(xr.Dataset({"x": ("row", [-1.0])}), tmp_path / "n.bigarray", encoding=enc)


def test_append_of_nat_to_integer_times_without_fill_value_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "nat.bigarray"
    t = np.array(["2000-01-01", "2000-01-02"], "M8[ns]")
    enc = {"t": {"units": "days since 2000-01-01", "dtype": "int32"}}
    to_bigarray(xr.Dataset({"t": ("row", t)}), path, encoding=enc)
    _refused_unchanged(
        path, xr.Dataset({"t": ("row", np.array(["NaT"], "M8[ns]"))}), "the values hold NaT"
    )
    spans = tmp_path / "td.bigarray"
    d = np.array([1, 2], "m8[s]").astype("m8[ns]")
    to_bigarray(
        xr.Dataset({"d": ("row", d)}), spans, encoding={"d": {"units": "seconds", "dtype": "i4"}}
    )
    _refused_unchanged(
        spans, xr.Dataset({"d": ("row", np.array(["NaT"], "m8[ns]"))}), "the values hold NaT"
    )
