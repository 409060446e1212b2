"""The commands on the whole profile: sync, status, check and incoming process."""

from __future__ import annotations

import argparse
from typing import Any

from .client_runtime import check_id, count_of, ids_of, open_manager, resolve_home
from .failures import EXIT_ID_TAKEN, EXIT_OK, EXIT_VERIFY, CommandFailed, UsageError
from .output import Output, detail, table
from .passphrase import read_passphrase
from .progress import Bars, bars_wanted

# sync leaves FAILED_* blobs alone unless given this.
RETRY_FAILED_OPTION = "--retry-failed"


# --------------------------------------------------------------------------- sync, status


def which_limits(report: Any, ids: set[str]) -> str:
    """Which limit the server said each refused blob hit: 507 the user's quota, 413 the
    maximum blob size; with the server's words of the first of each (its sizes)."""
    kinds: dict[str, list[str]] = {}
    for blob_id in sorted(ids):
        exc = getattr(report, "refusals", {}).get(blob_id)
        status = getattr(exc, "status", None)
        kind = {507: "over the user's quota", 413: "over the maximum blob size"}.get(
            status or 0)
        if kind is not None:
            kinds.setdefault(kind, []).append(_server_words(exc))
    if not kinds:
        return ""
    return " (" + "; ".join(f"{len(words)} {kind}: {words[0]}"
                            for kind, words in kinds.items()) + ")"


def _server_words(exc: Any) -> str:
    # The transport's "uploading X: <the server's message> (HTTP 507)": the middle.
    text = str(exc)
    text = text.split(": ", 1)[1] if ": " in text else text
    return text.rsplit(" (HTTP ", 1)[0]


async def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    namespace = check_id(args.namespace, "namespace")
    if args.watch and args.full:
        raise UsageError("--watch and --full do not go together (a watch lists in full "
                         "when it has to)")
    if args.dry_run:
        if args.watch:
            raise UsageError("--watch and --dry-run do not go together")
        return await _sync_dry_run(args, out, namespace)
    passphrase = None
    quiet = None
    if args.unlocking is not None:  # started by sync_prelude
        from blobsync.client.quicksync import unchanged

        passphrase = args.passphrase
        quiet = await unchanged(args.unlocking, namespace)
    if quiet is not None:
        from blobsync.client import SyncReport

        # What open_manager says with -v, said here: this path opens no manager.
        profile = args.unlocking.profile
        detail(f"profile {profile.home}: user {profile.user} on {profile.server}")
        report, retried, still_failed = SyncReport(), 0, quiet
    else:
        report, retried, still_failed = await _sync(args, out, namespace, passphrase)
        if report is None:
            return EXIT_OK  # a watch, stopped
    failed = ids_of(report.failed)
    pending = ids_of(getattr(report, "pending", []))
    summary = {
        "namespace": namespace,
        "downloaded": count_of(report.downloaded),
        "uploaded": count_of(report.uploaded),
        "deleted_local": count_of(report.deleted_local),
        "deleted_remote": count_of(report.deleted_remote),
        "failed": failed,
        "pending": pending,
        "retried": retried,
        "still_failed": sorted(still_failed),
    }
    out.line(
        f"downloaded {summary['downloaded']}, uploaded {summary['uploaded']}, "
        f"deleted here {summary['deleted_local']}, deleted on the server "
        f"{summary['deleted_remote']}, failed {len(failed)}"
    )
    out.document(summary)
    taken = sorted(set(failed) & set(ids_of(getattr(report, "taken", []))))
    earlier = set(still_failed) - set(failed)
    if failed and len(taken) == len(set(failed)) and not earlier and not pending:
        # Only id conflicts this run: their own code, so a script can tell them apart.
        raise CommandFailed(f"{taken_message(taken)} (left FAILED_UPLOAD here)",
                            EXIT_ID_TAKEN)
    if failed:
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        raise CommandFailed(f"{_blobs(len(failed))} failed to sync: {shown}"
                            f"{which_limits(report, set(failed))}; once the cause is fixed, "
                            f"'blobsync sync {RETRY_FAILED_OPTION}' tries them again")
    if still_failed:
        shown = ", ".join(sorted(still_failed)[:5]) + (", ..." if len(still_failed) > 5 else "")
        raise CommandFailed(f"{_blobs(len(still_failed))} failed earlier and were left alone: "
                            f"{shown}; 'blobsync sync {RETRY_FAILED_OPTION}' tries them again")
    if pending:
        verb = "is" if len(pending) == 1 else "are"
        raise CommandFailed(f"{_blobs(len(pending))} {verb} still waiting for a retry; "
                            "run 'blobsync sync' again later")
    return EXIT_OK


