"""The commands on blobs: put, get, ls, rm and flags."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .client_runtime import check_id, open_manager
from .collect import Skip, collect_sources, report_skips
from .failures import EXIT_ID_TAKEN, EXIT_INCOMPLETE, EXIT_OK, CommandFailed, UsageError, classify
from .output import Output, info, writing_stdout
from .progress import Bars, bars_wanted
from .sync_cmds import RETRY_FAILED_OPTION, taken_message, which_limits

# --------------------------------------------------------------------------- put


async def cmd_put(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client import SyncReport, SyncStatus, TransientError
    from blobsync.format import sealed_size

    namespace = check_id(args.namespace, "namespace")
    if args.id is not None:
        check_id(args.id, "blob id")
        if len(args.paths) != 1 or not Path(args.paths[0]).is_file():
            raise UsageError("--id needs exactly one file")
    not_stored: list[Skip] = []  # FIFOs, dangling links...: said, then exit 7
    found = collect_sources(args.paths, not_stored)
    files = [path for path, _ in found]
    sources = [src for _, src in found]  # each file's one stat: not taken again
    if args.fail_fast and not_stored:
        # As before skipping existed: the first entry that cannot be stored ends the
        # command, before anything is stored.
        first = not_stored[0]
        raise CommandFailed(f"cannot store {first.path}: {first.reason} (--fail-fast: "
                            "nothing was stored)")
    if not out.json_mode:  # --json lists them in its document instead
        report_skips(not_stored)
    stored: list[dict[str, str]] = []
    skipped = 0  # files stored by an earlier put, unchanged since: not stored again
    again: list[str] = []  # their blobs: one the server refused before is sent again
    left: set[str] = set()  # ours still waiting to be uploaded
    refused: set[str] = set()  # ours the server refused (FAILED_UPLOAD)
    postponed: TransientError | None = None  # why the upload could not even start
    async with open_manager(args, stream=not args.no_stream) as manager:
        def kept(blob_id: str, path: Path) -> None:
            text = str(path)
            stored.append({"id": blob_id, "path": text})
            out.line_soon(f"{blob_id}\t{text}")  # a batch of blobs: one write

        def already(blob_id: str, path: Path) -> None:
            # Printed like the others: a script gets the id of every path it named.
            nonlocal skipped
            skipped += 1
            again.append(blob_id)
            kept(blob_id, path)

        report = SyncReport()
        earlier: dict[Path, str] = {}
        if not args.local_only and not args.force:
            earlier = await manager.stored_copies(files, namespace=namespace, sources=sources)
        if earlier:
            # Some files were put before: another device may have deleted their blobs
            # since. Learn that first, or put would call "already stored" a blob that the
            # upload pass is about to delete here, and print an id that no longer exists.
            try:
                await manager.learn_remote_changes(namespace)
            except TransientError:
                pass  # unreachable: the upload pass below meets it too, and says so
        with Bars(None if args.local_only else bars_wanted(out.json_mode)) as bars:
            # The upload's totals before the first byte: every file not stored before.
            new = [src.size for path, src in found if path not in earlier]
            bars.expect("upload", len(new), sum(sealed_size(n) for n in new))
            if args.id is not None:
                # Run again after it was interrupted: the blob is here, from this very
                # file; it is uploaded below (if it is not already), not refused.
                earlier = {} if args.force else await manager.stored_copies(
                    files, namespace=namespace, local_only=args.local_only, sources=sources)
                if earlier.get(files[0]) == args.id:
                    already(args.id, files[0])
                else:
                    kept(await manager.put(
                        args.id, files[0], namespace=namespace, priority=args.priority,
                        local_only=args.local_only, upload=False, progress=bars.callback,
                    ), files[0])
            else:
                # Many small files per transaction, each batch uploaded in a stream while
                # the next ones are stored.
                await manager.put_many(
                    files, namespace=namespace, priority=args.priority,
                    local_only=args.local_only, stored=kept, upload=True,
                    progress=bars.callback, report=report, force=args.force,
                    already=already, sources=sources,
                )
            if again and not args.local_only:
                # Asked to put them again: a refused blob (FAILED_UPLOAD: an id conflict,
                # quota) is tried again, and fails again with its own reason if it must.
                await manager.retry_failed(namespace, blob_ids=again)
            if stored and not args.local_only:
                # The rest: large files, batches that failed to go in one piece, and
                # blobs an interrupted put stored but did not upload.
                try:
                    await manager.send_missing(
                        namespace, progress=bars.callback, report=report
                    )
                except TransientError as exc:  # the listing: unreachable, or 5xx too long
                    postponed = exc
            # send_missing adds to the same report (and returns its total): count once.
            uploaded = report.uploaded
        if stored and not args.local_only:
            mine = {b["id"] for b in stored}
            left |= mine & set(await manager.local_list(namespace,
                                                        status=SyncStatus.PENDING_UPLOAD))
            refused |= mine & set(await manager.local_list(namespace,
                                                           status=SyncStatus.FAILED_UPLOAD))
    taken = refused & set(report.taken)
    out.document(
        {"namespace": namespace, "blobs": stored, "uploaded": uploaded,
         "local_only": args.local_only, "stored": len(stored) - skipped,
         "already_stored": skipped, "pending": sorted(left), "taken": sorted(taken),
         "refused": sorted(refused - taken),
         "skipped": [{"path": str(s.path), "reason": s.reason} for s in not_stored]}
    )
    if taken and taken == refused and not left:
        raise CommandFailed(taken_message(sorted(taken)), EXIT_ID_TAKEN)
    counts = f"{skipped} already stored, {len(stored) - skipped} stored"
    if postponed is not None:
        # As rm's queued message: the files are safe here, and say what happens next.
        code, reason = classify(postponed)
        raise CommandFailed(
            f"{len(left) + len(refused)} of {len(stored)} blobs are stored here but not "
            f"uploaded ({reason}): they will go up at the next 'blobsync sync'"
            + (f" ({counts})" if skipped else ""), code,
        )
    if refused:
        why = [f"{len(taken)} with an id taken by another blob"] if taken else []
        if refused - taken:
            why.append(f"{len(refused - taken)} refused by the server: quota or size"
                       + which_limits(report, refused - taken))
        raise CommandFailed(
            f"{len(left) + len(refused)} of {len(stored)} blobs are stored here but not "
            f"uploaded yet ({'; '.join(why)}); "
            f"'blobsync sync' will retry, with {RETRY_FAILED_OPTION} for the refused ones"
            + (f" ({counts})" if skipped else "")
        )
    if left:
        raise CommandFailed(
            f"{len(left)} of {len(stored)} blobs are stored here but not uploaded yet; "
            "'blobsync sync' will retry" + (f" ({counts})" if skipped else "")
        )
    if not_stored:
        raise CommandFailed(
            _incomplete_message(not_stored, len(stored) - skipped, skipped), EXIT_INCOMPLETE
        )
    if skipped:
        # Not an error, and not a result: stdout keeps one line per path either way.
        info(counts)
    return EXIT_OK


def _incomplete_message(not_stored: list[Skip], stored: int, already: int) -> str:
    what = "1 entry" if len(not_stored) == 1 else f"{len(not_stored)} entries"
    files = "1 file" if stored == 1 else f"{stored} files"
    earlier = f", {already} already stored" if already else ""
    return (f"incomplete: {what} skipped (not a regular file, or unreadable), "
            f"{files} stored{earlier}")


# --------------------------------------------------------------------------- get


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
        task = bars.bytes_task(f"get {args.blob_id[:12]}")
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
    check_id(args.blob_id, "blob id")
    from blobsync.format import InvalidBlob

    try:
        return await _get(args, out, namespace)
    except InvalidBlob as exc:
        # Name the blob, and the way to learn which copy (this device's, the server's) is bad.
        raise InvalidBlob(f"blob {args.blob_id}: {exc} ('blobsync check --remote' tells "
                          "which copy is damaged)") from None


async def _get(args: argparse.Namespace, out: Output, namespace: str) -> int:
    async with open_manager(args) as manager:
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


# --------------------------------------------------------------------------- ls, rm, flags


async def cmd_ls(args: argparse.Namespace, out: Output) -> int:
    namespace = check_id(args.namespace, "namespace")
    server_only = [opt for opt, used in (("--flag", args.flag), ("--order-by", args.order_by),
                                         ("--deleted", args.deleted)) if used]
    if server_only and not args.remote:
        named = (", ".join(server_only[:-1]) + " and " if len(server_only) > 1 else "")
        raise UsageError(f"{named}{server_only[-1]} "
                         f"{'need' if len(server_only) > 1 else 'needs'} --remote: flags, "
                         "dates and deletions are known to the server")
    ids: list[str] = []
    async with open_manager(args, reading=True) as manager:
        if args.remote and args.count and not args.deleted:
            # The server counts without sending the listing.
            count = await manager.remote_count(namespace, filter_flag=args.flag)
        else:
            if args.remote:
                ids = await manager.remote_list(namespace, filter_flag=args.flag,
                                                order_by=args.order_by, deleted=args.deleted)
            else:
                ids = await manager.local_list(namespace)
            count = len(ids)
    where = "remote" if args.remote else "local"
    if args.count:
        out.line(str(count))
        out.document({"namespace": namespace, "where": where, "count": count})
    else:
        for blob_id in ids:
            out.line(blob_id)
        out.document({"namespace": namespace, "where": where, "ids": ids, "count": count})
    return EXIT_OK


async def cmd_rm(args: argparse.Namespace, out: Output) -> int:
    namespace = check_id(args.namespace, "namespace")
    check_id(args.blob_id, "blob id")
    from blobsync.client import ForgottenHere

    async with open_manager(args) as manager:
        outcome = await manager.delete(args.blob_id, namespace=namespace)
    forgotten = isinstance(outcome, ForgottenHere)
    postponed = None if forgotten else outcome
    doc = {"id": args.blob_id, "namespace": namespace, "deleted": True,
           "queued": postponed is not None}
    if forgotten:  # only then: the document of a plain rm stays as it was
        doc["local_only"] = True
    out.document(doc)
    if isinstance(outcome, ForgottenHere):
        # Not an error: what the user asked for is done, and the server's blob under
        # that id (another device's, if any) is left alone on purpose.
        # A notice, not a result: stderr, as put's counts (stdout carries results only).
        if not out.json_mode:
            info(f"blob {args.blob_id} is forgotten on this device only "
                 f"({outcome.reason}); nothing was deleted on the server")
    if postponed is not None:
        # Deleted here, not yet on the server: as put, say so and exit as for the cause
        # (4 when the server could not be reached), so a script does not take it as done.
        code, reason = classify(postponed)
        raise CommandFailed(
            f"blob {args.blob_id} is deleted here; the server was not told ({reason}): "
            "the deletion is queued and will reach the server at the next sync", code,
        )
    return EXIT_OK


async def cmd_flags(args: argparse.Namespace, out: Output) -> int:
    namespace = check_id(args.namespace, "namespace")
    check_id(args.blob_id, "blob id")
    async with open_manager(args) as manager:
        if args.set is not None:
            await manager.set_flags(args.blob_id, sorted(set(args.set)), namespace=namespace)
        flags = list(await manager.get_flags(args.blob_id, namespace=namespace))
    for flag in flags:
        out.line(flag)
    out.document({"id": args.blob_id, "namespace": namespace, "flags": flags})
    return EXIT_OK
