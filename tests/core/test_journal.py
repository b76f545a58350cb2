"""Journal records: what a writer process tells the committing process."""

from __future__ import annotations

import numpy as np
import pytest

from bigarray.core.index import SegmentArrays
from bigarray.core.integrity import WrittenSums
from bigarray.core.journal import Record, decode_record, encode_record
from bigarray.errors import StoreCorruptedError


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.parametrize("with_sums", [True, False])
def test_record_round_trip(named: bool, with_sums: bool) -> None:
    starts = np.array([10, 20, 35], np.int64)
    stops = np.array([20, 35, 36], np.int64)
    seg = SegmentArrays.from_names(["a", "bé", "c"], starts, stops) if named else None
    sums = WrittenSums(4, np.array([3, 4, 5], np.int64), np.array([7, 8, 2**32 - 1], np.uint32))
    rec = Record("data", seg, 36, 10, sums if with_sums else None, data=not named)
    raw = encode_record(rec, starts, stops)
    got = decode_record(raw, "r")
    assert (got.variable, got.stop, got.start) == ("data", 36, 10)
    assert got.data is (not named)  # a names-only record says it wrote no data
    if named:
        assert got.segments is not None and got.segments.count == 3
        assert got.segments.bounds.tolist() == [[10, 20], [20, 35], [35, 36]]
    else:
        assert got.segments is None
    if with_sums:
        assert got.sums is not None and got.sums.block_rows == 4
        assert got.sums.blocks.tolist() == [3, 4, 5]
        assert got.sums.crcs.tolist() == [7, 8, 2**32 - 1]
    else:
        assert got.sums is None
    with pytest.raises(StoreCorruptedError, match="damaged"):
        decode_record(raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:], "r")
