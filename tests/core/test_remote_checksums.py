"""Sharded writes record checksums; ``verify`` checks them (local path and moto S3).

The blocks of a variable written shard by shard are cut per shard (each shard's rows in
blocks of ``block_rows`` from its own first row), so a one-shard variable has the grid every
local store has, and a store of the format before sharded checksums still verifies.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarray.core.filesystem import FileAccess
from bigarray.core.format import MANIFEST_NAME
from bigarray.core.integrity import DataChecksums, block_rows_for, block_spans
from bigarray.core.remote_verify import verify_remote
from bigarray.core.store import open_store
from bigarray.core.verify import verify_store

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

WIDTH = 1024  # 8 KiB rows of float64: 128 rows per checksummed block
LENGTHS = [150, 90, 300, 40, 260, 175]  # segments; shards of ~300 rows end on their bounds


def data_and_segments() -> tuple[np.ndarray, dict[str, int]]:
    rows = sum(LENGTHS)
    data = np.arange(rows * WIDTH, dtype="f8").reshape(rows, WIDTH)
    return data, {f"s{i}": n for i, n in enumerate(LENGTHS)}


def write_sharded(url: str, options: dict[str, Any] | None) -> np.ndarray:
    from bigarray.dask_backend import to_bigarray_sharded

    data, segments = data_and_segments()
    to_bigarray_sharded(
        da.from_array(data, chunks=(300, WIDTH)), url, segments, storage_options=options
    )
    return data


@pytest.fixture()
def bucket(s3_options: dict[str, Any]) -> str:
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(**s3_options)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.call_s3("create_bucket", Bucket=name)
    fs.invalidate_cache()
    return name


def flip_byte(access: FileAccess, rel: str, pos: int) -> None:
    raw = bytearray(access.cat(rel))
    raw[pos] ^= 0xFF
    access.pipe(rel, bytes(raw))
    access.invalidate()


def verify(url: str, options: dict[str, Any] | None) -> Any:
    return verify_store(url) if options is None else verify_remote(url, options)


@pytest.fixture(params=["local", "s3"])
def where(
    request: pytest.FixtureRequest, tmp_path: Path, client: Any
) -> tuple[str, dict[str, Any] | None]:
    if request.param == "local":
        return str(tmp_path / "x.bigarray"), None
    b = request.getfixturevalue("bucket")
    return f"s3://{b}/x.bigarray", request.getfixturevalue("s3_options")


def test_sharded_write_records_per_shard_block_sums_and_verifies(
    where: tuple[str, dict[str, Any] | None],
) -> None:
    url, options = where
    write_sharded(url, options)
    var = open_store(url, options).manifest.variables["data"]
    assert len(var.shards) > 1
    assert var.checksums is not None and var.checksums["index"]["files"]
    sums = DataChecksums.from_json(var.checksums, "x", var.shards)
    br = block_rows_for(var.row_nbytes)
    assert sums.block_rows == br == 128
    spans = block_spans(var.shards, br)
    assert sums.nblocks == len(spans) > -(-var.rows // br)  # a short block per shard
    report = verify(url, options)
    assert report.ok, str(report)
    assert report.blocks_checked == len(spans)
    assert not [n for n in report.notes if "checksums" in n], report.notes


def test_a_flipped_byte_in_a_shard_is_reported_with_its_block(
    where: tuple[str, dict[str, Any] | None],
) -> None:
    url, options = where
    write_sharded(url, options)
    var = open_store(url, options).manifest.variables["data"]
    shard = var.shards[1]
    rb = var.row_nbytes
    row = shard.start + 130  # the second block of the second shard
    flip_byte(FileAccess(url, options), shard.path, shard.offset + (row - shard.start) * rb + 3)
    report = verify(url, options)
    assert not report.ok
    bad = report.first_bad_block
    assert bad is not None and bad.file == shard.path
    spans = block_spans(var.shards, 128)
    assert spans[bad.block] == (1, shard.start + 128, shard.start + 256)
    assert bad.rows == (shard.start + 128, shard.start + 256)
    assert report.bad_block_count == 1
    assert shard.path in str(report)
    # the segments touching it are named, local and remote alike
    index = open_store(url, options).index
    assert index is not None
    a, b = bad.rows
    touching = [n for n, (s0, s1) in index.items() if s0 < b and s1 > a and s1 > s0]
    assert touching and bad.segments == touching[:20] and bad.segments_total == len(touching)
    assert repr(touching[0]) in str(report)


def test_a_flipped_byte_in_an_index_file_is_reported(
    where: tuple[str, dict[str, Any] | None],
) -> None:
    url, options = where
    write_sharded(url, options)
    spec = open_store(url, options).manifest.segments
    assert spec is not None
    rel = spec.files["bounds"]
    flip_byte(FileAccess(url, options), rel, spec.offsets["bounds"] + 1)
    report = verify(url, options)
    assert not report.ok
    assert any(rel in p and "bounds" in p for p in report.problems), str(report)


def test_a_store_without_sharded_checksums_still_verifies(
    where: tuple[str, dict[str, Any] | None],
) -> None:
    """A store of the format before this change (sharded, no checksums) verifies as before."""
    url, options = where
    write_sharded(url, options)
    access = FileAccess(url, options)
    manifest = json.loads(access.cat(MANIFEST_NAME))
    del manifest["variables"]["data"]["checksums"]
    access.pipe(MANIFEST_NAME, json.dumps(manifest).encode())
    access.invalidate()
    report = verify(url, options)
    assert report.ok, str(report)
    assert any("no recorded checksums" in n for n in report.notes)


def test_one_shard_sums_are_the_local_grid(tmp_path: Path) -> None:
    """A one-shard sharded variable has exactly the block sums of a local store's grid."""
    from bigarray import PointerArrayWriter

    data, segments = data_and_segments()
    with dask.config.set(scheduler="threads"):
        from bigarray.dask_backend import to_bigarray_sharded

        to_bigarray_sharded(
            da.from_array(data, chunks=(len(data), WIDTH)), str(tmp_path / "a"), segments
        )
    with PointerArrayWriter(str(tmp_path / "b"), dtype="f8") as w:
        pos = 0
        for name, n in segments.items():
            w.write({name: data[pos : pos + n]})
            pos += n
    a = open_store(str(tmp_path / "a"), None).manifest.variables["data"]
    b = open_store(str(tmp_path / "b"), None).manifest.variables["data"]
    assert len(a.shards) == 1
    assert a.checksums is not None and b.checksums is not None
    assert a.checksums["blocks"] == b.checksums["blocks"]
    assert verify_store(str(tmp_path / "a")).ok
    assert os.path.isdir(tmp_path / "a" / "shards")


