"""Delete and size a store: what ``os.remove`` and ``os.path.getsize`` did for a 2020 file.

A store is a directory, so ``os.remove(path)`` raises ``IsADirectoryError`` and
``os.path.getsize(path)`` gives the size of the directory entry (4096), not of the data.
:func:`remove` and :func:`getsize` take the same argument and do what those did on the
2020 library's single file; ``bigarray rm PATH`` and ``bigarray info PATH`` are the
command-line faces.
"""

from __future__ import annotations

import os
import shutil
import stat

from ..errors import BigArrayError, NotAStoreError, StoreNotFoundError

__all__ = ["getsize", "remove"]


def _local(path: str | os.PathLike[str], what: str) -> str:
    from .filesystem import is_local, local_path

    if not is_local(path):
        raise BigArrayError(
            f"bigarray.{what} works on local stores, not {os.fspath(path)!r}; remove or size a "
            "store in an object store with its own tools (fsspec: fs.rm(url, recursive=True), "
            "fs.du(url))"
        )
    return local_path(path)


def _kind(path: str) -> str:
    """``"store"``, ``"legacy"`` (a 2020 file) or ``"partial"`` (a directory a writer killed
    while creating the store left, with nothing committed); anything else raises."""
    from .legacy import is_legacy_file
    from .store import interrupted_creation, is_store

    if not os.path.lexists(path):
        raise StoreNotFoundError(f"no bigarray store at {path!r}: the path does not exist")
    if os.path.isdir(path):
        if is_store(path):
            return "store"
        # only lock, index and journal leftovers: a directory holding .npy files of any
        # name might be the user's, and deleting on a guess is never right
        if (
            os.listdir(path)
            and interrupted_creation(path)
            and not any(n.endswith(".npy") for n in os.listdir(path))
        ):
            return "partial"
        raise NotAStoreError(
            f"{path!r} is a directory but not a bigarray store ({_no_manifest(path)}); "
            "refusing to touch it. Delete it yourself if it is yours."
        )
    if os.path.isfile(path) and is_legacy_file(path):
        return "legacy"
    raise NotAStoreError(
        f"{path!r} is not a bigarray store (a store is a directory holding manifest.json; a "
        "2020 bigarray file starts with b'mmapdata'); refusing to touch it"
    )


def _no_manifest(path: str) -> str:
    """Why the directory ``path`` is not a store: no manifest, or the parser's reason."""
    from .format import MANIFEST_NAME
    from .store import read_manifest

    if not os.path.lexists(os.path.join(path, MANIFEST_NAME)):
        return f"no {MANIFEST_NAME}"
    try:
        read_manifest(path)
    except BigArrayError as exc:
        return f"its {MANIFEST_NAME} is not a valid bigarray manifest: {exc}"
    return "it changed while being checked"


def _sound_legacy(path: str) -> None:
    """Refuse to delete a file that starts with the 2020 magic but does not read as a
    2020 file: only the magic says it is one, and 8 bytes are no proof."""
    from .legacy import check_legacy

    ok, lines = check_legacy(path)
    if not ok:
        raise NotAStoreError(
            f"{path!r} starts with the 2020 bigarray magic b'mmapdata' but is not a valid "
            f"2020 bigarray file ({lines[-1]}); refusing to delete it. Delete it yourself "
            "if it is yours."
        )


def remove(path: str | os.PathLike[str]) -> None:
    """Delete the store at ``path`` (its directory and every file in it).

    The replacement for ``os.remove(path)`` on a 2020 bigarray file (which it also deletes).
    A store is a directory whose ``manifest.json`` parses as a bigarray manifest, a 2020
    file one that reads as such (not merely one starting with ``b"mmapdata"``). Anything
    that is neither a store nor a 2020 file is refused with
    :class:`~bigarray.errors.NotAStoreError`, so a wrong path never deletes a directory of
    yours; a missing path raises :class:`~bigarray.errors.StoreNotFoundError` (a
    ``FileNotFoundError``). A symlink to a store is removed itself, as ``os.remove`` would.

    Arrays already open keep reading the deleted files until they are closed (the mapped
    pages stay valid); a writer still writing into the store loses what it had not committed.
    """
    full = _local(path, "remove")
    kind = _kind(full)
    if kind == "store" and not os.path.islink(full):
        _refuse_live_writers(full)
    if kind == "legacy" and not os.path.islink(full):
        _sound_legacy(full)
    if os.path.islink(full) or kind == "legacy":
        os.remove(full)
        return
    try:
        shutil.rmtree(full)
    except FileNotFoundError:  # removed concurrently: it is gone, as asked
        pass
    except OSError as exc:
        from .fileutil import wrap_os_error

        raise wrap_os_error(exc, full) from None


def _refuse_live_writers(path: str) -> None:
    """Refuse to delete a store an open writer session (of this or another program) is
    writing: its next commit would find the store gone."""
    from ..errors import StoreExistsError
    from .fileutil import locked
    from .format import LOCK_NAME
    from .journal import collect_dead_sessions

    try:
        with locked(os.path.join(path, LOCK_NAME)):
            live = collect_dead_sessions(path, "")
    except FileNotFoundError:  # removed meanwhile
        return
    if live:
        raise StoreExistsError(
            f"refusing to remove the store at {path!r}: {live} open writer session(s) (of "
            "this or another program) are writing it. Close those writers first."
        )


def getsize(path: str | os.PathLike[str]) -> int:
    """Bytes the store at ``path`` occupies: the sizes of all its files added up.

    The replacement for ``os.path.getsize(path)`` on a 2020 bigarray file (whose size it
    also returns). Like ``os.path.getsize``, this is the files' apparent size: data files
    are preallocated, so it can exceed the committed data (``bigarray info`` prints both).
    Symlinks are counted as links, never followed.
    """
    full = _local(path, "getsize")
    kind = _kind(full)
    if kind == "legacy":
        return os.path.getsize(full)
    total = 0
    root = os.path.realpath(full) if os.path.islink(full) else full
    stack = [root]
    while stack:
        where = stack.pop()
        try:
            it = os.scandir(where)
        except FileNotFoundError:
            if where == root:
                raise
            continue  # a writer session's journal directory, ended while we listed
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed by a commit while we listed
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total
