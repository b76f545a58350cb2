"""The storage core: the on-disk format, the segment index, file access (local and fsspec),
the journal, checksums, the readers, verification, the one commit and the writers.

It imports numpy, fsspec and :mod:`bigarray.errors`, never dask, xarray, distributed, tqdm
or any module above it (the faces :mod:`bigarray.arrays`, :mod:`bigarray.lazy`,
:mod:`bigarray.dask_backend`, :mod:`bigarray.xarray_backend`, :mod:`bigarray.torch`, and
the tools built on them). ``tests/test_layout.py`` keeps it that way.
"""