async def _sync_dry_run(args: argparse.Namespace, out: Output, namespace: str) -> int:
    """What a sync would do, as a full listing of the server sees it, and nothing done:
    the server is only listed, the local store only read. One line per blob ('download
    ID', 'upload ID', 'delete_here ID', 'delete_there ID'), then the counts."""
    from blobsync.client import SyncStatus

    async with open_manager(args, reading=True) as manager:
        remote = set(await manager.remote_list(namespace))
        rows = await manager.store.rows(namespace)
    by_status: dict[SyncStatus, list[str]] = {}
    for row in rows:
        by_status.setdefault(row.status, []).append(row.blob_id)
    local = {row.blob_id for row in rows}
    retry = args.retry_failed

    def of(*statuses: SyncStatus) -> list[str]:
        return [i for st in statuses for i in by_status.get(st, [])]

    plan = {
        "download": of(SyncStatus.PENDING_DOWNLOAD, *([SyncStatus.FAILED_DOWNLOAD] * retry))
        + sorted(remote - local),
        "upload": of(SyncStatus.PENDING_UPLOAD, *([SyncStatus.FAILED_UPLOAD] * retry)),
        # Synced here, gone from the server: another device deleted it.
        "delete_here": [i for i in of(SyncStatus.SYNCED) if i not in remote],
        "delete_there": of(SyncStatus.PENDING_DELETE),
    }
    for action, ids in plan.items():
        for blob_id in ids:
            out.line_soon(f"{action}\t{blob_id}")
    out.line(f"would download {len(plan['download'])}, upload {len(plan['upload'])}, "
             f"delete here {len(plan['delete_here'])}, delete on the server "
             f"{len(plan['delete_there'])}")
    out.document({"namespace": namespace, "dry_run": True, **plan})
    return EXIT_OK


def sync_prelude(args: argparse.Namespace) -> None:
    """Before the event loop: a plain sync reads the passphrase and starts its KDF, so
    that finding nothing to do costs little more than the KDF (quicksync.py)."""
    if args.watch or args.full or args.retry_failed or args.dry_run:
        return
    from blobsync.client.quicksync import Unlocking

    # The profile first: NotInitialized before a passphrase is asked for.
    home = resolve_home(args)
    from blobsync.client.profile import Profile

    Profile.load(home)
    args.passphrase = read_passphrase(args)
    args.unlocking = Unlocking(home, args.passphrase)


async def _sync(
    args: argparse.Namespace, out: Output, namespace: str, passphrase: str | None
) -> tuple[Any, int, list[str]]:
    """The sync itself (or the watch): (report, retried, still failed); report None after
    a watch."""
    from blobsync.client import SyncStatus

    async with open_manager(args, stream=not args.no_stream, passphrase=passphrase) as manager:
        retried = 0
        if args.retry_failed:
            retried = await manager.retry_failed(namespace)
        if args.watch:
            from .watch_cmds import follow, server_of

            await follow(manager.watch(namespace), out,
                         f"namespace {namespace} on {server_of(manager)}")
            return None, retried, []
        with Bars(bars_wanted(out.json_mode)) as bars:
            report = await manager.sync(namespace, progress=bars.callback, full=args.full)
        # Blobs given up on before this run are left alone by sync: they count as a
        # failure too, or a script would think everything is on the server.
        still_failed: list[str] = []
        for status in (SyncStatus.FAILED_UPLOAD, SyncStatus.FAILED_DOWNLOAD):
            still_failed += await manager.local_list(namespace, status=status)
    return report, retried, still_failed


