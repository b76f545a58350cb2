"""xarray's own backend test suite, run against ``engine="bigarray"``.

xarray ships generic round-trip tests for its engines (``DatasetIOBase`` and
``CFEncodedBase`` in ``xarray/tests/test_backends.py`` of the installed package); its zarr,
scipy, netCDF4 and h5netcdf engines subclass them. Here they are subclassed twice, as
xarray does: :class:`TestBigArrayData` opens with numpy-backed lazy arrays,
:class:`TestBigArrayViaDaskData` opens through dask (``chunks={}``). Writing goes through
:func:`bigarray.xarray_backend.to_bigarray`, i.e. xarray's CF encoders and
``BigArrayStore``.

Exclusions (each holds for any engine that stores rows the way a bigarray store does):

``test_encoding_unlimited_dims``
    netCDF unlimited dimensions do not exist here: every dimension can grow along the
    row dim with ``mode="a"``, and there is no ``unlimited_dims`` setting to round-trip
    (xarray's zarr engine skips it for the same reason).
``test_append_overwrite_values``
    ``mode="a"`` never rewrites committed values: a store is append-only (new rows along
    the row dim, new variables); rewriting ``var2`` in place is refused with a
    ``SchemaError`` that says so, and the test expects the rewrite to succeed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

xr = pytest.importorskip("xarray")
backends = pytest.importorskip("xarray.tests.test_backends")

from bigarray.xarray_backend import BigArrayStore, to_bigarray  # noqa: E402

try:
    import pytest_asyncio  # noqa: F401  (runs the inherited async test_load_async)

    HAS_PYTEST_ASYNCIO = True
except ImportError:
    HAS_PYTEST_ASYNCIO = False

EXCLUDED = {
    "test_encoding_unlimited_dims": "netCDF unlimited dimensions do not exist in this format",
    "test_append_overwrite_values": "mode='a' never rewrites committed values (append-only)",
}


def _tmp_store() -> Any:
    return backends.create_tmp_file(suffix=".bigarray")


class TestBigArrayData(backends.CFEncodedBase):
    """``CFEncodedBase`` (and ``DatasetIOBase``) with numpy-backed lazy arrays."""

    engine = "bigarray"
    file_format = None

    @contextlib.contextmanager
    def create_store(self) -> Iterator[Any]:
        with _tmp_store() as path, BigArrayStore(path, mode="w") as store:
            yield store

    def save(self, dataset: Any, path: Any, **kwargs: Any) -> Any:
        return to_bigarray(dataset, path, **kwargs)

    @contextlib.contextmanager
    def open(self, path: Any, **kwargs: Any) -> Iterator[Any]:
        with xr.open_dataset(path, engine="bigarray", **kwargs) as ds:
            yield ds

    @contextlib.contextmanager
    def roundtrip(
        self,
        data: Any,
        save_kwargs: Any = None,
        open_kwargs: Any = None,
        allow_cleanup_failure: bool = False,
    ) -> Iterator[Any]:
        with _tmp_store() as path:
            self.save(data, path, **(save_kwargs or {}))
            with self.open(path, **(open_kwargs or {})) as ds:
                yield ds

    @contextlib.contextmanager
    def roundtrip_append(
        self,
        data: Any,
        save_kwargs: Any = None,
        open_kwargs: Any = None,
        allow_cleanup_failure: bool = False,
    ) -> Iterator[Any]:
        with _tmp_store() as path:
            for i, key in enumerate(data.variables):
                self.save(data[[key]], path, mode="a" if i else "w", **(save_kwargs or {}))
            with self.open(path, **(open_kwargs or {})) as ds:
                yield ds

    if not HAS_PYTEST_ASYNCIO:

        @pytest.mark.skip(reason="needs pytest-asyncio (the project's [test] extra)")
        def test_load_async(self) -> None:
            pass

    @pytest.mark.skip(reason=EXCLUDED["test_encoding_unlimited_dims"])
    def test_encoding_unlimited_dims(self) -> None:
        pass

    @pytest.mark.skip(reason=EXCLUDED["test_append_overwrite_values"])
    def test_append_overwrite_values(self) -> None:
        pass


class TestBigArrayViaDaskData(TestBigArrayData):
    """The same suite, opened through dask (``chunks={}``: segment-aligned chunks)."""

    @contextlib.contextmanager
    def roundtrip(
        self,
        data: Any,
        save_kwargs: Any = None,
        open_kwargs: Any = None,
        allow_cleanup_failure: bool = False,
    ) -> Iterator[Any]:
        open_kwargs = dict(open_kwargs or {})
        open_kwargs.setdefault("chunks", {})
        with TestBigArrayData.roundtrip(self, data, save_kwargs, open_kwargs) as ds:
            yield ds

    @pytest.mark.skip(reason="caching differs for dask (xarray skips it for its engines too)")
    def test_dataset_caching(self) -> None:
        pass


def test_store_path_is_a_directory_under_tmp() -> None:
    with _tmp_store() as path:
        assert not os.path.exists(path)


# fixtures of xarray's own conftest that the inherited tests take
@pytest.fixture(params=["s", "ms", "us", "ns"])
def time_unit(request: Any) -> Any:
    return request.param


@pytest.fixture(params=[False, True], ids=["numpy", "dask"])
def use_dask(request: Any) -> Any:
    return request.param
