"""Where a store lives: removing a store safely and knowing the directory is still ours.

:func:`remove_store` (``remove_exist=True``) refuses a store any live writer session holds
and anything that is not a store; it renames the directory away under the store lock before
deleting it. :func:`locked_here` takes a store's lock and checks that the path still holds
the directory locked (a remover may have renamed it away meanwhile).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator

from ..errors import BigArrayError, NotAStoreError, StoreExistsError
from .fileutil import locked, wrap_os_error
from .format import LOCK_NAME
from .journal import collect_dead_sessions
from .store import interrupted_creation, is_store

__all__ = ["StoreMoved", "locked_here", "remove_store", "replace_empty_file"]


class StoreMoved(Exception):
    """The directory at a store's path is no longer the one whose lock we waited for."""


@contextlib.contextmanager
def locked_here(path: str) -> Iterator[int]:
    """:func:`locked` on ``path``'s store lock, raising :class:`StoreMoved` when, by the time
    the lock is ours, ``path`` no longer holds the directory we locked: a ``remove_exist``
    renames the directory away under its lock (see :func:`remove_store`), and a writer that
    waited on the old lock must not go on in whatever is at ``path`` now (nor re-create
    ``path`` with nothing but its journal in it) without holding that directory's lock."""
    lock = os.path.join(path, LOCK_NAME)
    with contextlib.ExitStack() as stack:
        try:
            fd = stack.enter_context(locked(lock))
        except FileNotFoundError:  # the directory itself is gone
            raise StoreMoved from None
        try:
            here = os.stat(lock)
        except FileNotFoundError:
            raise StoreMoved from None
        mine = os.fstat(fd)
        if (here.st_ino, here.st_dev) != (mine.st_ino, mine.st_dev):
            raise StoreMoved
        yield fd


def remove_store(path: str) -> None:
    """Delete a store directory (or an empty file); refuse anything else, a symbolic link
    included (neither the link nor what it points to is touched), with
    :class:`NotAStoreError`.

    A store that a live writer session holds open (in this or another program) is refused
    with :class:`StoreExistsError`: deleting it would leave that session committing rows
    into files that no longer exist. Otherwise the directory is renamed away under the
    store lock (so no session can start or commit in it meanwhile) and deleted from there.
    """
    if os.path.islink(path):
        # every other entry point refuses a link: replacing it would write the new store
        # where the user expects their link (and, followed, delete what it points to)
        raise NotAStoreError(
            f"remove_exist=True but {path!r} is a symbolic link; refusing to replace it (the "
            "link and what it points to are kept). Write to the store by its own path, or "
            "remove the link yourself."
        )
    if os.path.isdir(path):
        store = is_store(path)  # strict: the manifest parses, not just names the format
        if not store and os.listdir(path) and not interrupted_creation(path):
            raise NotAStoreError(
                f"remove_exist=True but {path!r} is a non-empty directory that is not a "
                "bigarray store (no valid manifest.json); refusing to delete it. Remove it "
                "yourself or pick another path."
            )
        parent, base = os.path.split(os.path.normpath(path))
        tomb = os.path.join(parent, f".{base}.removing-{os.urandom(4).hex()}")
        try:
            with locked(os.path.join(path, LOCK_NAME)):
                live = collect_dead_sessions(path, "")
                if live:
                    raise StoreExistsError(
                        f"remove_exist=True but the store at {path!r} is being written by "
                        f"{live} live writer session(s) (another program, or a writer of this "
                        "one that is still open); refusing to delete it under them. Close "
                        "those writers first, or write to another path."
                    )
                os.rename(path, tomb)
        except BigArrayError:
            raise
        except FileNotFoundError:
            return  # another writer removed it first
        except OSError as exc:
            raise wrap_os_error(exc, path) from None
        # a session that raced us may still drop a file into the renamed directory
        shutil.rmtree(tomb, ignore_errors=True)
    elif os.path.lexists(path):
        st = os.lstat(path)
        if not (stat.S_ISREG(st.st_mode) and st.st_size == 0):
            # an empty regular file (tempfile.mkstemp) is a free location; anything else
            # is the user's (a 2020 file too, as for every other entry point)
            raise NotAStoreError(
                f"remove_exist=True but {path!r} is a "
                f"{'non-empty file' if stat.S_ISREG(st.st_mode) else 'special file'} that is "
                "not a bigarray store; refusing to delete it. Remove it yourself (a file of "
                "the 2020 bigarray: bigarray.remove(path)) or pick another path."
            )
        with contextlib.suppress(FileNotFoundError):  # another writer removed it first
            os.unlink(path)


def replace_empty_file(path: str) -> None:
    """An existing empty regular file (``tempfile.mkstemp()``) is a free location, as in the
    2020 library: remove it so the store directory can take its place."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            with contextlib.suppress(FileNotFoundError):  # a concurrent writer did it first
                os.unlink(path)
