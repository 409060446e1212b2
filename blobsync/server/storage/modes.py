"""Everything the server writes is private to its user, whatever the umask.

Directories are 0700 and files 0600: a data dir holds the index (token hashes, blob ids,
flags) and the sealed payloads, none of which another local user has any business reading.
Modes given to ``mkdir``/``open`` are only narrowed by the umask, so new files come out
right by themselves; what these helpers add is the same for things made with default
modes (SQLite's files, ``os.makedirs``'s parents) and for data dirs written by an older
blobsync, whose modes are tightened when a server opens them.
"""

from __future__ import annotations

import contextlib
import os
import stat

DIR_MODE = 0o700
FILE_MODE = 0o600


def tighten(path: str | os.PathLike[str], mode: int) -> None:
    """Take away every permission bit of ``path`` that ``mode`` lacks (never add one).

    Missing paths and paths that are not ours (EPERM) are left alone: tightening is a
    safeguard, not something to refuse to start over.
    """
    with contextlib.suppress(FileNotFoundError, PermissionError):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return  # a link's own mode means nothing; its target is not ours to change
        current = stat.S_IMODE(st.st_mode)
        if current & ~mode:
            os.chmod(path, current & mode)


def private_dir(path: str | os.PathLike[str]) -> None:
    """Create ``path`` (and missing parents) as 0700, or tighten it if it exists.

    Parents that did not exist are made 0700 too: ``os.makedirs`` would give them the
    umask's default (0755 with the usual 022).
    """
    path = os.path.abspath(os.fspath(path))
    missing: list[str] = []
    probe = path
    while not os.path.isdir(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)
    tighten(path, DIR_MODE)


def private_file(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty as 0600 if it is missing (True), else tighten it (False)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        tighten(path, FILE_MODE)
        return False
    return True


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable (a new or renamed file's name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
