"""The commands on blobs: put and flags (get, ls and rm are in named_cmds)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .client_runtime import check_id, open_manager
from .collect import Skip, collect_named, report_skips
from .failures import EXIT_ID_TAKEN, EXIT_INCOMPLETE, EXIT_OK, CommandFailed, UsageError, classify
from .output import Output, info
from .progress import Bars, bars_wanted
from .put_extras import put_dry_run, put_stdin, skip_counts
from .sync_cmds import RETRY_FAILED_OPTION, taken_message, which_limits

# --------------------------------------------------------------------------- put


async def cmd_put(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client import SyncReport, SyncStatus, TransientError
    from blobsync.format import sealed_size

    namespace = check_id(args.namespace, "namespace")
    from_stdin = args.paths == ["-"]
    if from_stdin:
        from . import passphrase

        passphrase.stdin_is_data = True
    if "-" in args.paths and not from_stdin:
        raise UsageError("'-' (stdin) goes alone: 'put -' or 'put PATH...'")
    if args.name is not None:
        from blobsync.format.meta import valid_name

        if not from_stdin:
            raise UsageError("--name is for 'put -' (a file is named by its path)")
        if not valid_name(args.name):
            raise UsageError(f"--name {args.name!r}: a relative path with '/' between its "
                             "parts, without '.' or '..' parts")
    if args.id is not None:
        check_id(args.id, "blob id")
        if not from_stdin and (len(args.paths) != 1 or not Path(args.paths[0]).is_file()):
            raise UsageError("--id needs exactly one file")
    not_stored: list[Skip] = []  # FIFOs, dangling links...: said, then exit 7
    found = [] if from_stdin else collect_named(args.paths, not_stored)
    files = [path for path, _, _ in found]
    sources = [src for _, src, _ in found]  # each file's one stat: not taken again
    names = [name for _, _, name in found]  # SPEC 11: relative to the argument's parent
    if args.fail_fast and not_stored:
        # As before skipping existed: the first entry that cannot be stored ends the
        # command, before anything is stored.
        first = not_stored[0]
        raise CommandFailed(f"cannot store {first.path}: {first.reason} (--fail-fast: "
                            "nothing was stored)")
    if not out.json_mode:  # --json lists them in its document instead
        report_skips(not_stored)
    if args.dry_run:
        return await put_dry_run(args, out, namespace, found, not_stored)
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
        if not args.local_only and not args.force and files:
            earlier = await manager.stored_copies(
                files, namespace=namespace, sources=sources, names=names)
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
            new = [src.size for path, src, _ in found if path not in earlier]
            bars.expect("upload", len(new), sum(sealed_size(n) for n in new))
            if from_stdin:
                kept(await put_stdin(manager, args, namespace), Path("-"))
            elif args.id is not None:
                # Run again after it was interrupted: the blob is here, from this very
                # file; it is uploaded below (if it is not already), not refused.
                earlier = {} if args.force else await manager.stored_copies(
                    files, namespace=namespace, local_only=args.local_only, sources=sources)
                if earlier.get(files[0]) == args.id:
                    already(args.id, files[0])
                else:
                    kept(await manager.put(
                        args.id, files[0], namespace=namespace, priority=args.priority,
                        local_only=args.local_only, upload=False, name=names[0],
                        progress=bars.callback,
                    ), files[0])
            else:
                # Many small files per transaction, each batch uploaded in a stream while
                # the next ones are stored.
                await manager.put_many(
                    files, namespace=namespace, priority=args.priority,
                    local_only=args.local_only, stored=kept, upload=True,
                    progress=bars.callback, report=report, force=args.force,
                    already=already, sources=sources, names=names,
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
    # Whenever files were skipped as already stored, stderr says so in these words: the
    # notice line on success, the end of the one error line otherwise.
    counts = skip_counts(skipped, len(stored) - skipped)
    tail = f" ({counts})" if counts else ""
    if taken and taken == refused and not left:
        raise CommandFailed(taken_message(sorted(taken)) + tail, EXIT_ID_TAKEN)
    if postponed is not None:
        # As rm's queued message: the files are safe here, and say what happens next.
        code, reason = classify(postponed)
        raise CommandFailed(
            f"{len(left) + len(refused)} of {len(stored)} blobs are stored here but not "
            f"uploaded ({reason}): they will go up at the next 'blobsync sync'{tail}", code,
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
            + tail
        )
    if left:
        raise CommandFailed(
            f"{len(left)} of {len(stored)} blobs are stored here but not uploaded yet; "
            f"'blobsync sync' will retry{tail}"
        )
    if not_stored:
        raise CommandFailed(
            _incomplete_message(not_stored, len(stored) - skipped, skipped), EXIT_INCOMPLETE
        )
    if counts:
        # Not an error, and not a result: stdout keeps one line per path either way.
        info(counts)
    return EXIT_OK


def _incomplete_message(not_stored: list[Skip], stored: int, already: int) -> str:
    what = "1 entry" if len(not_stored) == 1 else f"{len(not_stored)} entries"
    files = "1 file" if stored == 1 else f"{stored} files"
    if already:  # the words of skip_counts, as every other outcome of put says them
        return (f"incomplete: {what} skipped (not a regular file, or unreadable), "
                f"{skip_counts(already, stored)}")
    return f"incomplete: {what} skipped (not a regular file, or unreadable), {files} stored"


# --------------------------------------------------------------------------- flags


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
