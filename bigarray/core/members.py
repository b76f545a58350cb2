"""Which writer a process uses for a session: the owner itself where it was created, an
attached member copy elsewhere, and a spawned child joining its parent's session.

Membership is explicit (see :mod:`bigarray.core.writer`): a writer pickled to a worker, a
task given a session's :meth:`~bigarray.core.writer.StoreWriter.handoff`, or a
``multiprocessing`` spawn/forkserver child re-importing ``__main__`` while its owner lives.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..errors import BigArrayError
from .writer import StoreWriter

__all__ = ["OWNERS", "descends_from", "join_parent_session", "writer_here"]

MAX_ATTACHED = 64  # attached member writers kept per process (one per session)


def join_parent_session(env: str) -> StoreWriter | None:
    """The parent's writer, when this process is a ``multiprocessing`` child of the
    process that owns it, re-importing the main module (spawn, forkserver).

    Membership is explicit: only while multiprocessing bootstraps this child (it sets
    ``_inheriting`` while it re-imports ``__main__``) does the inherited variable count, and
    the owner must be an ancestor. Any other program that merely inherited the environment
    (``subprocess.run``, a later script) creates its own writer, owner of its own session.
    A child of an owner whose session has ended joins it closed: its writes raise
    :class:`~bigarray.errors.ClosedError` rather than being lost.
    """
    raw = os.environ.get(env)
    if raw is None:
        return None
    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return None
    try:
        handoff = json.loads(raw)
        owner = int(handoff["owner_pid"])
        if owner == os.getpid() or not descends_from(owner):
            return None
        return StoreWriter.attach(handoff)
    except (ValueError, KeyError, TypeError, BigArrayError):
        return None


def descends_from(pid: int) -> bool:
    current = os.getppid()
    for _ in range(8):
        if current == pid:
            return True
        if current <= 1:
            return False
        try:
            with open(f"/proc/{current}/stat", "rb") as f:
                current = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return "__mp_main__" in sys.modules
    return False


# ============================================================== tasks of a session
class AttachedWriters:
    """Per-process cache of non-owner writers, one per writer session, so tasks of the same
    write attach once per process. A worker copy opens the data file for each write and
    closes it after (see :meth:`StoreWriter.write_rows`): a cached writer holds no
    descriptor, and the threads of a worker share it safely."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[int, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, handoff: Mapping[str, Any]) -> Any:
        key = (os.getpid(), str(handoff["session"]))
        with self._lock:
            w = self._items.get(key)
            if w is not None:
                self._items.move_to_end(key)
                return w
        w = StoreWriter.attach(handoff)
        evicted = []
        with self._lock:
            self._items.setdefault(key, w)
            w = self._items[key]
            while len(self._items) > self.capacity:
                evicted.append(self._items.popitem(last=False)[1])
        for e in evicted:
            with contextlib.suppress(BigArrayError, OSError):
                e.close()  # a non-owner close only releases its descriptor
        return w


ATTACHED = AttachedWriters(MAX_ATTACHED)


#: The writers created in this process, by session: a copy of one that comes back here
#: (a target unpickled in its own creating process) must write through the original,
#: whose in-memory records the commit reads.
OWNERS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def writer_here(writer: Any) -> Any:
    """The writer to use in this process for ``writer`` (a StoreWriter or its handoff):
    the owner itself in the creating process, elsewhere this process's attached copy of
    the session (a pickled writer would open a descriptor per task)."""
    handoff = writer if isinstance(writer, Mapping) else writer.handoff()
    if int(handoff["owner_pid"]) == os.getpid():
        original = OWNERS.get(str(handoff["session"]))
        if original is not None:
            return original
        if isinstance(writer, Mapping):
            raise BigArrayError(
                f"the writer of {handoff['path']!r} was closed or garbage-collected in this "
                "process before its tasks ran; keep the target (or writer) alive until the "
                "computation finished and close() it afterwards"
            )
        OWNERS[str(handoff["session"])] = writer
        return writer
    return ATTACHED.get(handoff)
