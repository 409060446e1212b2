"""The client commands of ``blobsync``: init, put, get, ls, rm, flags, sync, status, check
and incoming process, over ``blobsync.client.BlobManager``.

Every command is a ``func(args) -> int`` that never raises: failures become one line on
stderr and an exit code from ``failures``. Heavy imports (the client library, rich) happen
inside the commands so that ``blobsync --help`` stays quick.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .failures import (
    DEBUG_ENV,
    EXIT_CODES_HELP,
    EXIT_ID_TAKEN,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_VERIFY,
    CommandFailed,
    UsageError,
    classify,
    guarded,
)
from .output import Output, table, writing_stdout
from .passphrase import read_passphrase
from .progress import Bars, bars_wanted

HOME_ENV = "BLOBSYNC_HOME"
DEFAULT_HOME = "~/.blobsync"
# Multiplies the library's 10..60 s retry schedule; tests set it small so they never wait.
RETRY_SCALE_ENV = "BLOBSYNC_RETRY_SCALE"
# Seconds a command that changes the profile waits for another process holding it.
LOCK_WAIT_ENV = "BLOBSYNC_LOCK_WAIT"
PRIORITIES = ("low", "medium", "high", "urgent")
FLAGS = ("PENDING", "PROCESSING", "PROCESSED", "FAILED")
# Seconds put and sync keep retrying passing failures before leaving blobs pending.
DEFAULT_MAX_WAIT = 60.0
# sync leaves FAILED_* blobs alone unless given this.
RETRY_FAILED_OPTION = "--retry-failed"

Handler = Callable[[argparse.Namespace, Output], Awaitable[int]]


# --------------------------------------------------------------------------- plumbing


def default_home() -> str:
    return os.environ.get(HOME_ENV) or DEFAULT_HOME


def resolve_home(args: argparse.Namespace) -> Path:
    home = getattr(args, "home", None) or default_home()
    return Path(home).expanduser()


def _quiet_library_logs() -> None:
    """The library logs warnings (a retry, a blob that did not verify); without a handler
    Python would print them on stderr, breaking the one-line error contract. Seen with
    BLOBSYNC_DEBUG=1."""
    import logging

    client_log = logging.getLogger("blobsync.client")
    if os.environ.get(DEBUG_ENV):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    elif not client_log.handlers:
        client_log.addHandler(logging.NullHandler())
        client_log.propagate = False


def _command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Wrap an async handler into the ``func(args) -> int`` that main dispatches."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        import asyncio

        from blobsync.client.lock import describe_process

        _quiet_library_logs()
        # Who holds the profile, as a waiting process will read it: the command, never
        # its arguments (put's are file paths, which stay in the encrypted store).
        describe_process(f"blobsync {handler.__name__.removeprefix('cmd_').replace('_', ' ')}")
        out = Output(bool(getattr(args, "json", False)))
        return guarded(lambda: asyncio.run(handler(args, out)), out.error)

    return run


def _settings(settings: Any, *, stream: bool = True, max_wait: float | None = None) -> Any:
    """The profile's ``settings`` with this command's overrides."""
    import dataclasses

    changes: dict[str, Any] = {}
    if not stream:
        changes["stream"] = False
    for env, field in ((RETRY_SCALE_ENV, "retry_scale"), (LOCK_WAIT_ENV, "lock_wait")):
        value = os.environ.get(env)
        if value:
            try:
                changes[field] = float(value)
            except ValueError:
                raise UsageError(f"{env} must be a number, not {value!r}") from None
    # A person at a terminal should not wait forever on a server that is down: retries
    # stop after max_wait seconds and what is left stays pending for the next sync.
    if max_wait is not None:
        changes["max_sync_wait"] = max_wait
    elif settings.max_sync_wait is None:
        changes["max_sync_wait"] = DEFAULT_MAX_WAIT
    try:
        return dataclasses.replace(settings, **changes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@asynccontextmanager
async def _manager(
    args: argparse.Namespace, *, stream: bool = True, reading: bool = False
) -> AsyncIterator[Any]:
    """The opened BlobManager of the profile at --home, closed however the command ends.
    ``reading``: the command only reads the local store, which then opens on a full disk."""
    from blobsync.client import BlobManager
    from blobsync.client.profile import Profile

    home = resolve_home(args)
    # NotInitialized now, before asking for a passphrase that could not help anyway.
    profile = Profile.load(home)
    settings = _settings(profile.client_settings(), stream=stream,
                         max_wait=getattr(args, "max_wait", None))
    manager = await BlobManager.open(home, passphrase=read_passphrase(), settings=settings,
                                     reading=reading)
    try:
        yield manager
    except BaseException:
        # The command's own error is the one to tell: closing after it may fail too (on
        # the same full disk, say) and must not replace it.
        with contextlib.suppress(Exception):
            await manager.close()
        raise
    await manager.close()


def _check_id(value: str, what: str) -> str:
    from blobsync.format.limits import valid_id

    if not valid_id(value):
        raise UsageError(f"invalid {what} {value!r}: use 1-254 of A-Z a-z 0-9 _ -")
    return value


def _count(value: Any) -> int:
    """Report fields may be counts or lists of ids; scripts get counts either way."""
    if isinstance(value, int):
        return value
    try:
        return len(value)
    except TypeError:
        return 0


def _ids(value: Any) -> list[str]:
    if isinstance(value, int):
        return []
    return [str(v) for v in value or []]


# --------------------------------------------------------------------------- init


async def cmd_init(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client import BlobManager

    home = resolve_home(args)
    _check_id(args.user, "user")
    if not args.server.startswith(("http://", "https://")):
        raise UsageError(f"--server must be an http:// or https:// URL, not {args.server!r}")
    token = args.token or os.environ.get("BLOBSYNC_TOKEN")
    if not token:
        raise UsageError("--token is required (or set BLOBSYNC_TOKEN)")
    if args.secret_file is not None and not Path(args.secret_file).is_file():
        raise CommandFailed(f"no such secret file: {args.secret_file}")
    # A new secret gets a new passphrase, typed twice; recovering uses the existing one.
    passphrase = read_passphrase(confirm=not args.recover)
    manager = await BlobManager.init(
        home,
        server=args.server,
        user=args.user,
        token=token,
        passphrase=passphrase,
        secret_file=args.secret_file,
        recover=args.recover,
    )
    await manager.close()
    how = "recovered the secret" if args.recover else "created the profile"
    out.line(f"{how} at {home} for user {args.user} on {args.server}")
    out.document(
        {"home": str(home), "server": args.server, "user": args.user, "recovered": args.recover}
    )
    return EXIT_OK


# --------------------------------------------------------------------------- put


@dataclass(frozen=True)
class Skip:
    """An entry put does not store, and why ("FIFO", "dangling symlink", ...)."""

    path: Path
    reason: str


# put names this many skipped entries on stderr, then only counts the rest.
SKIPS_SHOWN = 20


def collect_files(paths: list[str], skipped: list[Skip] | None = None) -> list[Path]:
    """Regular files named or found under the named directories, in a stable order.

    Everything is collected before anything is stored, so a typo in the last argument
    fails the command before it has half done its work. What is there but cannot be
    stored (a FIFO, a socket, a device, a dangling symlink, a symlink to a directory found
    inside a directory, a file or directory that cannot be read) is appended to
    ``skipped``, never silently left out.
    """
    found: list[Path] = []
    skips: list[Skip] = [] if skipped is None else skipped
    for name in paths:
        path = Path(name)
        if path.is_dir():
            # A link to a directory named by the user is followed, as ls does; links met
            # inside are not (see _files_under).
            found.extend(_files_under(path, skips))
        elif path.is_file():
            if _readable(path, skips):
                found.append(path)
        elif not path.exists():
            raise FileNotFoundError(2, "No such file or directory", name)
        else:
            skips.append(Skip(path, _kind(os.stat(path).st_mode)))
    return found


def _files_under(root: Path, skipped: list[Skip]) -> Iterator[Path]:
    """Files first, then each subdirectory, in name order (as os.walk top-down); links to
    directories are not followed, so a link to a parent cannot loop. scandir's entries know
    their type without a stat per file, which counts for tens of thousands of small files."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        skipped.append(Skip(root, _reason(exc)))
        return
    subdirs: list[Path] = []
    for entry in entries:
        path = root / entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(path)
            elif entry.is_file(follow_symlinks=False):
                if _readable(path, skipped):
                    yield path
            elif entry.is_symlink():
                target = _link_target(path, skipped)
                if target is not None and _readable(path, skipped):
                    yield path
            else:
                skipped.append(Skip(path, _kind(entry.stat(follow_symlinks=False).st_mode)))
        except OSError as exc:
            skipped.append(Skip(path, _reason(exc)))
    for subdir in subdirs:
        yield from _files_under(subdir, skipped)


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


