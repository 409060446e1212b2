"""``blobsync get``: one blob to stdout or a file (by id or ``--name``), several blobs or
a whole tree (``-r PREFIX``) into a directory, with their names, mtimes and modes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .client_runtime import check_id, open_manager
from .failures import EXIT_INCOMPLETE, EXIT_NOT_FOUND, EXIT_OK, CommandFailed, UsageError
from .list_cmds import one_named, selected
from .output import Output, detail, writing_stdout
from .progress import Bars, bars_wanted

# The permission bits get gives back: setuid, setgid and sticky are not restored, as
# cp and tar do not unless told (a blob from another device should not grant them).
RESTORED_MODE_BITS = 0o777


class _Stdout:
    """sys.stdout.buffer whose OSErrors name stdout (a full disk: exit 8, saying where)."""

    def __init__(self) -> None:
        self._raw = sys.stdout.buffer

    def write(self, data: bytes) -> None:
        with writing_stdout():
            self._raw.write(data)

    def flush(self) -> None:
        with writing_stdout():
            self._raw.flush()


async def _write_stdout(manager: Any, args: argparse.Namespace, out: Output,
                        namespace: str) -> int:
    import base64

    sink = _Stdout()
    size = 0
    # open_stream fetches a blob that is only remote and verifies the whole blob before its
    # first chunk; writing nothing before that chunk means a missing blob, or one that
    # fails verification, leaves stdout empty (in --json mode: room for the error document).
    chunks = manager.open_stream(args.blob_id, namespace=namespace)
    first = await anext(chunks, None)
    # Raw bytes go to fd 1 (sink), never through rich; no bar when fd 1 is its terminal.
    with Bars(bars_wanted(out.json_mode, raw_stdout=True)) as bars:
        # The size this device knows (after open_stream, which fetched a remote blob's):
        # a bar with a total, a rate and an ETA, as get -o FILE has.
        row = await manager.store.get(namespace, args.blob_id)
        task = bars.bytes_task(f"get {args.blob_id[:12]}", row.size if row else None)
        if out.json_mode:
            # Streamed JSON: base64 of whole 3-byte groups, so no blob is held whole.
            sink.write(f'{{"id": "{args.blob_id}", "namespace": "{namespace}", '
                       '"data_base64": "'.encode())
            out.mark_written()
            carry = b""
            while first is not None:
                size += len(first)
                task.advance(len(first))
                data = carry + bytes(first)
                cut = len(data) - len(data) % 3
                sink.write(base64.b64encode(data[:cut]))
                carry = data[cut:]
                first = await anext(chunks, None)
            sink.write(base64.b64encode(carry) + f'", "size": {size}}}\n'.encode())
        else:
            while first is not None:
                size += len(first)
                task.advance(len(first))
                sink.write(first)
                first = await anext(chunks, None)
        sink.flush()
    return EXIT_OK


async def cmd_get(args: argparse.Namespace, out: Output) -> int:
    namespace = check_id(args.namespace, "namespace")
    for blob_id in args.ids:
        check_id(blob_id, "blob id")
    ways = sum((bool(args.ids), args.name is not None, args.recursive is not None))
    if ways != 1:
        raise UsageError("get takes blob ids, or --name NAME, or -r PREFIX (one of them)")
    many = args.recursive is not None or len(args.ids) > 1
    if many and args.output in (None, "-"):
        # Blobs end to end on stdout could not be told apart again: each gets a file.
        raise UsageError("several blobs (several ids, or -r) need -o DIR: each is "
                         "written to DIR/<its name, else its id>")
    from blobsync.format import InvalidBlob

    if many:
        return await _get_many(args, out, namespace)
    async with open_manager(args) as manager:
        if args.name is not None:
            args.blob_id = (await one_named(manager, namespace, args.name)).blob_id
        else:
            args.blob_id = args.ids[0]
        try:
            return await _get(manager, args, out, namespace)
        except InvalidBlob as exc:
            # Name the blob, and the way to learn which copy (this device's, the
            # server's) is bad.
            raise InvalidBlob(f"blob {args.blob_id}: {exc} ('blobsync check --remote' "
                              "tells which copy is damaged)") from None


async def _get(manager: Any, args: argparse.Namespace, out: Output, namespace: str) -> int:
    if args.output in (None, "-"):
        return await _write_stdout(manager, args, out, namespace)
    # pathlib drops a trailing '/' (and '/.'): without this, `-o new/` would create
    # the file `new`. As for cp, such a name must be an existing directory.
    if (os.path.basename(args.output) in ("", ".", "..")
            and not os.path.isdir(args.output)):
        raise UsageError(f"-o {args.output}: not a directory (a name ending in / must "
                         "name an existing directory)")
    dest = Path(args.output)
    if dest.is_dir():
        raise UsageError(f"-o names a directory: {dest}")
    with Bars(bars_wanted(out.json_mode)) as bars:
        bars.one_bar(f"get {args.blob_id[:12]}", "download", "read")
        await manager.get(args.blob_id, namespace=namespace, dest=dest,
                          progress=bars.callback)
    if out.json_mode:
        out.document({"id": args.blob_id, "namespace": namespace, "path": str(dest),
                      "size": await _plain_size(manager, namespace, args.blob_id, dest)})
    return EXIT_OK


async def _plain_size(manager: Any, namespace: str, blob_id: str, dest: Path) -> int | None:
    """The size get -o wrote: the file's, unless dest is a device or a FIFO, whose size
    says nothing; then the blob's, as the local store knows it."""
    import stat

    if stat.S_ISREG(dest.stat().st_mode):
        return dest.stat().st_size
    row = await manager.store.get(namespace, blob_id)
    return row.size if row is not None else None


