"""Import a Soledad server's blobs directory into any blobsync store.

Soledad's filesystem backend (``leap.soledad.server._blobs.fs_backend``) keeps:

- a blob at ``{root}/{user}/{namespace}/{id[0]}/{id[0:3]}/{id[0:6]}/{id}``, where a request
  without a namespace uses the directory ``default``; its pre-release versions kept the
  default namespace one level higher, ``{root}/{user}/{id[0]}/{id[0:3]}/{id[0:6]}/{id}``,
  which is read too;
- its flags in ``{path}.flags``, the JSON list written by ``set_flags``;
- a deletion as an empty ``{path}.deleted`` touched before the blob is unlinked. Soledad
  never removed it when the id was created again, so a ``.deleted`` beside a live blob is
  stale: the blob wins, as SPEC 4 says a re-creation removes the tombstone.

Soledad ordered listings by file mtime, so blobs are imported oldest first per namespace:
blobsync's stored order then matches the order Soledad's clients saw. Every blob goes
through ``BlobStore.put``, which checks its sealed head as it streams (an invalid one is
skipped and reported) and stores it with its flags in one step, so an interrupted import
leaves each blob complete or absent and a second run only adds what is missing.

Soledad's blobs directory holds no credentials: users are not created here (add them with
``blobsync user add UUID``); their blobs wait in the index until then.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from blobsync.format.errors import BlobsyncError, ProtocolError
from blobsync.format.limits import CHUNK_SIZE, valid_id

from .storage.base import FLAGS, BlobExists
from .storage.blobstore import BlobStore
from .storage.files import files_below

SOLEDAD_DEFAULT_DIR = "default"  # fs_backend: ``namespace = namespace or 'default'``
FLAGS_SUFFIX = ".flags"
DELETED_SUFFIX = ".deleted"
PROGRESS_EVERY = 1000  # blobs between two progress lines within one namespace

Report = Callable[[str], None]


class SourceUnreadable(BlobsyncError):
    """A file of the Soledad tree could not be read; that blob is skipped, the rest go on."""


@dataclass
class Problem:
    path: str
    reason: str


@dataclass
class _Namespace:
    """What one (user, namespace) holds on disk: blob paths, flags files, deletions."""

    blobs: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (path, mtime)
    flags: set[str] = field(default_factory=set)
    deleted: dict[str, float] = field(default_factory=dict)  # id -> mtime of .deleted


@dataclass
class ImportReport:
    imported: int = 0
    imported_bytes: int = 0
    existing: int = 0
    tombstones: int = 0
    tombstones_existing: int = 0
    invalid: list[Problem] = field(default_factory=list)  # blobs put refused or could not read
    skipped: list[Problem] = field(default_factory=list)  # files outside Soledad's layout
    warnings: list[Problem] = field(default_factory=list)  # imported, but something was off
    users: set[str] = field(default_factory=set)
    unregistered_users: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"imported {self.imported} blobs ({self.imported_bytes} bytes), "
            f"{self.existing} already present, {len(self.invalid)} invalid or unreadable",
            f"tombstones: {self.tombstones} recorded, {self.tombstones_existing} already present",
            f"users: {len(self.users)}; files outside Soledad's layout: {len(self.skipped)}; "
            f"warnings: {len(self.warnings)}",
        ]
        if self.unregistered_users:
            lines.append(
                f"{len(self.unregistered_users)} users have blobs but no account yet; "
                "add each with `blobsync user add UUID`: "
                + " ".join(self.unregistered_users)
            )
        return "\n".join(lines)


def classify(rel_parts: tuple[str, ...], namespace_default: str) -> tuple[str, str, str] | None:
    """``(namespace, blob_id, kind)`` of a file below a user dir, or None if not Soledad's.

    ``kind`` is ``blob``, ``flags`` or ``deleted``. The shard dirs must be the prefixes of
    the id, which also tells the two layouts apart by depth.
    """
    name = rel_parts[-1]
    kind = "blob"
    for suffix, what in ((FLAGS_SUFFIX, "flags"), (DELETED_SUFFIX, "deleted")):
        if name.endswith(suffix):
            name, kind = name[: -len(suffix)], what
            break
    if not valid_id(name):
        return None
    if len(rel_parts) == 5:
        namespace, shards = rel_parts[0], rel_parts[1:4]
        if not valid_id(namespace):
            return None
        if namespace == SOLEDAD_DEFAULT_DIR:
            namespace = namespace_default
    elif len(rel_parts) == 4:
        namespace, shards = namespace_default, rel_parts[0:3]
    else:
        return None
    if tuple(shards) != (name[0], name[:3], name[:6]):
        return None
    return namespace, name, kind


def scan_user(
    user_dir: str, namespace_default: str, skipped: list[Problem]
) -> dict[str, _Namespace]:
    """Everything below one user dir, by namespace. Symlinks and odd files are skipped."""
    spaces: dict[str, _Namespace] = {}
    for path, st in files_below(user_dir):
        rel = tuple(Path(os.path.relpath(path, user_dir)).parts)
        found = classify(rel, namespace_default) if stat.S_ISREG(st.st_mode) else None
        if found is None:
            skipped.append(Problem(path, "not a blob, flags or deletion file of Soledad"))
            continue
        namespace, blob_id, kind = found
        space = spaces.setdefault(namespace, _Namespace())
        if kind == "blob":
            if blob_id in space.blobs:
                # Two layouts merged into one namespace: keep the first, report the other.
                skipped.append(Problem(path, f"second copy of {blob_id} in {namespace}"))
                continue
            space.blobs[blob_id] = (path, st.st_mtime)
        elif kind == "flags":
            space.flags.add(blob_id)
        else:
            space.deleted[blob_id] = max(st.st_mtime, space.deleted.get(blob_id, 0.0))
    return spaces


def read_flags(path: str) -> tuple[frozenset[str], str | None]:
    """The flags in a ``.flags`` file and a problem, if any (then no flags are kept)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)  # four flags fit in 60 bytes: anything longer is not Soledad's
        flags = json.loads(raw)
    except FileNotFoundError:
        return frozenset(), None
    except (OSError, ValueError) as exc:
        return frozenset(), f"unreadable flags file: {exc}"
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        return frozenset(), "flags file is not a JSON list of strings"
    unknown = sorted(set(flags) - FLAGS)
    if unknown:
        return frozenset(), f"unknown flags {unknown}"
    return frozenset(flags), None


