"""Feed-driven sync (SPEC 8): what changed on the server since the stored cursor, instead
of a full listing.

``FeedSync.reconcile`` is the first step of every sync. With a cursor for this server and
namespace it reads the feed from there, page after page until ``done``, and applies each
page (the pure planner's ``plan_feed``) before it stores the page's cursor: a crash
between the two re-applies the page, which changes nothing the second time. A sync with
nothing to do is that one request, and no write. It lists in full (``SyncEngine.reconcile``,
SPEC 7) only with no cursor, on 410, against a server without a feed, or when asked to;
the cursor it keeps then is the ``Changes-Cursor`` of that very listing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from .errors import CursorGone, NoFeed
from .feedwire import FeedChange, FeedPage
from .model import SyncReport, SyncStatus
from .parts import UsesParts
from .plan import plan_feed

log = logging.getLogger("blobsync.client.feed")

# How a reconcile went: followed the feed, listed in full (asked to, or a server without
# a feed), listed for want of a cursor (the first sync here) or because the server refused
# the cursor (410).
FEED, FULL, FIRST, RESYNC = "feed", "full", "first", "resync"


@dataclass
class Applied:
    """What a page of the feed did here (a watcher reports it)."""

    deleted_here: list[str] = field(default_factory=list)
    to_download: list[str] = field(default_factory=list)
    incoming: list[str] = field(default_factory=list)  # puts flagged PENDING

    def __bool__(self) -> bool:
        return bool(self.deleted_here or self.to_download or self.incoming)


class FeedSync(UsesParts):
    # Per session (per BlobManager): a server found without a feed is not asked again.
    no_feed = False
    # What the last ``reconcile`` applied from the feed (empty after a full listing).
    last = Applied()

    @property
    def server(self) -> str:
        return str(self.transport.base)

    async def reconcile(self, namespace: str, report: SyncReport, *, full: bool = False) -> str:
        """Learn what changed on the server into the local store; returns how (FEED,
        FULL, FIRST or RESYNC). The profile lock is taken per step that writes."""
        cursor = None
        if not full and not self.no_feed:
            cursor = await self.store.cursor(self.server, namespace)
        how = FULL if full or self.no_feed else FIRST
        self.last = Applied()
        if cursor is not None:
            try:
                self.last = await self.catch_up(namespace, cursor, report)
                return FEED
            except CursorGone:
                log.info("the server no longer has this device's place in its change feed "
                         "(namespace %s): listing in full", namespace)
                how = RESYNC
            except NoFeed:
                self._without_feed()
                how = FULL
        await self.full(namespace, report)
        return how

    async def full(self, namespace: str, report: SyncReport) -> None:
        """The listing reconcile, keeping the cursor of that very listing."""
        async with self.lock.hold("sync"):
            cursor = await self.engine.reconcile(namespace, report)
            if cursor is None:
                self._without_feed()
            await self.store.set_cursor(self.server, namespace, cursor)

    def _without_feed(self) -> None:
        if not self.no_feed:
            log.info("the server has no change feed: syncing by listing (SPEC 7)")
        self.no_feed = True

    async def catch_up(self, namespace: str, cursor: str, report: SyncReport) -> Applied:
        """Read the feed from ``cursor`` until done, applying each page."""
        applied = Applied()
        while True:
            page = await self.transport.changes(namespace, cursor)
            await self.apply(namespace, cursor, page, report, applied)
            cursor = page.cursor
            if page.done:
                return applied

    async def apply(
        self, namespace: str, since: str, page: FeedPage, report: SyncReport,
        applied: Applied | None = None,
    ) -> Applied:
        """Apply one page read from ``since``, then store its cursor. Nothing is written
        for a page that changes nothing and moves no cursor."""
        applied = applied if applied is not None else Applied()
        if not page.changes and page.cursor == since:
            return applied
        async with self.lock.hold("sync"):
            await self._apply_changes(namespace, page.changes, report, applied)
            await self.store.set_cursor(self.server, namespace, page.cursor)
        return applied

    async def _apply_changes(
        self, namespace: str, changes: list[FeedChange], report: SyncReport, applied: Applied
    ) -> None:
        applied.incoming += [c.blob_id for c in changes
                             if c.op in ("put", "flags") and "PENDING" in c.flags]
        ids = {c.blob_id for c in changes if c.op in ("put", "delete")}
        if not ids:
            return
        rows = await self.store.get_many(namespace, ids)
        compare = [r for r in rows.values()
                   if r.status is SyncStatus.SYNCED]
        tags = await self.store.tags(compare) if compare else {}
        large = {b for b, r in rows.items() if r.status is SyncStatus.PENDING_UPLOAD
                 and r.sealed_size is not None and r.sealed_size > self.engine.stream_sealed_max}
        plan = plan_feed(
            [(c.blob_id, c.op, c.tag) for c in changes],
            {b: r.status.value for b, r in rows.items()}, tags,
            uploading=self._uploading(namespace), large_pending_upload=large,
        )
        if plan.gone_here:
            gone = await self.store.remove_many(
                namespace, plan.gone_here,
                only_if=[SyncStatus.SYNCED, SyncStatus.PENDING_DOWNLOAD,
                         SyncStatus.FAILED_DOWNLOAD],
            )
            report.deleted_local += len(gone)
            applied.deleted_here += [r.blob_id for r in gone if r.status is SyncStatus.SYNCED]
        if plan.vanished:
            await self.store.remove_many(namespace, plan.vanished,
                                         only_if=[SyncStatus.PENDING_DELETE])
        if plan.replace:
            await self.store.replace_later(namespace, plan.replace)
            applied.to_download += plan.replace
        if plan.already:
            # As after a listing: the same sealed blob (an upload that went through
            # unseen) or another one under the id (SPEC 7), told by the tags.
            same = await self.engine._settle_existing(
                namespace, report, [rows[b] for b in plan.already], None
            )
            await self.store.set_many(
                namespace, [r.blob_id for r in same], [SyncStatus.PENDING_UPLOAD],
                status=SyncStatus.SYNCED, retries=0, next_attempt=0,
            )
        # SPEC 11: what the puts' metas say, on the rows now waiting for their blob (the
        # last put of an id is the blob it names now): new rows are written with it.
        last = {c.blob_id: c.meta for c in changes if c.op == "put" and c.meta is not None}
        if plan.new:
            await self.engine.add_named_downloads(namespace, plan.new, last)
            applied.to_download += plan.new
        coming = {b: m for b in plan.replace if (m := last.get(b)) is not None}
        if coming:
            await self.engine.learn_metas(namespace, coming)

    def _uploading(self, namespace: str) -> Collection[str]:
        return {b for ns, b in self.engine._uploading if ns == namespace}
