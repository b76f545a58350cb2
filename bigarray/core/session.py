"""A writer session's identity: its token, the process that owns it, and its journal.

Every :class:`~bigarray.core.writer.StoreWriter` constructed by user code owns a new
session (a random token; ``journal/<token>/`` in the store holds its records, and its
``owner.lock`` is held while the owner lives). Copies of the writer in other processes
(pickled to a pool or a dask worker, inherited by a fork, attached from a :meth:`handoff`)
are *members*: they write and journal, and only the owner commits. The rules of membership
are in :mod:`bigarray.core.writer`'s docstring; which writer a process uses for a session
is decided in :mod:`bigarray.core.members`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .journal import Journal

__all__ = ["Session"]


class Session:
    """The token, owner process and journal of one writer session of the store at ``path``."""

    def __init__(self, path: str, token: str | None = None, owner_pid: int | None = None) -> None:
        self.path = path
        self.token = token if token is not None else os.urandom(8).hex()
        self.owner_pid = owner_pid if owner_pid is not None else os.getpid()
        self.journal = Journal(path, self.token)

    @classmethod
    def from_handoff(cls, handoff: Mapping[str, Any]) -> Session:
        """The session a :meth:`handoff` describes, as seen by a member process."""
        return cls(str(handoff["path"]), str(handoff["session"]), int(handoff["owner_pid"]))

    def handoff(self) -> dict[str, Any]:
        """JSON-able fields that identify the session to another process."""
        return {"path": self.path, "session": self.token, "owner_pid": self.owner_pid}

    @property
    def is_owner(self) -> bool:
        """True in the process that owns the session (the one that commits)."""
        return os.getpid() == self.owner_pid

    def take_ownership(self) -> None:
        """Make this process the owner (to commit a write whose owner is elsewhere)."""
        self.owner_pid = os.getpid()

    # the journal holds descriptors and locks of the process that opened it: a copy in
    # another process opens its own
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "token": self.token, "owner_pid": self.owner_pid}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["token"], state["owner_pid"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<Session {self.token} of {self.path!r} owner={self.owner_pid}>"
