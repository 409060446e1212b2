"""Which files ``blobsync put`` stores: the regular files named or found under the named
directories, and every entry it cannot store (a FIFO, a dangling symlink, ...) with why."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blobsync.client.localstore import Source


@dataclass(frozen=True)
class Skip:
    """An entry put does not store, and why ("FIFO", "dangling symlink", ...)."""

    path: Path
    reason: str


# put names this many skipped entries on stderr, then only counts the rest.
SKIPS_SHOWN = 20


def collect_files(paths: list[str], skipped: list[Skip] | None = None) -> list[Path]:
    """Regular files named or found under the named directories, in a stable order
    (``collect_sources`` without the sources)."""
    return [path for path, _ in collect_sources(paths, skipped)]


def collect_sources(
    paths: list[str], skipped: list[Skip] | None = None
) -> list[tuple[Path, Source]]:
    """``collect_named`` without the names."""
    return [(path, src) for path, src, _ in collect_named(paths, skipped)]


def base_name(arg: str) -> str:
    """The name part an argument of put gives its files (SPEC 11: paths are relative to
    the parent of the argument): its last part once made absolute, so that ``photos/``,
    ``./x/../photos`` and ``/home/u/photos`` all give ``photos``; empty for ``/``."""
    return meta_safe(os.path.basename(os.path.abspath(arg)))


def meta_safe(name: str) -> str:
    """``name`` as a meta can hold it: a file name that is not UTF-8 (surrogate escapes)
    gets U+FFFD for its bad bytes, rather than failing the put."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "replace")
    return name


def collect_named(
    paths: list[str], skipped: list[Skip] | None = None
) -> list[tuple[Path, Source, str]]:
    """Regular files named or found under the named directories, in a stable order, each
    with its source (absolute path, size, mtime, mode: ``putting.file_source``), taken
    from the open that checks it can be read, and its name (``base_name`` of the argument,
    then the path below it, joined with ``/``). One open and fstat per file is all the walk costs,
    and put does not stat the files again.

    Everything is collected before anything is stored, so a typo in the last argument
    fails the command before it has half done its work. What is there but cannot be
    stored (a FIFO, a socket, a device, a dangling symlink, a symlink to a directory found
    inside a directory, a file or directory that cannot be read) is appended to
    ``skipped``, never silently left out.
    """
    from blobsync.client.localstore import Source

    found: list[tuple[Path, Source, str]] = []
    skips: list[Skip] = [] if skipped is None else skipped
    for name in paths:
        path = Path(name)
        if path.is_dir():
            # A link to a directory named by the user is followed, as ls does; links met
            # inside are not (see _files_under).
            base = base_name(name)
            found.extend(_files_under(path, os.path.abspath(path), base + "/" if base else "",
                                      skips, Source))
        elif path.is_file():
            st = _readable(path, skips)
            if st is not None:
                found.append((path, Source(os.path.abspath(path), st.st_size, st.st_mtime_ns,
                                           st.st_mode & 0o7777), base_name(name)))
        elif not path.exists():
            raise FileNotFoundError(2, "No such file or directory", name)
        else:
            skips.append(Skip(path, _kind(os.stat(path).st_mode)))
    return found


def _files_under(
    root: Path, absolute: str, prefix: str, skipped: list[Skip], source: type[Source]
) -> Iterator[tuple[Path, Source, str]]:
    """Files first, then each subdirectory, in name order (as os.walk top-down); links to
    directories are not followed, so a link to a parent cannot loop. scandir's entries know
    their type without a stat per file, which counts for tens of thousands of small files.
    ``absolute`` is ``root`` made absolute, once: a file's is that and its name;
    ``prefix`` is the name of ``root`` with a ``/``, the same way."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        skipped.append(Skip(root, _reason(exc)))
        return
    subdirs: list[tuple[Path, str, str]] = []
    for entry in entries:
        path = root / entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((path, os.path.join(absolute, entry.name),
                                prefix + meta_safe(entry.name) + "/"))
                continue
            if entry.is_file(follow_symlinks=False):
                st = _readable(entry.path, skipped, path)
            elif entry.is_symlink():
                target = _link_target(path, skipped)
                st = None if target is None else _readable(entry.path, skipped, path)
            else:
                skipped.append(Skip(path, _kind(entry.stat(follow_symlinks=False).st_mode)))
                continue
            if st is not None:
                yield (path, source(os.path.join(absolute, entry.name), st.st_size,
                                    st.st_mtime_ns, st.st_mode & 0o7777),
                       prefix + meta_safe(entry.name))
        except OSError as exc:
            skipped.append(Skip(path, _reason(exc)))
    for subdir, subdir_absolute, subdir_prefix in subdirs:
        yield from _files_under(subdir, subdir_absolute, subdir_prefix, skipped, source)


def _link_target(link: Path, skipped: list[Skip]) -> Path | None:
    """``link`` if it leads to a regular file; else None, its skip recorded."""
    import stat

    try:
        mode = os.stat(link).st_mode
    except FileNotFoundError:
        skipped.append(Skip(link, "dangling symlink"))
        return None
    except OSError as exc:  # a loop of links: ELOOP
        skipped.append(Skip(link, f"symlink: {_reason(exc)}"))
        return None
    if stat.S_ISREG(mode):
        return link
    if stat.S_ISDIR(mode):
        skipped.append(Skip(link, "symlink to a directory, not followed"))
    else:
        skipped.append(Skip(link, f"symlink to a {_kind(mode)}"))
    return None


def _readable(
    name: str | Path, skipped: list[Skip], path: Path | None = None
) -> os.stat_result | None:
    """What fstat says of ``name`` if put can read it: opened now, so that a file it may
    not read is reported (as ``path``, else ``name``) and skipped instead of failing the
    command halfway through; None then. The fstat of the open file is the one stat put
    takes of it."""
    try:
        # O_NONBLOCK: should it have become a FIFO meanwhile, open does not wait for a
        # writer.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        skipped.append(Skip(path if path is not None else Path(name), _reason(exc)))
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not S_ISREG(st.st_mode):  # replaced since it was listed
        skipped.append(Skip(path if path is not None else Path(name), _kind(st.st_mode)))
        return None
    return st


def _kind(mode: int) -> str:
    import stat

    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "not a regular file"


def _reason(exc: OSError) -> str:
    # "permission denied", as ls and cp word it, not Python's "[Errno 13] ...".
    return (exc.strerror or str(exc)).lower()


def report_skips(skipped: list[Skip]) -> None:
    """One stderr line per skipped entry (the first SKIPS_SHOWN), then a count."""
    for skip in skipped[:SKIPS_SHOWN]:
        sys.stderr.write(f"blobsync: skipped {skip.path}: {skip.reason}\n")
    if len(skipped) > SKIPS_SHOWN:
        sys.stderr.write(f"blobsync: skipped {len(skipped) - SKIPS_SHOWN} more "
                         "(--json lists them all)\n")
    sys.stderr.flush()