async def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client import SyncStatus

    namespace = check_id(args.namespace, "namespace") if args.namespace else None
    async with open_manager(args, reading=True) as manager:
        counts = await manager.sync_progress(namespace)
    by_name = {_status_name(k): int(v) for k, v in counts.items()}
    rows = [(s.name, by_name.get(s.name, 0)) for s in SyncStatus]
    rows += [(name, n) for name, n in sorted(by_name.items()) if name not in dict(rows)]
    total = sum(n for _, n in rows)
    width = len(str(max([total, *(n for _, n in rows)])))
    out.line(table([(name, f"{n:>{width}}") for name, n in rows] + [("TOTAL", f"{total:>{width}}")],
                   ("STATUS", "BLOBS")))
    out.document({"namespace": namespace, "statuses": dict(rows), "total": total})
    return EXIT_OK


def _status_name(status: Any) -> str:
    return str(getattr(status, "name", status))


# --------------------------------------------------------------------------- check


async def cmd_check(args: argparse.Namespace, out: Output) -> int:
    async with open_manager(args, reading=not args.repair) as manager:
        found = await manager.check(remote=args.remote, repair=args.repair)
    problems = [str(p) for p in found]
    repaired = [str(p) for p in found if getattr(p, "repaired", False)]
    for problem in problems:
        out.line(problem)
    doc: dict[str, Any] = {"remote": args.remote, "problems": problems, "ok": not problems}
    if args.repair:
        doc["repaired"] = repaired
    out.document(doc)
    if len(problems) > len(repaired):
        extra = f", {len(repaired)} repaired" if repaired else ""
        raise CommandFailed(f"check found {len(problems)} problem(s){extra}", EXIT_VERIFY)
    if repaired:
        out.line(f"repaired {len(repaired)} problem(s): run 'blobsync sync' to download "
                 "those blobs again")
    else:
        out.line("no problems found")
    return EXIT_OK


# --------------------------------------------------------------------------- incoming


async def cmd_incoming_process(args: argparse.Namespace, out: Output) -> int:
    from .incoming_exec import ExecConsumer

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    consumer = ExecConsumer(args.exec, stdout_to_stderr=out.json_mode)
    async with open_manager(args) as manager:
        manager.register_consumer(consumer)
        if args.watch:
            from .watch_cmds import follow, server_of, with_outcomes

            return await follow(with_outcomes(manager.watch_incoming(), consumer), out,
                                f"the incoming box (MX) on {server_of(manager)}")
        report = await manager.process_incoming(limit=args.limit)
    details = dict(consumer.outcomes)
    outcomes: list[tuple[str, str]] = []
    for attr, label in (("processed_ids", "PROCESSED"), ("failed_ids", "FAILED"),
                        ("skipped_ids", "SKIPPED")):
        for blob_id in getattr(report, attr, []):
            outcome = label if label != "FAILED" else details.get(blob_id, label)
            outcomes.append((blob_id, outcome))
            out.line(f"{blob_id}\t{outcome}")
    summary = {
        "processed": count_of(getattr(report, "processed", 0)),
        "failed": count_of(getattr(report, "failed", 0)),
        "skipped": count_of(getattr(report, "skipped", 0)),
    }
    out.line(f"processed {summary['processed']}, failed {summary['failed']}, "
             f"skipped {summary['skipped']}")
    out.document({**summary, "messages": [{"id": i, "outcome": o} for i, o in outcomes]})
    return EXIT_OK


def taken_message(ids: list[str]) -> str:
    if len(ids) == 1:
        return f"id {ids[0]} is taken by another blob on the server"
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    return f"{len(ids)} ids are taken by other blobs on the server: {shown}"


def _blobs(n: int) -> str:
    return f"{n} blob" if n == 1 else f"{n} blobs"