# --------------------------------------------------------------------------- several


async def _get_many(args: argparse.Namespace, out: Output, namespace: str) -> int:
    """Several ids, or ``-r PREFIX``, into the directory -o (made if missing): each blob
    to DIR/<its name> (DIR/<its id> when it has none), with its mtime and mode. A name
    that would land outside DIR is refused, one line each, and the rest still written:
    then exit 7. Under -r, of several blobs of one name (a file put again after it
    changed) the newest is written."""
    from blobsync.client import BlobNotFound
    from blobsync.format import InvalidBlob
    from blobsync.format.meta import valid_name

    root = Path(args.output)
    if root.exists() and not root.is_dir():
        raise UsageError(f"-o {args.output}: not a directory (several blobs go into one)")
    written: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []

    def refuse(blob_id: str, name: str, reason: str) -> None:
        refused.append({"id": blob_id, "name": name, "reason": reason})
        if not out.json_mode:
            shown = repr(name) if name else "(no name)"
            sys.stderr.write(f"blobsync: refused {shown} (blob {blob_id}): {reason}\n")
            sys.stderr.flush()

    async with open_manager(args) as manager:
        entries = await selected(manager, namespace, args.ids, args.recursive)
        if not entries:
            raise CommandFailed(f"no blob named {args.recursive!r} or under it in "
                                f"namespace {namespace}", EXIT_NOT_FOUND)
        root.mkdir(parents=True, exist_ok=True)
        real_root = os.path.realpath(root)
        targets: dict[str, Any] = {}  # relative path -> the entry written there
        for entry in entries:
            rel = entry.name or entry.blob_id
            if not valid_name(rel):
                refuse(entry.blob_id, entry.name, f"the name would land outside {root}")
                continue
            earlier = targets.get(rel)
            if earlier is None:
                targets[rel] = entry
            elif args.recursive is None:
                # Both asked for by id: neither may silently replace the other.
                refuse(entry.blob_id, entry.name, f"blob {earlier.blob_id} given too has "
                       "this name; get it alone with -o FILE")
            else:
                newer = max(earlier, entry, key=lambda e: (e.mtime or 0.0, e.created))
                older = entry if newer is earlier else earlier
                targets[rel] = newer
                detail(f"{rel}: blob {older.blob_id} left out, blob {newer.blob_id} is newer")
        with Bars(bars_wanted(out.json_mode)) as bars:
            task = bars.bytes_task(f"get {len(targets)} blobs")
            for rel, entry in targets.items():
                dest = root / rel
                try:
                    # Before any directory is made: a link already in DIR (or the file
                    # itself, a link) would carry the blob out of it.
                    if os.path.commonpath([os.path.realpath(dest), real_root]) != real_root:
                        refuse(entry.blob_id, entry.name, f"{dest} leads outside {root}")
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    await manager.get(entry.blob_id, namespace=namespace, dest=dest)
                    _restore_times(dest, entry)
                except (OSError, InvalidBlob, BlobNotFound) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror \
                        else str(exc)
                    refuse(entry.blob_id, entry.name, f"not written: {reason}")
                    continue
                task.advance(entry.size or 0)
                written.append({"id": entry.blob_id, "name": entry.name, "path": str(dest),
                                "size": entry.size})
                out.line_soon(f"{entry.blob_id}\t{dest}")
    out.document({"namespace": namespace, "dir": str(root), "written": written,
                  "refused": refused})
    if refused:
        raise CommandFailed(f"incomplete: {len(refused)} of {len(refused) + len(written)} "
                            f"blobs not written, {len(written)} written into {root}",
                            EXIT_INCOMPLETE)
    return EXIT_OK


def _restore_times(dest: Path, entry: Any) -> None:
    """The mode and then the mtime its meta holds (the mode first: chmod does not touch
    the mtime, but the order keeps it obvious)."""
    if entry.mode is not None:
        os.chmod(dest, entry.mode & RESTORED_MODE_BITS)
    if entry.mtime is not None:
        os.utime(dest, (entry.mtime, entry.mtime))