async def file_chunks(path: str) -> AsyncIterator[bytes]:
    """The file in CHUNK_SIZE pieces, each read in a thread; one chunk in memory at a time.

    Read failures become SourceUnreadable, so that they are told apart from the OSErrors
    of the store being written (a full disk there must stop the import).
    """
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except OSError as exc:
        raise SourceUnreadable(f"cannot read: {exc.strerror or exc}") from exc
    try:
        while True:
            try:
                chunk = await asyncio.to_thread(f.read, CHUNK_SIZE)
            except OSError as exc:
                raise SourceUnreadable(f"cannot read: {exc.strerror or exc}") from exc
            if not chunk:
                break
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


async def import_soledad(
    store: BlobStore,
    root: str | os.PathLike[str],
    *,
    namespace_default: str = "default",
    report: Report | None = None,
) -> ImportReport:
    """Import every blob, flag set and deletion under Soledad's blobs dir ``root``.

    ``store`` must be open. Progress lines go to ``report``. Storage failures (database or
    object store down) abort the import with their error; a re-run resumes it.
    """
    say = report or (lambda _line: None)
    if not valid_id(namespace_default):
        raise ValueError(f"invalid namespace {namespace_default!r}")
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such directory: {root}")
    result = ImportReport()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir(follow_symlinks=False) or not valid_id(entry.name):
            result.skipped.append(Problem(entry.path, "not a user directory"))
            continue
        user = entry.name
        spaces = await asyncio.to_thread(
            scan_user, entry.path, namespace_default, result.skipped
        )
        for namespace in sorted(spaces):
            await _import_namespace(store, user, namespace, spaces[namespace], result, say)
        if spaces:
            result.users.add(user)
            if await store.index.get_user(user) is None:
                result.unregistered_users.append(user)
    return result


async def _import_namespace(
    store: BlobStore,
    user: str,
    namespace: str,
    space: _Namespace,
    result: ImportReport,
    say: Report,
) -> None:
    where = f"{user}/{namespace}"
    before = (result.imported, result.existing, len(result.invalid), result.tombstones)
    # Oldest first, as Soledad's order_by=date listed them; the id breaks mtime ties.
    ordered = sorted(space.blobs.items(), key=lambda item: (item[1][1], item[0]))
    for done, (blob_id, (path, _mtime)) in enumerate(ordered, 1):
        await _import_blob(store, user, namespace, blob_id, path, space, result, say)
        if done % PROGRESS_EVERY == 0:
            say(f"{where}: {done}/{len(ordered)} blobs")
    stale = [b for b in space.deleted if b not in space.blobs]
    for blob_id in sorted(stale, key=lambda b: (space.deleted[b], b)):
        if await store.index.add_tombstone(user, namespace, blob_id):
            result.tombstones += 1
        else:
            result.tombstones_existing += 1
    imported, existing, invalid, tombs = (
        result.imported - before[0],
        result.existing - before[1],
        len(result.invalid) - before[2],
        result.tombstones - before[3],
    )
    say(
        f"{where}: {imported} imported, {existing} already present, {invalid} invalid, "
        f"{tombs} tombstones"
    )


async def _import_blob(
    store: BlobStore,
    user: str,
    namespace: str,
    blob_id: str,
    path: str,
    space: _Namespace,
    result: ImportReport,
    say: Report,
) -> None:
    flags: frozenset[str] = frozenset()
    if blob_id in space.flags:
        flags, problem = await asyncio.to_thread(read_flags, path + FLAGS_SUFFIX)
        if problem is not None:
            result.warnings.append(Problem(path + FLAGS_SUFFIX, f"{problem}; imported unflagged"))
            say(f"warning: {path}{FLAGS_SUFFIX}: {problem}; blob imported without flags")
    try:
        size = (await asyncio.to_thread(os.stat, path)).st_size
    except OSError as exc:
        result.invalid.append(Problem(path, f"cannot read: {exc.strerror or exc}"))
        say(f"unreadable: {path}: {exc.strerror or exc}")
        return
    try:
        # The size is announced so that a file that changes under us is refused, not cut.
        info = await store.put(user, namespace, blob_id, file_chunks(path), size=size,
                               flags=flags)
    except BlobExists:
        result.existing += 1
        return
    except ProtocolError as exc:  # InvalidBlob, LimitExceeded, a length that changed
        result.invalid.append(Problem(path, str(exc)))
        say(f"invalid: {path}: {exc}")
        return
    except SourceUnreadable as exc:
        result.invalid.append(Problem(path, str(exc)))
        say(f"unreadable: {path}: {exc}")
        return
    result.imported += 1
    result.imported_bytes += info.size
