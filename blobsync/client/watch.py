"""``BlobManager.watch``: keep a namespace in sync until stopped (SPEC 8).

Three tasks feed one queue of ``WatchEvent``s, which the async iterator hands out:

- the follower long-polls the change feed from the stored cursor (``FeedSync``), applies
  each page as it arrives and downloads what it names. Long polls rather than SSE: each
  answer is a page with its cursor, applied and stored exactly as ``sync`` does, so a
  watcher and a sync share one code path; a reconnect is simply the next poll from the
  stored cursor; and the server wakes a waiting poll on a commit as fast as a stream;
- the local poller notices what this profile's store gained from another process (a
  ``blobsync put`` in another shell) through SQLite's ``data_version``, every 0.2 s (one
  pragma, no row read), and uploads it; it also runs the retries when they fall due;
- with ``incoming``, a second follower long-polls the incoming box's feed and processes
  PENDING deliveries at once (incoming.py).

The profile's writer lock is held per round only (as by ``sync``), never while a poll
waits, so other processes get in between rounds. A server that goes away is said once
("offline", with the reason), retried with back-off (0.5 s doubling to 30 s) and said
back ("online") by whichever task hears from it first, which wakes the others from their
pause; the followers resume from the stored cursors. Cancelling the iteration
(or leaving the ``async for``) stops every task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import CursorGone, NoFeed, ProfileBusy, TransientError
from .feedsync import FIRST, RESYNC, FeedSync
from .incoming import MX, IncomingReport
from .model import SyncReport, SyncStatus
from .sync import PHASES, SyncEngine

log = logging.getLogger("blobsync.client.watch")

# Seconds a long poll waits on the server: well under any proxy's idle limit, and the
# transport allows this much silence on top of its read timeout.
POLL_TIMEOUT = 25.0
# How often the local store is asked whether another process wrote to it.
LOCAL_POLL = 0.2
# A server without a feed is listed this often instead.
NO_FEED_POLL = 5.0
# Messages taken per round of the incoming box (process_incoming's limit).
INCOMING_ROUND = 100
# After another process kept the profile's lock past lock_wait, before trying again.
BUSY_PAUSE = 1.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0

KINDS = ("downloaded", "uploaded", "deleted_here", "deleted_there", "incoming", "offline",
         "online", "resync")
_PENDING = (SyncStatus.PENDING_DOWNLOAD, SyncStatus.PENDING_UPLOAD, SyncStatus.PENDING_DELETE)


@dataclass(frozen=True)
class WatchEvent:
    """One thing a watcher did or saw. ``kind``: downloaded, uploaded, deleted_here (a
    remote delete applied here), deleted_there (a local delete sent), incoming (a message
    processed by the consumers; ``detail`` PROCESSED or FAILED), offline (once per
    outage; ``detail`` why), online (back), resync (a full listing: the first one, or
    after the server refused the cursor)."""

    kind: str
    namespace: str
    blob_id: str | None = None
    detail: str = ""


class _Failed:
    """A task's error, handed to the iterator to raise."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Watcher:
    def __init__(
        self,
        feed: FeedSync,
        sync_lock: asyncio.Lock,
        namespace: str,
        *,
        process_incoming: Callable[[], Awaitable[IncomingReport]] | None = None,
        follow: bool = True,
    ) -> None:
        self.feed = feed
        self.store = feed.store
        self.transport = feed.transport
        self.engine: SyncEngine = feed.engine
        self.sync_lock = sync_lock
        self.namespace = namespace
        self.process_incoming = process_incoming
        self.follow = follow  # False: the incoming box alone
        self._queue: asyncio.Queue[WatchEvent | _Failed] = asyncio.Queue()
        self._offline = False
        # Set while the server answers: a task backing off wakes as soon as another one
        # got an answer, not at the end of a pause of up to BACKOFF_MAX.
        self._answering = asyncio.Event()
        self._answering.set()
        self._wake: float | None = None  # when the earliest retry falls due

    # --- the iterator --------------------------------------------------------------------

    async def events(self) -> AsyncIterator[WatchEvent]:
        tasks = []
        if self.follow:
            tasks.append(asyncio.create_task(self._guard(self._follow())))
            tasks.append(asyncio.create_task(self._guard(self._local())))
        if self.process_incoming is not None:
            tasks.append(asyncio.create_task(self._guard(self._incoming())))
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the iterator raises it: nothing is lost silently
            self._queue.put_nowait(_Failed(exc))

    def _emit(self, kind: str, blob_id: str | None = None, detail: str = "",
              namespace: str | None = None) -> None:
        self._queue.put_nowait(WatchEvent(kind, namespace or self.namespace, blob_id, detail))

    def _went_offline(self, exc: BaseException) -> None:
        self._answering.clear()
        if not self._offline:
            self._offline = True
            log.warning("offline: %s; retrying", exc)  # exc says what failed: not twice
            self._emit("offline", detail=str(exc))

    async def _back_online(self) -> None:
        self._answering.set()
        if self._offline:
            self._offline = False
            log.info("the server answers again")
            self._emit("online")
            # What waited for the server while it was away goes now, not on its schedule.
            for status in _PENDING:
                rows = await self.store.rows(self.namespace, [status])
                if rows:
                    await self.store.set_many(self.namespace, [r.blob_id for r in rows],
                                              [status], next_attempt=0)
            self._wake = time.time()

    async def _back_off(self, delay: float) -> None:
        """Wait ``delay`` before trying the server again, or less if another task heard
        from it meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answering.wait(), delay)

    # --- the namespace's feed ------------------------------------------------------------

    async def _follow(self) -> None:
        delay = BACKOFF_FIRST
        caught_up = False
        while True:
            try:
                if not caught_up:
                    await self._catch_up()
                    caught_up = True
                await self._back_online()
                delay = BACKOFF_FIRST
                if not await self._poll():
                    await asyncio.sleep(NO_FEED_POLL)
                    caught_up = False
            except ProfileBusy as exc:
                # Another process holds the profile longer than lock_wait (a big put): the
                # page was not applied, its cursor not stored; read it again in a while.
                log.info("waiting for the profile: %s", exc)
                await asyncio.sleep(BUSY_PAUSE)
            except CursorGone:
                caught_up = False  # the catch-up meets the 410 and lists in full
            except NoFeed:
                self.feed.no_feed = True
                caught_up = False
            except TransientError as exc:
                self._went_offline(exc)
                await self._back_off(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                caught_up = False

    async def _catch_up(self) -> None:
        """From the stored cursor to now (or a full listing), then the transfers."""
        report = SyncReport()
        async with self.sync_lock:
            how = await self.feed.reconcile(self.namespace, report)
        await self._back_online()
        if how in (FIRST, RESYNC):
            self._emit("resync", detail="first listing" if how == FIRST else "cursor refused")
        for b in self.feed.last.deleted_here:
            self._emit("deleted_here", b)
        await self._round()

    async def _poll(self) -> bool:
        """One long poll and what it brings; False when there is no feed to poll."""
        cursor = await self.store.cursor(self.feed.server, self.namespace)
        if cursor is None or self.feed.no_feed:
            return False
        page = await self.transport.changes(self.namespace, cursor, timeout=POLL_TIMEOUT)
        await self._back_online()
        async with self.sync_lock:
            applied = await self.feed.apply(self.namespace, cursor, page, SyncReport())
        for b in applied.deleted_here:
            self._emit("deleted_here", b)
        if applied.to_download:
            await self._round()
        return True

    # --- local changes and retries -------------------------------------------------------

    async def _local(self) -> None:
        seen = await self.store.data_version()
        while True:
            await asyncio.sleep(LOCAL_POLL)
            version = await self.store.data_version()
            due = self._wake is not None and time.time() >= self._wake
            if version != seen or due:
                try:
                    await self._round()
                except ProfileBusy as exc:
                    log.info("waiting for the profile: %s", exc)
                    continue  # ``seen`` unchanged: the next tick tries again
                except TransientError as exc:
                    self._went_offline(exc)
                seen = version

    async def _round(self) -> None:
        """Move what is pending, once (no waiting for retries), and say what went."""
        ns = self.namespace
        async with self.sync_lock:
            before = await self.store.rows(ns, _PENDING)
            if not before:
                self._wake = None
                return
            await self.engine.run(ns, PHASES, wait=False)
            after = await self.store.get_many(ns, [r.blob_id for r in before])
            self._wake = await self.store.next_wake(ns, _PENDING)
        moved: list[tuple[str, str]] = []
        for r in before:
            now = after.get(r.blob_id)
            if r.status is SyncStatus.PENDING_DELETE:
                if now is None:
                    moved.append(("deleted_there", r.blob_id))
            elif now is not None and now.status is SyncStatus.SYNCED:
                kind = "downloaded" if r.status is SyncStatus.PENDING_DOWNLOAD else "uploaded"
                moved.append((kind, r.blob_id))
        if moved:
            # The server answered this round (a retry falling due while the followers
            # back off): "online" comes before what went, and wakes the followers now.
            await self._back_online()
        for kind, blob_id in moved:
            self._emit(kind, blob_id)

    # --- the incoming box ----------------------------------------------------------------

    async def _incoming(self) -> None:
        delay = BACKOFF_FIRST
        # Its own key: this cursor says what was processed, not what the local store holds
        # of MX (a ``sync("MX")`` keeps the other one).
        server = self.feed.server + "#incoming"
        cursor = await self.store.cursor(server, MX)
        no_feed = self.feed.no_feed
        while True:
            try:
                if cursor is None or no_feed:
                    # The listing's cursor: every delivery after what it shows comes in
                    # the feed; those it shows are processed now.
                    _, listed = await self.transport.listing(MX, filter_flag="PENDING")
                    await self._back_online()
                    await self._process()
                    if listed is None or no_feed:  # no feed: look again now and then
                        await asyncio.sleep(NO_FEED_POLL)
                        continue
                    cursor = listed
                    await self.store.set_cursor(server, MX, cursor)
                page = await self.transport.changes(MX, cursor, timeout=POLL_TIMEOUT)
                await self._back_online()
                delay = BACKOFF_FIRST
                if any(c.op in ("put", "flags") and "PENDING" in c.flags for c in page.changes):
                    await self._process()
                if page.cursor != cursor:
                    cursor = page.cursor
                    await self.store.set_cursor(server, MX, cursor)
            except CursorGone:
                cursor = None
            except NoFeed:
                no_feed = True
            except TransientError as exc:
                self._went_offline(exc)
                await self._back_off(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _process(self) -> None:
        assert self.process_incoming is not None
        while True:
            report: Any = await self.process_incoming()
            for b in report.processed_ids:
                self._emit("incoming", b, "PROCESSED", namespace=MX)
            for b in report.failed_ids:
                self._emit("incoming", b, "FAILED", namespace=MX)
            if report.processed + report.failed + report.skipped < INCOMING_ROUND:
                return  # a full round means more may wait: go again
