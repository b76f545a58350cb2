"""Remote soak: writers racing on one ``s3://`` URL (moto on 127.0.0.1), random SIGKILLs,
a reader checking every version it sees.

::

    python -m benchmarks.soak --remote 40        # 40 rounds (also: python -m benchmarks.soak_remote)

Each round starts 3 writer processes on the same URL (``to_bigarray``, each with its own
value and segment names, a random half with ``remove_exist=True``) and SIGKILLs a random
one of them at a random moment, while a reader thread opens the store again and again and
checks that every version it reads is whole: all rows hold one writer's value and the
segment names are that writer's (never rows of one under the names of another). At the
end of the round the store holds one writer's version, or none if no writer committed.
The totals: rounds, writers, kills, commits, writers told they lost, versions read and
checked, mixes found (must be 0), objects left by killed writers (not errors: a process
killed before its commit cannot delete what it wrote).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS, SEGMENTS = 2000, 40

_WRITER = r"""
import json, sys
import dask, dask.array as da
from bigarray.dask_backend import to_bigarray
from bigarray.errors import StoreExistsError
url, opts, value, replace = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
rows, n = int(sys.argv[5]), int(sys.argv[6])
step = rows // n
segments = {f"w{int(value)}-{i}": (i * step, (i + 1) * step) for i in range(n)}
dask.config.set(scheduler="threads")
try:
    to_bigarray(da.full((rows, 4), value, chunks=(rows // 8, 4)), url, segments,
                storage_options=opts, remove_exist=replace)
except StoreExistsError:
    sys.exit(3)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(store: Any) -> float:
    """The writer value of a whole version; raises AssertionError on a mix."""
    rows = np.asarray(store.read_rows("data", 0, store.variable().rows))
    value = float(rows[0, 0])
    assert np.all(rows == value), "rows of several writers in one version"
    names = list(store.index.keys())
    assert len(names) == SEGMENTS and all(n.startswith(f"w{int(value)}-") for n in names), (
        f"rows of writer {value} under names {names[:2]}"
    )
    return value


def soak_remote(rounds: int, seed: int = 7) -> dict[str, Any]:
    """Run the remote soak; return (and print) its totals."""
    import logging

    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    from bigarray.core.format import manifest_objects
    from bigarray.core.store import open_store
    from bigarray.errors import StoreChangedError, StoreNotFoundError

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "use_listings_cache": False,
    }
    fs = S3FileSystem(**opts)
    bucket = f"soak-{uuid.uuid4().hex[:8]}"
    fs.call_s3("create_bucket", Bucket=bucket)
    rng = random.Random(seed)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    totals = dict.fromkeys(
        [
            "rounds",
            "writers",
            "kills",
            "commits",
            "lost",
            "reads",
            "read_errors",
            "mixes",
            "orphans",
        ],
        0,
    )
    t0 = time.perf_counter()
    try:
        for r in range(rounds):
            url = f"s3://{bucket}/round{r % 4}.bigarray"  # rounds reuse URLs: replaces too
            stop = threading.Event()

            def reader(url: str = url, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    try:
                        _check(open_store(url, opts))
                        totals["reads"] += 1
                    except (StoreNotFoundError, StoreChangedError):
                        pass  # no store yet, or replaced while being read: reopen
                    except AssertionError:
                        totals["mixes"] += 1
                    except Exception as exc:  # anything else is a finding too
                        totals["read_errors"] += 1
                        print(f"  reader: {type(exc).__name__}: {exc}", flush=True)
                    time.sleep(0.01)

            t = threading.Thread(target=reader)
            t.start()
            procs = []
            for w in range(3):
                value = r * 10 + w + 1
                replace = rng.random() < 0.5
                args = [url, json.dumps(opts), str(value), "1" if replace else "0"]
                args += [str(ROWS), str(SEGMENTS)]
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _WRITER, *args],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )
            victim = rng.randrange(3)
            time.sleep(rng.uniform(0.5, 4.0))
            if procs[victim].poll() is None:
                procs[victim].kill()
                totals["kills"] += 1
            for i, p in enumerate(procs):
                _, err = p.communicate(timeout=300)
                totals["writers"] += 1
                if p.returncode == 0:
                    totals["commits"] += 1
                elif p.returncode == 3:
                    totals["lost"] += 1
                elif not (i == victim and p.returncode < 0):
                    raise RuntimeError(f"writer failed ({p.returncode}): {err.decode()[-1500:]}")
            stop.set()
            t.join()
            try:
                store = open_store(url, opts)
                _check(store)
                fs.invalidate_cache()
                root = url[len("s3://") :]
                named = {f"{root}/{n}" for n in manifest_objects(store.manifest)}
                named.add(f"{root}/manifest.json")
                totals["orphans"] += len(set(fs.find(root)) - named)
            except StoreNotFoundError:
                pass
            except AssertionError:
                totals["mixes"] += 1
            totals["rounds"] += 1
            print(f"  round {r + 1}/{rounds}: {totals}", flush=True)
    finally:
        server.stop()
    totals["seconds"] = round(time.perf_counter() - t0, 1)
    print(
        f"remote soak: {totals['rounds']} rounds, {totals['writers']} writers, "
        f"{totals['kills']} SIGKILLs, {totals['commits']} commits, {totals['lost']} told they "
        f"lost a race, {totals['reads']} versions read and checked, {totals['mixes']} mixed, "
        f"{totals['read_errors']} other read errors, "
        f"{totals['orphans']} objects left by killed writers, {totals['seconds']} s"
    )
    return totals


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("rounds", type=int, nargs="?", default=40)
    args = ap.parse_args(argv)
    totals = soak_remote(args.rounds)
    return 1 if totals["mixes"] or totals["read_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