def _readable(path: Path, skipped: list[Skip]) -> bool:
    """Whether put can read ``path``: opened now, so that a file it may not read is
    reported and skipped instead of failing the command halfway through."""
    try:
        # O_NONBLOCK: should it have become a FIFO meanwhile, open does not wait for a
        # writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        skipped.append(Skip(path, _reason(exc)))
        return False
    os.close(fd)
    return True


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


async def cmd_put(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client import SyncReport, SyncStatus, TransientError

    namespace = _check_id(args.namespace, "namespace")
    if args.id is not None:
        _check_id(args.id, "blob id")
        if len(args.paths) != 1 or not Path(args.paths[0]).is_file():
            raise UsageError("--id needs exactly one file")
    not_stored: list[Skip] = []  # FIFOs, dangling links...: said, then exit 7
    files = collect_files(args.paths, not_stored)
    if not out.json_mode:  # --json lists them in its document instead
        report_skips(not_stored)
    stored: list[dict[str, str]] = []
    skipped = 0  # files stored by an earlier put, unchanged since: not stored again
    again: list[str] = []  # their blobs: one the server refused before is sent again
    left: set[str] = set()  # ours still waiting to be uploaded
    refused: set[str] = set()  # ours the server refused (FAILED_UPLOAD)
    postponed: TransientError | None = None  # why the upload could not even start
    async with _manager(args, stream=not args.no_stream) as manager:
        def kept(blob_id: str, path: Path) -> None:
            stored.append({"id": blob_id, "path": str(path)})
            out.line(f"{blob_id}\t{path}")

        def already(blob_id: str, path: Path) -> None:
            # Printed like the others: a script gets the id of every path it named.
            nonlocal skipped
            skipped += 1
            again.append(blob_id)
            kept(blob_id, path)

        report = SyncReport()
        if not args.local_only and not args.force and await manager.stored_copies(
            files, namespace=namespace
        ):
            # Some files were put before: another device may have deleted their blobs
            # since. Learn that first, or put would call "already stored" a blob that the
            # upload pass is about to delete here, and print an id that no longer exists.
            try:
                await manager.learn_remote_changes(namespace)
            except TransientError:
                pass  # unreachable: the upload pass below meets it too, and says so
        with Bars(bars_wanted(out.json_mode) and not args.local_only) as bars:
            if args.id is not None:
                # Run again after it was interrupted: the blob is here, from this very
                # file; it is uploaded below (if it is not already), not refused.
                earlier = {} if args.force else await manager.stored_copies(
                    files, namespace=namespace, local_only=args.local_only)
                if earlier.get(files[0]) == args.id:
                    already(args.id, files[0])
                else:
                    kept(await manager.put(
                        args.id, files[0], namespace=namespace, priority=args.priority,
                        local_only=args.local_only, upload=False,
                    ), files[0])
            else:
                # Many small files per transaction, each batch uploaded in a stream while
                # the next ones are stored.
                await manager.put_many(
                    files, namespace=namespace, priority=args.priority,
                    local_only=args.local_only, stored=kept, upload=True,
                    progress=bars.callback, report=report, force=args.force,
                    already=already,
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
        raise CommandFailed(_taken_message(sorted(taken)), EXIT_ID_TAKEN)
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
            why.append(f"{len(refused - taken)} refused by the server: quota or size")
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
        sys.stderr.write(f"blobsync: {counts}\n")
    return EXIT_OK


def _incomplete_message(not_stored: list[Skip], stored: int, already: int) -> str:
    what = "1 entry" if len(not_stored) == 1 else f"{len(not_stored)} entries"
    files = "1 file" if stored == 1 else f"{stored} files"
    earlier = f", {already} already stored" if already else ""
    return (f"incomplete: {what} skipped (not a regular file, or unreadable), "
            f"{files} stored{earlier}")


def _taken_message(ids: list[str]) -> str:
    if len(ids) == 1:
        return f"id {ids[0]} is taken by another blob on the server"
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    return f"{len(ids)} ids are taken by other blobs on the server: {shown}"


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
    namespace = _check_id(args.namespace, "namespace")
    _check_id(args.blob_id, "blob id")
    async with _manager(args) as manager:
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
            bars.bytes_task(f"get {args.blob_id[:12]}")
            await manager.get(args.blob_id, namespace=namespace, dest=dest)
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
    namespace = _check_id(args.namespace, "namespace")
    server_only = [opt for opt, used in (("--flag", args.flag), ("--order-by", args.order_by),
                                         ("--deleted", args.deleted)) if used]
    if server_only and not args.remote:
        named = (", ".join(server_only[:-1]) + " and " if len(server_only) > 1 else "")
        raise UsageError(f"{named}{server_only[-1]} "
                         f"{'need' if len(server_only) > 1 else 'needs'} --remote: flags, "
                         "dates and deletions are known to the server")
    ids: list[str] = []
    async with _manager(args, reading=True) as manager:
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
    namespace = _check_id(args.namespace, "namespace")
    _check_id(args.blob_id, "blob id")
    from blobsync.client import ForgottenHere

    async with _manager(args) as manager:
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
            sys.stderr.write(f"blobsync: blob {args.blob_id} is forgotten on this device only "
                             f"({outcome.reason}); nothing was deleted on the server\n")
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
    namespace = _check_id(args.namespace, "namespace")
    _check_id(args.blob_id, "blob id")
    async with _manager(args) as manager:
        if args.set is not None:
            await manager.set_flags(args.blob_id, sorted(set(args.set)), namespace=namespace)
        flags = list(await manager.get_flags(args.blob_id, namespace=namespace))
    for flag in flags:
        out.line(flag)
    out.document({"id": args.blob_id, "namespace": namespace, "flags": flags})
    return EXIT_OK


# --------------------------------------------------------------------------- sync, status


async def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client import SyncStatus

    namespace = _check_id(args.namespace, "namespace")
    given_up = (SyncStatus.FAILED_UPLOAD, SyncStatus.FAILED_DOWNLOAD)
    async with _manager(args, stream=not args.no_stream) as manager:
        retried = 0
        if args.retry_failed:
            retried = await manager.retry_failed(namespace)
        with Bars(bars_wanted(out.json_mode)) as bars:
            report = await manager.sync(namespace, progress=bars.callback)
        # Blobs given up on before this run are left alone by sync: they count as a
        # failure too, or a script would think everything is on the server.
        still_failed: list[str] = []
        for status in given_up:
            still_failed += await manager.local_list(namespace, status=status)
    failed = _ids(report.failed)
    pending = _ids(getattr(report, "pending", []))
    summary = {
        "namespace": namespace,
        "downloaded": _count(report.downloaded),
        "uploaded": _count(report.uploaded),
        "deleted_local": _count(report.deleted_local),
        "deleted_remote": _count(report.deleted_remote),
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
    taken = sorted(set(failed) & set(_ids(getattr(report, "taken", []))))
    earlier = set(still_failed) - set(failed)
    if failed and len(taken) == len(set(failed)) and not earlier and not pending:
        # Only id conflicts this run: their own code, so a script can tell them apart.
        raise CommandFailed(f"{_taken_message(taken)} (left FAILED_UPLOAD here)",
                            EXIT_ID_TAKEN)
    if failed:
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        raise CommandFailed(f"{len(failed)} blobs failed to sync: {shown}; once the cause "
                            f"is fixed, 'blobsync sync {RETRY_FAILED_OPTION}' tries them again")
    if still_failed:
        shown = ", ".join(sorted(still_failed)[:5]) + (", ..." if len(still_failed) > 5 else "")
        raise CommandFailed(f"{len(still_failed)} blobs failed earlier and were left alone: "
                            f"{shown}; 'blobsync sync {RETRY_FAILED_OPTION}' tries them again")
    if pending:
        raise CommandFailed(f"{len(pending)} blobs are still waiting for a retry; "
                            "run 'blobsync sync' again later")
    return EXIT_OK


async def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client import SyncStatus

    namespace = _check_id(args.namespace, "namespace") if args.namespace else None
    async with _manager(args, reading=True) as manager:
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
    async with _manager(args, reading=not args.repair) as manager:
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
    async with _manager(args) as manager:
        manager.register_consumer(consumer)
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
        "processed": _count(getattr(report, "processed", 0)),
        "failed": _count(getattr(report, "failed", 0)),
        "skipped": _count(getattr(report, "skipped", 0)),
    }
    out.line(f"processed {summary['processed']}, failed {summary['failed']}, "
             f"skipped {summary['skipped']}")
    out.document({**summary, "messages": [{"id": i, "outcome": o} for i, o in outcomes]})
    return EXIT_OK


# --------------------------------------------------------------------------- parsers


def _common() -> argparse.ArgumentParser:
    """--home and --json also after the command; SUPPRESS keeps main's values otherwise."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"profile directory (default: ${HOME_ENV}, else {DEFAULT_HOME})")
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout, for scripts")
    return parent


def _namespace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", metavar="NS", default="default",
                        help="namespace of the blobs (default: %(default)s)")


# For parsers whose values may start with '-' (see init and ls).
_DASH_VALUE = re.compile(r"^-.")


def _max_wait_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-wait", type=float, metavar="SECONDS", default=None,
        help="stop retrying passing failures after this long; what is left stays pending "
             f"for the next sync (default: the profile's setting, else {DEFAULT_MAX_WAIT:g})",
    )


def _flag(value: str) -> str:
    flag = value.upper()
    if flag not in FLAGS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(FLAGS)}")
    return flag


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """--home and --json before the command (cli.main calls this on the top parser)."""
    parser.add_argument("--home", metavar="DIR", default=default_home(),
                        help=f"client profile directory (default: ${HOME_ENV}, "
                             f"else {DEFAULT_HOME})")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable JSON on stdout, for scripts")


def register(subparsers: Any) -> None:
    """Add the client commands to ``blobsync``'s subparsers (called by cli.main)."""
    common = _common()

    def add(name: str, handler: Handler, help_text: str, description: str) -> Any:
        parser = subparsers.add_parser(
            name, parents=[common], help=help_text, description=description,
            epilog=EXIT_CODES_HELP,
        )
        parser.set_defaults(func=_command(handler))
        return parser

    p = add("init", cmd_init, "create the client profile of this device",
            "Create the profile at --home: server, user, token and the storage secret, "
            "kept encrypted under a passphrase (BLOBSYNC_PASSPHRASE, else prompted twice). "
            "The secret is also stored on the server, encrypted under the passphrase, so "
            "that other devices can --recover it.")
    p.add_argument("--server", required=True, metavar="URL",
                   help="server URL, e.g. https://blobs.example.org:2424")
    p.add_argument("--user", required=True, metavar="UUID", help="your user id on the server")
    p.add_argument("--token", metavar="TOKEN",
                   help="your access token (default: $BLOBSYNC_TOKEN)")
    # Tokens are base64url and may begin with '-', which argparse would take for an
    # option; init's real options still match first, as exact or abbreviated names.
    p._negative_number_matcher = _DASH_VALUE
    how = p.add_mutually_exclusive_group()
    how.add_argument("--secret-file", metavar="F",
                     help="use the storage secret in file F instead of making a new one")
    how.add_argument("--recover", action="store_true",
                     help="fetch the secret that another device stored on the server "
                          "(needs that device's passphrase)")

    p = add("put", cmd_put, "store files and upload them",
            "Store each file (directories recursively) as a blob on this device, then "
            "upload them all in one pass. Prints 'blob_id<TAB>path' per file. A file put "
            "before and unchanged since (same path, size and mtime) is not stored again: "
            "its blob is printed as well, uploaded if it is still pending, and stderr "
            "counts them ('N already stored, M stored'). Entries that are not regular "
            "files (FIFOs, sockets, devices, dangling symlinks, symlinks to directories) "
            "or cannot be read are skipped, each said on stderr, and the exit code is "
            "then 7.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="file or directory to store")
    p.add_argument("--id", metavar="ID", help="blob id to use (only with exactly one file; "
                                              "default: a new random id)")
    _namespace_arg(p)
    p.add_argument("--priority", choices=PRIORITIES, default="medium",
                   help="transfer priority (default: %(default)s)")
    p.add_argument("--local-only", action="store_true",
                   help="keep the blobs on this device only, never upload them")
    p.add_argument("--no-stream", action="store_true",
                   help="upload one request per blob instead of batching in streams")
    p.add_argument("--force", action="store_true",
                   help="store every file anew, even one stored before and unchanged")
    _max_wait_arg(p)

    p = add("get", cmd_get, "write a blob's content to a file or stdout",
            "Write the verified content of a blob, from this device or else downloaded. "
            "A blob that fails verification is never written: with -o the file is not "
            "created. As with cp, a file is created or replaced atomically (a new one "
            "follows the umask), a symlink is followed, and a device or FIFO is written "
            "through, only once the blob verified.")
    p.add_argument("blob_id", metavar="ID", help="the blob id")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE (default or '-': stdout)")
    _namespace_arg(p)

    p = add("ls", cmd_ls, "list blob ids",
            "List the blob ids of a namespace held on this device, or with --remote on "
            "the server.")
    p.add_argument("--remote", action="store_true", help="list the server's blobs")
    _namespace_arg(p)
    p.add_argument("--flag", metavar="F", type=_flag,
                   help=f"only blobs carrying flag F ({', '.join(FLAGS)}); needs --remote")
    p.add_argument("--order-by", choices=("date", "+date", "-date"),
                   help="date/+date oldest first, -date newest first; needs --remote")
    # argparse takes '-date' for an unknown option; reading it like a negative number
    # makes `--order-by -date` work as SPEC 4 spells it (ls has no option starting -d).
    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-date$")
    p.add_argument("--count", action="store_true", help="print only how many")
    p.add_argument("--deleted", action="store_true",
                   help="list deleted blobs (tombstones) instead; needs --remote")

    p = add("rm", cmd_rm, "delete a blob here and on the server",
            "Delete a blob on this device and on the server; other devices delete it at "
            "their next sync. With the server unreachable the deletion is queued for the "
            "next sync, and the command says so and exits 4.")
    p.add_argument("blob_id", metavar="ID", help="the blob id")
    _namespace_arg(p)

    p = add("flags", cmd_flags, "show or set a blob's flags on the server",
            "Print the flags of a blob, or with --set replace them (an empty --set clears "
            "them). Flags are PENDING, PROCESSING, PROCESSED, FAILED.")
    p.add_argument("blob_id", metavar="ID", help="the blob id")
    p.add_argument("--set", nargs="*", type=_flag, metavar="FLAG",
                   help="replace the flags with these")
    _namespace_arg(p)

    p = add("sync", cmd_sync, "synchronize a namespace with the server",
            "Apply the server's deletions, then download what is missing here and upload "
            "what is missing there. Blobs that failed for good (refused by the server, or "
            "failing verification three times) are left alone unless --retry-failed is "
            "given. Exits 1 if some blobs failed, now or before; 10 if the only failures of "
            "this run are ids the server holds under other blobs.")
    _namespace_arg(p)
    p.add_argument(RETRY_FAILED_OPTION, action="store_true",
                   help="give the blobs marked FAILED_UPLOAD or FAILED_DOWNLOAD another try "
                        "(after the quota was raised, say)")
    p.add_argument("--no-stream", action="store_true",
                   help="transfer one request per blob instead of batching in streams")
    _max_wait_arg(p)

    p = add("status", cmd_status, "count blobs per sync status",
            "Print a table of how many blobs of this device are in each sync status.")
    p.add_argument("--namespace", "-n", metavar="NS", default=None,
                   help="count one namespace only (default: all)")

    p = add("check", cmd_check, "verify every local blob (and with --remote, the server's)",
            "Verify the tag of every blob on this device; with --remote also compare the "
            "local and remote listings and each remote blob's tag with the local copy's "
            "(remote blobs not verified here are downloaded and verified). Prints each "
            "problem and exits 5 if there is any (with --repair: any left unrepaired).")
    p.add_argument("--remote", action="store_true",
                   help="also check the server's blobs against this device")
    p.add_argument("--repair", action="store_true",
                   help="put every synced blob whose local copy is missing or damaged back "
                        "to be downloaded at the next sync")

    incoming = subparsers.add_parser(
        "incoming", parents=[common], help="the incoming box (namespace MX)",
        description="Work on the incoming box: messages that services deliver for you.",
        epilog=EXIT_CODES_HELP,
    )
    incoming_sub = incoming.add_subparsers(dest="incoming_command", metavar="ACTION",
                                           required=True, help="what to do")
    p = incoming_sub.add_parser(
        "process", parents=[common], help="process pending messages with a command",
        description="Reserve each pending message, run CMD (through the shell) with the "
                    "payload on stdin and BLOBSYNC_BLOB_ID in the environment. Exit status "
                    "0 marks it PROCESSED and deletes it; anything else marks it FAILED.",
        epilog=EXIT_CODES_HELP,
    )
    p.set_defaults(func=_command(cmd_incoming_process))
    p.add_argument("--exec", required=True, metavar="CMD", help="shell command per message")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="process at most N messages (default: %(default)s)")
