"""The ``bigarray`` command line: info, verify, rm, compact, convert, cp, demo.

Each subcommand imports what it needs when it runs, so ``bigarray info`` stays quick
and the core never imports dask, xarray or fsspec.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import BigArrayError

if TYPE_CHECKING:
    from .core.legacy import LegacyStore
    from .core.store import StoreReader


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _options(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BigArrayError(f"--storage-options must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise BigArrayError(f"--storage-options must be a JSON object, got {value!r}")
    return value


def _open_any(path: str, options: dict[str, Any] | None) -> StoreReader:
    """A store at a local path (memory-mapped) or any fsspec URL (byte ranges)."""
    from .core.store import open_store

    return open_store(path, storage_options=options)


def _legacy_info(store: LegacyStore, args: argparse.Namespace) -> int:
    """``bigarray info`` of a file written by the 2020 library (read in place)."""
    var = store.variable()
    nbytes = var.row_nbytes * var.rows
    print(f"file       {args.path}")
    print(f"format     {store.describe(args.path)}")
    print(f"variable   {var.name}: {var.dtype.str} {tuple(var.shape)} {_human(nbytes)}, read-only")
    index = store.index
    if index is None:
        print("segments   none (a 2020 MmapArray file)")
    elif len(index):
        lengths = index.stops - index.starts
        print(
            f"segments   {len(index):,}  rows per segment: min {int(lengths.min()):,}, mean "
            f"{float(lengths.mean()):,.1f}, max {int(lengths.max()):,}; first "
            f"{index.arrays.name(0)!r}"
        )
    else:
        print("segments   0")
    if args.json:
        print(json.dumps(store.manifest.to_json(), indent=1))
    store.close()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .core.legacy import LegacyStore

    store = _open_any(args.path, _options(args.storage_options))
    if isinstance(store, LegacyStore):
        return _legacy_info(store, args)
    m = store.manifest
    print(f"store      {args.path}")
    print(f"format     bigarray v1, generation {m.generation}, row dimension {m.row_dim!r}")
    total = 0
    for var in m.variables.values():
        nbytes = var.row_nbytes * var.rows
        total += nbytes
        shards = f", {len(var.shards)} shards" if len(var.shards) > 1 else ""
        print(
            f"variable   {var.name}: {var.dtype.str} {tuple(var.shape)} dims {tuple(var.dims)} "
            f"{_human(nbytes)}{shards}"
        )
    seg = m.segments
    if seg is None:
        print("segments   none (an unnamed array)")
    else:
        index = store.index
        assert index is not None  # the manifest names segments
        bounds = index.bounds
        lengths = bounds[:, 1] - bounds[:, 0]
        print(f"segments   {seg.count:,}", end="")
        if seg.count:
            print(
                f"  rows per segment: min {int(lengths.min()):,}, mean {float(lengths.mean()):,.1f}, "
                f"max {int(lengths.max()):,}; first {index.arrays.name(0)!r}"
            )
        else:
            print()
        runs = seg.all_runs
        sizes = ", ".join(f"{r.count:,}" for r in runs)
        hint = "; `bigarray compact` merges them" if len(runs) > 1 else ""
        print(f"index      {len(runs)} run{'s' if len(runs) > 1 else ''} ({sizes} segments){hint}")
    print(f"data size  {_human(total)}")
    if not store.is_remote:
        from .core.manage import getsize

        on_disk = getsize(args.path)
        print(f"on disk    {_human(on_disk)} ({on_disk:,} bytes, all files; bigarray.getsize)")
    if args.json:
        print(json.dumps(m.to_json(), indent=1))
    store.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import os

    from .core.filesystem import is_local, is_local_url, local_path
    from .core.legacy import check_legacy, is_legacy_file

    local = is_local(args.path)
    # the path as the user gave it (relative paths stay so in the hints), without a scheme
    where = local_path(args.path) if is_local_url(args.path) else args.path
    if local and os.path.isfile(where) and is_legacy_file(where):
        ok, lines = check_legacy(where)
        print(f"bigarray verify {args.path}: {'OK' if ok else 'FAILED'}")
        for line in lines:
            print(f"  {line}")
        return 0 if ok else 1

    if local:
        from .core.filesystem import check_local_options
        from .core.verify import verify_store

        check_local_options(args.path, _options(args.storage_options))
        report = verify_store(where)
    else:
        from .core.remote_verify import verify_remote

        report = verify_remote(args.path, _options(args.storage_options))
    print(report)
    return 0 if report.ok else 1


def cmd_rm(args: argparse.Namespace) -> int:
    from .core.manage import remove

    for path in args.paths:
        remove(path)
        if not args.quiet:
            print(f"removed {path}")
    return 0


def _not_compactable(path: str) -> str | None:
    """Why ``bigarray compact`` cannot work on ``path`` (None: it is a local store)."""
    import os

    from .core.filesystem import is_local, local_path
    from .core.legacy import convert_hint, is_legacy_file
    from .core.store import is_store

    if not is_local(path):
        return (
            f"{path!r} is a URL; compact rewrites a local store's index in place. Copy the "
            "store to a local path (`bigarray cp`), compact it there and copy it back"
        )
    full = local_path(path)
    if not os.path.lexists(full):
        return f"{path!r} does not exist; give the path of a local bigarray store"
    if is_store(full):
        return None
    if os.path.isfile(full) and is_legacy_file(full):
        return (
            f"{path!r} is a file of the 2020 bigarray, which has no index runs to merge; "
            f"convert it to a store first (`{convert_hint(path)}`)"
        )
    kind = (
        "a directory without a valid bigarray manifest"
        if os.path.isdir(full)
        else "not a directory"
    )
    return f"{path!r} is not a local bigarray store ({kind})"


def cmd_compact(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .core.compact import compact
    from .core.filesystem import local_path
    from .core.store import read_manifest

    why = _not_compactable(args.path)
    if why is not None:
        print(f"bigarray compact: {why}", file=sys.stderr)
        return 2
    path = local_path(args.path)
    spec = read_manifest(path).segments
    runs = len(spec.all_runs) if spec is not None else 0
    if spec is None:
        print("no segment index: nothing to compact")
        return 0
    if runs == 1:  # no bar: it would stand empty at 0 segments
        print(f"index      1 run ({spec.count:,} segments): already compact, nothing to do")
        return 0
    desc = f"compact {runs} run{'s' if runs != 1 else ''}"
    with tqdm(unit="seg", unit_scale=True, disable=args.quiet, desc=desc) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        merged = compact(path, progress=progress)
    if merged is None:
        print("no segment index: nothing to compact")
    else:
        print(f"index      1 run ({merged.count:,} segments)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    convert(
        args.src,
        args.dst,
        to=args.to,
        variable=args.variable,
        remove_exist=args.remove_exist,
        progress=not args.quiet,
    )
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from .copy import copy_store

    report = copy_store(
        args.src,
        args.dst,
        src_options=_options(args.src_options),
        dst_options=_options(args.dst_options),
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(size=args.size, workers=args.workers, path=args.path, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigarray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="print variables, dtype, shape, segment count and sizes")
    s.add_argument("path", help="store path or URL")
    s.add_argument("--storage-options", help="fsspec options as JSON (remote URLs)")
    s.add_argument("--json", action="store_true", help="also print the manifest")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("verify", help="check every checksum; report the first bad block")
    s.add_argument("path", help="store path or URL")
    s.add_argument("--storage-options", help="fsspec options as JSON (remote URLs)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("rm", help="delete stores (and 2020 bigarray files); refuses anything else")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--quiet", action="store_true", help="print nothing")
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser(
        "compact", help="merge the runs of a local store's segment index into one (a commit)"
    )
    s.add_argument("path")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_compact)

    s = sub.add_parser(
        "convert",
        help="convert .npy/.npz/HDF5/zarr/netCDF/legacy bigarray into a store, or a store out",
    )
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument(
        "--to",
        choices=["bigarray", "zarr", "netcdf"],
        help="output format (default: bigarray, or zarr/netcdf for a store by DST extension)",
    )
    s.add_argument("--variable", help="which array/dataset of the source to convert")
    s.add_argument(
        "--remove-exist",
        action="store_true",
        help="replace a store at DST (written beside it; anything else at DST is refused)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("cp", help="copy a store between any two URLs, verifying sizes")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--src-options", help="fsspec options for SRC as JSON")
    s.add_argument("--dst-options", help="fsspec options for DST as JSON")
    s.add_argument("--overwrite", action="store_true", help="replace a store at DST")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_cp)

    s = sub.add_parser("demo", help="the end-to-end tour on generated data")
    s.add_argument("--size", choices=["smoke", "default", "large"], default="default")
    s.add_argument("--workers", type=int, default=2, help="dask worker processes")
    s.add_argument("--path", help="where to write the store (default: a temporary dir)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # the benchmarks are a directory of the source checkout, not part of the package
        print(
            "bigarray: there is no `bench` command; run the benchmark suite from the root of "
            "a source checkout with `python -m benchmarks --size W1` (see --list)",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BigArrayError as exc:
        print(f"bigarray {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
