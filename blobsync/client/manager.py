"""BlobManager: the one object applications (and the CLI) use.

It ties the profile, the storage secret, the local store, the transport, the sync engine
and the incoming box together (the put, get and delete paths are putting.py, getting.py
and deleting.py). Plaintext exists only in memory and in files the caller names; keys
never leave this process, and neither reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

from .check import Checker
from .deleting import Deleter
from .enroll import Unlocked, enroll, unlock
from .errors import ServerError, TransientError
from .feedsync import FeedSync
from .getting import Getter
from .incoming import IncomingConsumer, IncomingReport, IncomingStreamConsumer, process_incoming
from .localstore import LocalStore, Named, Row, Source
from .lock import ProfileLock
from .model import (
    HAS_PAYLOAD,
    ForgottenHere,
    Priority,
    ProgressCallback,
    SyncReport,
    SyncStatus,
    check_ids,
    priority_rank,
)
from .parts import Parts
from .profile import Profile
from .putting import Naming, Putter, file_source, names_by_path
from .settings import ClientSettings
from .sync import PHASES, SyncEngine
from .transport import Transport
from .watch import Watcher, WatchEvent

log = logging.getLogger("blobsync.client")


class BlobManager:
    def __init__(
        self,
        profile: Profile,
        secret: bytes,
        settings: ClientSettings,
        store: LocalStore,
        transport: Transport,
    ) -> None:
        self.profile = profile
        self.settings = settings
        self.store = store
        self.transport = transport
        self._secret = secret
        self.engine = SyncEngine(store, transport, secret, settings)
        # One writer per profile across processes (lock.py); readers never take it.
        self.lock = ProfileLock(profile.home, wait=settings.lock_wait)
        self.engine.lock = self.lock
        self._consumers: list[IncomingConsumer] = []
        self._sync_lock = asyncio.Lock()
        self._parts = Parts(profile.home, store, transport, self.engine, self.lock, settings,
                            secret)
        self._putter = Putter(self._parts)
        self._getter = Getter(self._parts)
        self._deleter = Deleter(self._parts)
        self.feed = FeedSync(self._parts)

    def __repr__(self) -> str:  # never show the secret
        return f"<BlobManager {self.profile.user}@{self.profile.server} home={self.profile.home}>"

    # --- life cycle ----------------------------------------------------------------------

    @classmethod
    async def init(
        cls,
        home: str | Path,
        *,
        server: str,
        user: str,
        token: str,
        passphrase: str,
        secret_file: str | Path | None = None,
        recover: bool = False,
        settings: ClientSettings | None = None,
    ) -> BlobManager:
        """Create the profile at ``home`` (see enroll.py); fails leaving nothing behind."""
        return cls._of(await enroll(
            Path(home).expanduser(), server=server, user=user, token=token,
            passphrase=passphrase,
            secret_file=secret_file, recover=recover, settings=settings,
        ))

    @classmethod
    async def open(
        cls, home: str | Path, *, passphrase: str, settings: ClientSettings | None = None,
        reading: bool = False,
    ) -> BlobManager:
        """Open the profile at ``home``. ``reading``: the caller only reads the local
        store (status, ls, check), so on a disk too full for SQLite's -shm file the store
        is opened for reading alone instead of failing (``LocalStore.reading_only``)."""
        # "~/.blobsync", as the docs and the CLI spell it, is the user's, not ./~.
        return cls._of(await unlock(Path(home).expanduser(), passphrase=passphrase,
                                    settings=settings, reading=reading))

    @classmethod
    def _of(cls, parts: Unlocked) -> BlobManager:
        return cls(parts.profile, parts.secret, parts.settings, parts.store, parts.transport)

    async def close(self) -> None:
        await self.transport.close()
        await self.store.close()

    async def __aenter__(self) -> BlobManager:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            await self.close()
            return
        # The error in flight is the one to tell: closing after it (on the same full
        # disk, say) may fail too and must not replace it.
        with contextlib.suppress(Exception):
            await self.close()

    # --- put / get / delete --------------------------------------------------------------

    async def put(
        self,
        blob_id: str | None,
        data: bytes | str | Path,
        *,
        namespace: str = "default",
        priority: Priority = "medium",
        local_only: bool = False,
        upload: bool = True,
        name: str | None = None,
        mtime: float | None = None,
        mode: int | None = None,
        media_type: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Seal ``data`` (bytes, or the path of a file, streamed) into the local store, then
        upload it unless ``local_only`` or ``upload=False`` (it then waits, PENDING_UPLOAD,
        for the next sync). A passing upload failure leaves it PENDING_UPLOAD with its retry
        scheduled; a refusal (413, 507, ...) marks it FAILED_UPLOAD and raises RemoteError.

        ``name`` gives the blob a meta (SPEC 11): a relative path with ``/`` between its
        parts, sealed with the blob's size, ``mtime`` (a file's own, else now), ``mode``
        (a file's own permission bits, else none) and ``media_type``. It is kept readable
        in this device's encrypted store (``named``). ``progress`` follows a large one's sealing.
        """
        blob_id = blob_id or uuid.uuid4().hex
        check_ids(namespace, blob_id)
        naming = None if name is None else Naming(name, mtime, mode, media_type)
        await self._putter.put(
            blob_id, data, namespace, priority_rank(priority), local_only, upload, naming, progress
        )
        return blob_id

    async def named(
        self, prefix: str = "", *, namespace: str = "default", whole_parts: bool = False,
        name: str | None = None,
    ) -> list[Named]:
        """The blobs of ``namespace`` in name order (those without a name first, with an
        empty one), as this device knows them; not those being deleted. ``prefix``: names
        that start with it; with ``whole_parts``, only the name itself and the names under
        it as a directory (``photos`` takes ``photos/a.jpg``, not ``photos2/b.jpg``).
        ``name``: that exact name (several blobs may share one)."""
        check_ids(namespace)
        return await self.store.named(namespace, prefix, whole_parts=whole_parts, name=name)

    async def stored_copies(
        self, paths: Iterable[str | Path], *, namespace: str = "default",
        local_only: bool = False, sources: Sequence[Source] | None = None,
        names: Sequence[str] | None = None,
    ) -> dict[Path, str]:
        """Blob ids, by path, of the files put into ``namespace`` before and unchanged
        since (same absolute path, size and mtime), whose blob is still here. A blob kept
        LOCAL_ONLY counts only for a ``local_only`` put: the others want theirs uploaded.
        ``sources``: as for ``put_many``. ``names``, one per path, as for ``put_many``:
        a blob whose meta has the file's name, size and mtime also counts, whichever
        device stored it (SPEC 11)."""
        files = _with_sources(paths, sources)
        return await self._putter.stored_copies(
            files, namespace, local_only, names_by_path(files, names)
        )

    async def put_many(
        self,
        paths: Iterable[str | Path],
        *,
        namespace: str = "default",
        priority: Priority = "medium",
        local_only: bool = False,
        stored: Callable[[str, Path], None] | None = None,
        upload: bool = False,
        progress: ProgressCallback | None = None,
        report: SyncReport | None = None,
        force: bool = False,
        already: Callable[[str, Path], None] | None = None,
        sources: Sequence[Source] | None = None,
        names: Sequence[str] | None = None,
    ) -> list[str]:
        """Seal files into the local store under new ids. Small files are read, sealed
        and kept many per transaction: one commit per blob is what made storing thousands
        of small files slow. Each batch is kept whole or not at all. ``stored(id, path)``
        is called for each file once it is kept. Returns the id of every path, in order.

        A file put into the namespace before and unchanged since (``stored_copies``) is
        not stored again: ``already(id, path)`` is called with its blob instead, in the
        order of the paths. So a put run again after it was interrupted stores only what
        is missing; a blob of such a file still pending upload goes with the next
        ``send_missing``. ``force`` stores every file anew. Each blob is recorded with the
        file it came from (absolute path, size, mtime) in the transaction that keeps it.

        Without ``upload`` the blobs wait PENDING_UPLOAD for ``send_missing`` or a sync.
        With it (and streams on), each batch of small blobs is stream-uploaded from memory
        as soon as it is kept, while the next batches are read and sealed: at most
        ``settings.concurrency`` batches in flight. What fails to go stays pending as in a
        sync; large files are never uploaded here (``send_missing`` takes them).
        ``report`` counts the uploads, ``progress`` follows them and the sealing ("seal").

        ``sources``, one per path in order, are the files' ``file_source`` when the caller
        took them already (the CLI, from the open that checked each file can be read):
        then no file is stat'ed again.

        ``names``, one per path in order, give each blob a meta (SPEC 11, as ``put``'s
        ``name``) with the file's size, mtime and mode.
        """
        check_ids(namespace)
        rank = priority_rank(priority)
        files = _with_sources(paths, sources)
        return await self._putter.put_many(
            files, namespace, rank, local_only, stored, upload, progress, report, force,
            already, names_by_path(files, names),
        )

    async def _upload_now(self, row: Row, sealed: bytes | None = None) -> None:
        # The upload step of put alone: tests drive it on a blob stored with upload=False.
        await self._putter.upload_now(row, sealed)

    async def get(
        self,
        blob_id: str,
        *,
        namespace: str = "default",
        priority: Priority = "medium",
        dest: str | Path | None = None,
        progress: ProgressCallback | None = None,
    ) -> bytes | None:
        """The plaintext: from the local store, else downloaded, verified and kept.

        With ``dest`` the plaintext goes to that file, which appears (or is replaced) only
        once the blob verified: until then it has no name, so a blob that does not verify,
        or a crash, leaves nothing (destfile.py). A new file follows the umask, a replaced
        one keeps its mode; a symlink is followed. A character or block device or a FIFO
        is written through, and only after the whole blob verified. None is returned.
        ``progress`` follows the sealed bytes as they arrive (phase "download"), or as
        they are read from the store (phase "read").
        """
        check_ids(namespace, blob_id)
        return await self._getter.get(namespace, blob_id, priority_rank(priority), dest, progress)

    def open_stream(
        self, blob_id: str, *, namespace: str = "default"
    ) -> AsyncIterator[bytes]:
        """Verified plaintext in chunks (an async generator: ``async for c in
        m.open_stream(id)``). A blob not yet local is fetched first. Every chunk is handed
        out only after the whole blob verified (verified.py): a fresh download is opened
        once, as it arrives, into a holder that spills to an unnamed temporary file past
        1 MiB; a local blob is opened once into memory when it fits, else verified first
        and decrypted again as it is handed out (no plaintext copy on disk)."""
        # The getter's generator itself: no second generator hop per chunk.
        return self._getter.open_stream(namespace, blob_id)

    async def delete(
        self, blob_id: str, *, namespace: str = "default"
    ) -> TransientError | ForgottenHere | None:
        """Delete locally and on the server. If the server cannot be reached the blob stays
        PENDING_DELETE and the next sync finishes the job: then the passing error that
        postponed the DELETE is returned (not raised: the local part is done). None when
        nothing is left to do, or an upload in flight here sends the DELETE once landed.

        A blob this device never got onto the server (FAILED_UPLOAD, or PENDING_UPLOAD
        while the server holds another blob or none under its id) is forgotten here only,
        and ForgottenHere says why: a DELETE would remove another device's blob (SPEC 7)."""
        check_ids(namespace, blob_id)
        return await self._deleter.delete(namespace, blob_id)

    async def status(self, blob_id: str, *, namespace: str = "default") -> SyncStatus | None:
        """The local sync status of one blob; None when the store does not know it."""
        row = await self.store.get(namespace, blob_id)
        return row.status if row else None

    # --- listing and flags ---------------------------------------------------------------

    async def local_list(
        self, namespace: str = "default", *, status: SyncStatus | None = None
    ) -> list[str]:
        """Ids in the local store, oldest first: with ``status`` those in it; without, the
        blobs whose payload is here (SYNCED, PENDING_UPLOAD, FAILED_UPLOAD, LOCAL_ONLY)."""
        rows = await self.store.rows(namespace, [status] if status else HAS_PAYLOAD)
        return [r.blob_id for r in rows]

    async def remote_list(
        self,
        namespace: str = "default",
        *,
        filter_flag: str | None = None,
        order_by: str | None = None,
        deleted: bool = False,
    ) -> list[str]:
        return await self.transport.list_blobs(
            namespace, filter_flag=filter_flag, order_by=order_by, deleted=deleted
        )

    async def remote_count(
        self, namespace: str = "default", *, filter_flag: str | None = None
    ) -> int:
        return await self.transport.count_blobs(namespace, filter_flag=filter_flag)

    async def get_flags(self, blob_id: str, *, namespace: str = "default") -> list[str]:
        return await self.transport.get_flags(namespace, blob_id)

    async def set_flags(
        self,
        blob_id: str,
        flags: list[str],
        *,
        namespace: str = "default",
        expect: str | None = None,
    ) -> None:
        await self.transport.set_flags(namespace, blob_id, list(flags), expect=expect)

    # --- sync ----------------------------------------------------------------------------

    async def sync(
        self, namespace: str = "default", *, progress: ProgressCallback | None = None,
        full: bool = False,
    ) -> SyncReport:
        """Learn what changed on the server (its change feed from this device's cursor;
        a full listing with ``full``, without a cursor, on 410 or against a server without
        a feed: SPEC 8), then download, upload and delete what is pending (SPEC 7)."""
        return await self._reconcile_and_run(namespace, PHASES, progress, full=full)

    def watch(
        self, namespace: str = "default", *, incoming: bool | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Keep ``namespace`` in sync until the iteration stops: remote changes applied as
        they arrive (a long poll of the feed), local puts (of any process on this profile)
        uploaded as they are made, and with ``incoming`` (by default: when consumers are
        registered) incoming messages processed as they are delivered. Yields a
        ``WatchEvent`` per thing done; see watch.py."""
        check_ids(namespace)
        if incoming is None:
            incoming = bool(self._consumers)
        return Watcher(self.feed, self._sync_lock, namespace,
                       process_incoming=self.process_incoming if incoming else None).events()

    def watch_incoming(self) -> AsyncIterator[WatchEvent]:
        """Process the incoming box as messages are delivered, and nothing else: what
        ``incoming process --watch`` runs. Needs a registered consumer."""
        return Watcher(self.feed, self._sync_lock, "MX", process_incoming=self.process_incoming,
                       follow=False).events()

    async def send_missing(
        self,
        namespace: str = "default",
        *,
        progress: ProgressCallback | None = None,
        report: SyncReport | None = None,
    ) -> int:
        """Upload what is pending; returns how many went. ``report`` (when given) also
        gets the failures, ``taken`` among them."""
        return (await self._reconcile_and_run(namespace, ["upload"], progress, report)).uploaded

    async def fetch_missing(
        self, namespace: str = "default", *, progress: ProgressCallback | None = None
    ) -> int:
        return (await self._reconcile_and_run(namespace, ["download"], progress)).downloaded

    async def _reconcile_and_run(
        self,
        namespace: str,
        phases: Iterable[str],
        progress: ProgressCallback | None,
        report: SyncReport | None = None,
        *,
        full: bool = False,
    ) -> SyncReport:
        check_ids(namespace)
        async with self._sync_lock:
            report = report if report is not None else SyncReport()
            waited = await self._reconcile(namespace, report, full=full)
            return await self.engine.run(
                namespace, phases, progress=progress, report=report, waited=waited
            )

    async def learn_remote_changes(self, namespace: str = "default") -> None:
        """Apply what the server's listing says (deletions from other devices above all)
        without transferring anything: a put asks this before it trusts that a file it
        stored before is still stored."""
        check_ids(namespace)
        async with self._sync_lock:
            await self._reconcile(namespace, SyncReport())

    async def _reconcile(self, namespace: str, report: SyncReport, *, full: bool = False
                         ) -> float:
        """The feed (or the listing) and what follows from it. A server answering a 5xx is
        retried on the transfers' schedule, within ``max_sync_wait`` (never without one: a
        library call must not wait forever); returns the seconds waited, which the run
        counts against the same budget. A server that cannot be reached at all fails at
        once: offline is no passing state of the server, and the caller says so."""
        budget = self.settings.max_sync_wait
        waited = 0.0
        attempt = 0
        while True:
            try:
                # The lock per step, not for the whole run: engine.run takes it per round
                # and lets go while it waits for a retry; the feed takes it per page.
                await self.feed.reconcile(namespace, report, full=full)
                return waited
            except ServerError as exc:
                attempt += 1
                pause = self.settings.retry_delay(attempt)
                if budget is None or waited + pause > budget:
                    raise
                log.info("listing failed (%s): retrying in %.1f s", exc, pause)
                waited += pause
                await asyncio.sleep(pause)

    async def sync_progress(self, namespace: str | None = None) -> dict[SyncStatus, int]:
        return await self.store.counts(namespace)

    async def retry_failed(
        self, namespace: str | None = None, *, blob_ids: Iterable[str] | None = None
    ) -> int:
        """Give FAILED_* blobs another chance and make every pending blob due now; only
        those of ``blob_ids`` when given (a ``put`` run again for files it stored)."""
        moves = {
            SyncStatus.FAILED_DOWNLOAD: SyncStatus.PENDING_DOWNLOAD,
            SyncStatus.FAILED_UPLOAD: SyncStatus.PENDING_UPLOAD,
        }
        wanted = None if blob_ids is None else set(blob_ids)
        n = 0
        async with self.lock.hold("sync"):
            for row in await self.store.rows(namespace, [*moves, *PENDING]):
                if wanted is not None and row.blob_id not in wanted:
                    continue
                await self.store.update(
                    row.namespace, row.blob_id, only_if=[row.status],
                    status=moves.get(row.status, row.status), retries=0, next_attempt=0,
                    verify_failures=0,
                )
                n += row.status in moves
        return n

    async def check(self, *, remote: bool = False, repair: bool = False) -> list[str]:
        """Problems, one line each: database integrity, local copies that do not verify,
        missing or stray files, blobs given up, and with ``remote`` disagreements with
        the server (a listing, and for every blob verified here a ranged GET of the
        server's tag: another blob under the same id shows there).

        With ``repair`` every SYNCED blob whose local bytes are missing or damaged goes
        back to PENDING_DOWNLOAD, for the next sync to fetch; its line says so, and is a
        ``CheckProblem`` whose ``repaired`` is true. A blob never uploaded has no other
        copy: its line says it is lost."""
        checker = Checker(self._parts, lambda row: self._getter.open_local(row, None))
        return await checker.run(remote=remote, repair=repair)

    # --- incoming box --------------------------------------------------------------------

    def register_consumer(self, consumer: IncomingConsumer | IncomingStreamConsumer) -> None:
        self._consumers.append(consumer)

    async def process_incoming(self, *, limit: int = 100) -> IncomingReport:
        return await process_incoming(
            self.transport, self._secret, list(self._consumers), limit=limit,
            tmp_dir=self.store.tmp_dir,
        )


def _with_sources(
    paths: Iterable[str | Path], sources: Sequence[Source] | None
) -> list[tuple[Path, Source]]:
    """Each path (a Path) with its source: the caller's, else taken now."""
    if sources is None:
        return [(p, file_source(p)) for p in map(Path, paths)]
    return list(zip(map(Path, paths), sources, strict=True))


PENDING = (SyncStatus.PENDING_DOWNLOAD, SyncStatus.PENDING_UPLOAD, SyncStatus.PENDING_DELETE)