def test_a_copied_store_verifies_at_its_destination(
    tmp_path: Path, bucket: str, s3_options: dict[str, Any], client: Any
) -> None:
    """``bigarray cp`` renames every file (its session in the name): the checksums that name
    files (layout, index spec) follow, so the copy verifies as its source does."""
    from bigarray import PointerArrayWriter
    from bigarray.copy import copy_store

    local = str(tmp_path / "local.bigarray")
    with PointerArrayWriter(local, dtype="f8") as w:
        w.write({f"s{i}": np.full((300, 8), i, "f8") for i in range(10)})
    sharded = f"s3://{bucket}/sharded.bigarray"
    write_sharded(sharded, s3_options)
    copies = [
        (local, None, f"s3://{bucket}/from-local.bigarray", s3_options),
        (sharded, s3_options, str(tmp_path / "from-s3.bigarray"), None),
        (sharded, s3_options, f"s3://{bucket}/from-s3.bigarray", s3_options),
    ]
    for src, src_opts, dst, dst_opts in copies:
        copy_store(src, dst, src_options=src_opts, dst_options=dst_opts, progress=False)
        report = verify(dst, dst_opts)
        assert report.ok, str(report)
        assert report.blocks_checked > 0
        assert not [n for n in report.notes if "checksums" in n], report.notes


@pytest.mark.parametrize(
    "shape", [(10, 0), (0, 3), (10,), (300_000, 8)], ids=["zero-width", "empty", "1d", "big"]
)
def test_sharded_checksums_of_odd_shapes_verify(tmp_path: Path, shape: tuple[int, ...]) -> None:
    from bigarray.dask_backend import to_bigarray_sharded

    data = np.arange(int(np.prod(shape)), dtype="f8").reshape(shape)
    chunks = max(1, shape[0] // 3)
    for url in (str(tmp_path / "x"), f"memory://odd-{uuid.uuid4().hex[:8]}/x"):
        with dask.config.set(scheduler="threads"):
            to_bigarray_sharded(da.from_array(data, chunks=(chunks, *shape[1:])), url)
        report = verify_store(url) if "://" not in url else verify_remote(url)
        assert report.ok, str(report)
        var = open_store(url, None).manifest.variables["data"]
        assert var.checksums is not None
        assert report.blocks_checked == len(block_spans(var.shards, block_rows_for(var.row_nbytes)))
