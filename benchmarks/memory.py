"""Peak resident memory of the client process and of ``dask.distributed`` workers.

On Linux the peak ("high water mark", ``VmHWM``) can be reset by writing ``5`` to
``/proc/self/clear_refs``, so one cluster can serve several systems and each still gets its own
peak. Elsewhere we fall back to ``resource.getrusage`` (``ru_maxrss``), which only grows; the
report marks such figures as cumulative.

Note: RSS counts file-backed pages a process has touched through a memory map, so a memmap reader
that streamed 1 GB through its map can show up to that much RSS although it owns none of it; the
kernel drops such pages freely. The figures are still useful to spot a system that *copies* the
data (its anonymous memory grows the same way and cannot be dropped).
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

_CLEAR_REFS = "/proc/self/clear_refs"


def proc_field_kib(field: str, path: str = "/proc/self/status") -> int | None:
    """Return ``field`` (e.g. ``"VmHWM"``) of a ``/proc`` key-value file in KiB, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS; return whether that worked."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        # Not Linux, or /proc not writable (some containers): peaks stay cumulative.
        return False


def peak_rss_bytes() -> int:
    """This process's peak RSS in bytes (since the last :func:`reset_peak_rss` if it worked)."""
    hwm = proc_field_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def current_rss_bytes() -> int:
    """This process's current RSS in bytes."""
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        rss = proc_field_kib("VmRSS")
        return (rss or 0) * 1024


class PeakMemory:
    """Measure peak RSS of the client and of each worker of a ``distributed.Client`` around a block.

    Examples
    --------
    >>> with PeakMemory(client) as mem:  # doctest: +SKIP
    ...     x.sum().compute()
    >>> mem.result()  # doctest: +SKIP
    {'client_peak_rss_mb': 212.3, 'worker_peak_rss_mb': {'tcp://...': 1034.2, ...}, ...}
    """

    def __init__(self, client: Any | None = None) -> None:
        self.client = client
        self.resettable = True
        self.client_peak: int | None = None
        self.worker_peaks: dict[str, int] = {}

    def __enter__(self) -> PeakMemory:
        self.resettable = reset_peak_rss()
        if self.client is not None:
            resets = self.client.run(reset_peak_rss)
            self.resettable = self.resettable and all(resets.values())
        return self

    def __exit__(self, *exc: object) -> None:
        self.client_peak = peak_rss_bytes()
        if self.client is not None:
            self.worker_peaks = dict(self.client.run(peak_rss_bytes))

    def result(self) -> dict[str, Any]:
        """Peaks in MB (1e6 bytes), JSON-able."""
        out: dict[str, Any] = {
            "client_peak_rss_mb": round((self.client_peak or 0) / 1e6, 1),
            "peak_is_cumulative": not self.resettable,
        }
        if self.worker_peaks:
            out["worker_peak_rss_mb"] = {
                addr: round(v / 1e6, 1) for addr, v in sorted(self.worker_peaks.items())
            }
            out["max_worker_peak_rss_mb"] = round(max(self.worker_peaks.values()) / 1e6, 1)
        return out
