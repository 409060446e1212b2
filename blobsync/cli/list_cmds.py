"""``blobsync ls`` and ``blobsync rm``, and how commands pick blobs: by id, by ``--name``
or by a name prefix that matches whole path parts (SPEC 11)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .client_runtime import check_id, open_manager
from .failures import EXIT_NOT_FOUND, EXIT_OK, CommandFailed, UsageError, classify
from .output import Output, info

# ls -l's date of a blob without a meta: no date is known.
NO_DATE = "-"


def whole_prefix(prefix: str) -> str:
    """A name prefix as the store matches it: ``./photos/`` is ``photos``; ``.``, ``/``
    and ``''`` are every name."""
    prefix = prefix.strip("/")
    while prefix.startswith("./"):
        prefix = prefix[2:].lstrip("/")
    return "" if prefix == "." else prefix


async def selected(
    manager: Any, namespace: str, ids: list[str], prefix: str | None
) -> list[Any]:
    """The blobs asked for, as ``manager.named`` gives them: those of ``ids`` in their
    order (one this device does not know yet has no name, and is fetched by its id), or
    those named ``prefix`` or under it (only named blobs: the others have no path)."""
    from blobsync.client import SyncStatus
    from blobsync.client.localstore import Named

    if prefix is not None:
        rows = await manager.named(whole_prefix(prefix), namespace=namespace,
                                   whole_parts=True)
        return [r for r in rows if r.name]
    known = {r.blob_id: r for r in await manager.named(namespace=namespace)}
    return [known.get(i) or Named(i, SyncStatus.PENDING_DOWNLOAD, None, "", None, None,
                                  None, 0.0) for i in ids]


async def one_named(manager: Any, namespace: str, name: str) -> Any:
    """The one blob named ``name``: exit 6 when there is none, 2 (with their ids, sizes
    and dates) when several blobs have that name: which one is meant is the user's
    choice, never a guess."""
    rows = await manager.named(namespace=namespace, name=name)
    if not rows:
        raise CommandFailed(f"no blob named {name!r} in namespace {namespace}",
                            EXIT_NOT_FOUND)
    if len(rows) > 1:
        listed = "; ".join(f"{r.blob_id} ({r.size} bytes, {_date(r.mtime)})" for r in rows)
        raise UsageError(f"{len(rows)} blobs are named {name!r}: {listed}; give one id")
    return rows[0]


def _date(mtime: float | None) -> str:
    if mtime is None:
        return NO_DATE
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime))


# --------------------------------------------------------------------------- ls


async def cmd_ls(args: argparse.Namespace, out: Output) -> int:
    namespace = check_id(args.namespace, "namespace")
    server_only = [opt for opt, used in (("--flag", args.flag), ("--order-by", args.order_by),
                                         ("--deleted", args.deleted)) if used]
    if server_only and not args.remote:
        named = (", ".join(server_only[:-1]) + " and " if len(server_only) > 1 else "")
        raise UsageError(f"{named}{server_only[-1]} "
                         f"{'need' if len(server_only) > 1 else 'needs'} --remote: flags, "
                         "dates and deletions are known to the server")
    by_name = args.long or args.prefix is not None
    if by_name and args.remote:
        raise UsageError("-l and PREFIX list this device's blobs by name (names are "
                         "read here, never by the server): drop --remote, after a sync")
    if by_name:
        return await _ls_named(args, out, namespace)
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


async def _ls_named(args: argparse.Namespace, out: Output, namespace: str) -> int:
    """ls -l and ls PREFIX: the blobs plain ls lists (their payload is here), in name
    order, those without a name first."""
    from blobsync.client.model import HAS_PAYLOAD

    async with open_manager(args, reading=True) as manager:
        rows = await manager.named(whole_prefix(args.prefix or ""), namespace=namespace,
                                   whole_parts=True)
    rows = [r for r in rows if r.status in HAS_PAYLOAD and (r.name or not args.prefix)]
    if args.prefix and not rows and not args.count:
        # As get -r and rm -r say it: a mistyped prefix is not an empty listing.
        raise CommandFailed(f"no blob named {args.prefix!r} or under it in namespace "
                            f"{namespace}", EXIT_NOT_FOUND)
    doc: dict[str, Any] = {"namespace": namespace, "where": "local", "count": len(rows)}
    if args.count:
        out.line(str(len(rows)))
        out.document(doc)
        return EXIT_OK
    doc["ids"] = [r.blob_id for r in rows]
    if args.long:
        doc["blobs"] = [{"blob_id": r.blob_id, "name": r.name, "size": r.size,
                         "mtime": r.mtime, "status": r.status.value} for r in rows]
        id_width = max((len(r.blob_id) for r in rows), default=0)
        size_width = max((len(str(r.size)) for r in rows), default=0)
        date_width = len(_date(0.0))
        for r in rows:
            size = "" if r.size is None else str(r.size)
            out.line_soon(f"{r.blob_id:<{id_width}}  {size:>{size_width}}  "
                          f"{_date(r.mtime):<{date_width}}  {r.name}".rstrip())
    else:
        for r in rows:
            out.line_soon(r.blob_id)
    out.document(doc)
    return EXIT_OK


# --------------------------------------------------------------------------- rm


async def cmd_rm(args: argparse.Namespace, out: Output) -> int:
    namespace = check_id(args.namespace, "namespace")
    for blob_id in args.ids:
        check_id(blob_id, "blob id")
    if sum((bool(args.ids), args.name is not None, args.recursive is not None)) != 1:
        raise UsageError("rm takes blob ids, or --name NAME, or -r PREFIX (one of them)")
    if len(args.ids) == 1 and not args.dry_run:
        return await _rm_one(args, out, namespace, args.ids[0])
    async with open_manager(args) as manager:
        if args.name is not None:
            entries = [await one_named(manager, namespace, args.name)]
        else:
            entries = await selected(manager, namespace, args.ids, args.recursive)
            if not entries:
                raise CommandFailed(f"no blob named {args.recursive!r} or under it in "
                                    f"namespace {namespace}", EXIT_NOT_FOUND)
        if args.dry_run:
            for e in entries:
                out.line_soon(f"{e.blob_id}\t{e.name}".rstrip())
            out.document({"namespace": namespace, "dry_run": True,
                          "would_delete": [{"id": e.blob_id, "name": e.name}
                                           for e in entries]})
            info(f"dry run: {len(entries)} blob{'s' if len(entries) != 1 else ''} would be "
                 "deleted; nothing was deleted")
            return EXIT_OK
        if args.name is not None:
            return await _rm_one(args, out, namespace, entries[0].blob_id, manager)
        return await _rm_many(manager, out, namespace, [e.blob_id for e in entries])


async def _rm_many(manager: Any, out: Output, namespace: str, ids: list[str]) -> int:
    """Each blob deleted in turn; one that is not there is said and the others still
    deleted (as rm does), then exit 6. Deletions the server was not told of are queued,
    as for one blob, and the exit code says why."""
    from blobsync.client import BlobNotFound, ForgottenHere

    deleted: list[str] = []
    queued: list[str] = []
    here_only: list[str] = []
    missing: list[str] = []
    cause: Any = None
    for blob_id in ids:
        try:
            outcome = await manager.delete(blob_id, namespace=namespace)
        except BlobNotFound:
            missing.append(blob_id)
            if not out.json_mode:
                sys.stderr.write(f"blobsync: no blob {blob_id} in namespace {namespace}\n")
            continue
        deleted.append(blob_id)
        if isinstance(outcome, ForgottenHere):
            here_only.append(blob_id)
        elif outcome is not None:
            queued.append(blob_id)
            cause = outcome
    out.document({"namespace": namespace, "deleted": deleted, "queued": queued,
                  "local_only": here_only, "missing": missing})
    if here_only and not out.json_mode:
        info(f"{len(here_only)} blobs are forgotten on this device only (never uploaded "
             "from here); nothing was deleted on the server for them")
    if queued:
        code, reason = classify(cause)
        raise CommandFailed(
            f"{len(queued)} of {len(ids)} blobs are deleted here; the server was not told "
            f"({reason}): the deletions are queued and will reach the server at the next "
            "sync", code,
        )
    if missing:
        raise CommandFailed(f"{len(missing)} of {len(ids)} blobs were not found "
                            f"({len(deleted)} deleted)", EXIT_NOT_FOUND)
    return EXIT_OK


async def _rm_one(args: argparse.Namespace, out: Output, namespace: str, blob_id: str,
                  manager: Any = None) -> int:
    """One blob, as rm always deleted it (its document and messages unchanged)."""
    from blobsync.client import ForgottenHere

    if manager is None:
        async with open_manager(args) as opened:
            outcome = await opened.delete(blob_id, namespace=namespace)
    else:
        outcome = await manager.delete(blob_id, namespace=namespace)
    forgotten = isinstance(outcome, ForgottenHere)
    postponed = None if forgotten else outcome
    doc = {"id": blob_id, "namespace": namespace, "deleted": True,
           "queued": postponed is not None}
    if forgotten:  # only then: the document of a plain rm stays as it was
        doc["local_only"] = True
    out.document(doc)
    if isinstance(outcome, ForgottenHere):
        # Not an error: what the user asked for is done, and the server's blob under
        # that id (another device's, if any) is left alone on purpose.
        # A notice, not a result: stderr, as put's counts (stdout carries results only).
        if not out.json_mode:
            info(f"blob {blob_id} is forgotten on this device only "
                 f"({outcome.reason}); nothing was deleted on the server")
    if postponed is not None:
        # Deleted here, not yet on the server: as put, say so and exit as for the cause
        # (4 when the server could not be reached), so a script does not take it as done.
        code, reason = classify(postponed)
        raise CommandFailed(
            f"blob {blob_id} is deleted here; the server was not told ({reason}): "
            "the deletion is queued and will reach the server at the next sync", code,
        )
    return EXIT_OK
