"""Where a tool writes a new store (or export): one rule for taking a local path.

:func:`prepare_destination` decides once, before anything is written, whether a path may
receive a write, and returns a :class:`Destination` that is written beside the path and
switched into place at the end (the replace-beside staging of :mod:`bigarray.core.commit`):

- nothing there, an empty directory, an empty file (from ``mkstemp()``) or what a writer
  killed while creating a store left: free;
- a bigarray store (a directory whose manifest parses as one, not merely names the
  format), or what the caller says it replaces (``replaceable``: a zarr group holding
  nothing but zarr's files for a zarr export, a netCDF file for a netCDF one): replaced
  only when asked (``replace=True``), never under a live writer session. Readers keep
  seeing the old one, whole, until the new one lands; a write that fails or is killed
  leaves it as it was;
- anything else (a user's file, a directory that is not a store, a symbolic link):
  refused with :class:`~bigarray.errors.NotAStoreError`, and never deleted.

The tools keep the keyword their users know (``remove_exist`` for the converters and
writers, ``overwrite`` for ``copy_store``/``bigarray cp``): it is the ``replace`` here,
and ``option`` is how the error messages name it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import NotAStoreError, StoreExistsError
from .cache import OPEN_STORES
from .commit import move_into_place, refuse_live_writers, remove_path, staging_path
from .filesystem import is_local, local_path
from .store import interrupted_creation, is_store

__all__ = ["Destination", "prepare_destination"]


@dataclass(frozen=True)
class Destination:
    """A local path prepared for a write: write to :attr:`staging`, then :meth:`commit`
    (or :meth:`abandon` on failure).

    Attributes
    ----------
    path
        The destination, absolute.
    staging
        A new sibling of ``path`` (nothing there yet) where the write goes.
    replacing
        Whether something (a store, or a free leftover) stands at ``path`` now.
    """

    path: str
    staging: str
    replacing: bool

    def commit(self, *, keep_on_refusal: bool = False) -> None:
        """Put the finished write at :attr:`path`: one rename, or an atomic exchange with
        the store it replaces (deleted after). Refused, and the write removed (kept with
        ``keep_on_refusal``, to try again), when something that may not be replaced
        appeared at ``path`` meanwhile or a live writer session holds the old store."""
        move_into_place(
            self.staging, self.path, replacing=self.replacing, keep_on_refusal=keep_on_refusal
        )
        if self.replacing:
            # readers this process cached of the old store would pin its deleted files
            OPEN_STORES.release(self.path)

    def abandon(self) -> None:
        """Delete the unfinished write; :attr:`path` is left as it was."""
        remove_path(self.staging)


def _free(path: str, st: os.stat_result) -> bool:
    """An empty directory or file, or the leftovers of a killed store creation."""
    if stat.S_ISDIR(st.st_mode):
        try:
            return not os.listdir(path) or (not is_store(path) and interrupted_creation(path))
        except OSError:
            return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def prepare_destination(
    dst: str | os.PathLike[str],
    replace: bool,
    *,
    option: str = "remove_exist=True",
    replaceable: Callable[[str], bool] | None = None,
    check_only: bool = False,
) -> Destination:
    """Check that ``dst`` may receive a new store and say where to write it.

    Parameters
    ----------
    dst
        A local path (or ``file://`` URL).
    replace
        Replace what stands at ``dst`` when it is a bigarray store (or ``replaceable``).
    option
        How the caller's users ask for ``replace`` (for the error messages).
    replaceable
        Recognises what else the caller may replace when asked (an export's own format:
        a zarr group, a netCDF file); a bigarray store always is.
    check_only
        Only check (a write planned now and run later, ``compute=False``): nothing on disk
        is touched, and the returned destination has no staging path yet.

    Returns
    -------
    Destination
        Write to ``.staging``, then call ``.commit()``; ``.abandon()`` on failure.

    Raises
    ------
    StoreExistsError
        A store stands at ``dst`` and ``replace`` is false, or a live writer session
        holds it open.
    NotAStoreError
        Something else stands at ``dst`` (a file, a directory that is not a store, a
        symbolic link): it is never replaced nor deleted.

    Examples
    --------
    >>> dest = prepare_destination("out.bigarray", replace=True)   # doctest: +SKIP
    >>> write_store(dest.staging); dest.commit()                   # doctest: +SKIP
    """
    if not is_local(dst):
        raise NotAStoreError(
            f"{os.fspath(dst)!r} is not a local path; this tool writes local stores only. "
            "Write locally, then copy with `bigarray cp`."
        )
    path = local_path(dst)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    replacing = False
    if st is not None:
        ours = stat.S_ISDIR(st.st_mode) and is_store(path)
        theirs = (
            not ours
            and replaceable is not None
            and not stat.S_ISLNK(st.st_mode)
            and replaceable(path)
        )
        if ours or theirs:
            what = "a bigarray store" if ours else "a file or directory this write replaces"
            if not replace:
                raise StoreExistsError(
                    f"{what} at {path!r} already exists; pass {option} to replace it, or "
                    "write to another path"
                )
            if ours:
                refuse_live_writers(path)  # early: the switch checks again
        elif not _free(path, st):
            kind = (
                "a symbolic link"
                if stat.S_ISLNK(st.st_mode)
                else "a non-empty directory that is not a bigarray store"
                if stat.S_ISDIR(st.st_mode)
                else "a file that is not a bigarray store"
            )
            only = (
                "a bigarray store, or an output of this export's own format that holds "
                "nothing else,"
                if replaceable is not None
                else "a bigarray store"
            )
            raise NotAStoreError(
                f"{path!r} is {kind}; refusing to replace it{' even with ' + option if replace else ''} "
                f"(only {only} is replaced, and nothing else is ever deleted). Remove "
                "it yourself, or write to another path."
            )
        replacing = True
    if check_only:
        return Destination(path, "", replacing)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return Destination(path, staging_path(path), replacing)
