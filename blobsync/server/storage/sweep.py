"""The server's sweep: orphan payloads removed and freed space given back, on a schedule.

A crash between a payload's commit and its index row leaves an orphan (see ``base``). The
server sweeps once at start-up, then every ``interval`` seconds: ``BlobStore.sweep``
removes orphans older than ``grace`` (payloads of writes under way in this process are
spared whatever their age), then reclaims the space deletions freed in the payload
database. Each sweep is one INFO line with its counts; a failed sweep is one WARNING line,
and the next one comes on schedule.

On the embedded store, a server holding the data dir's lock (``datalock``) is alone: no
other process can be between a commit and its row, so its start-up sweep (``sweep_alone``)
runs before it serves, with no grace, and takes every orphan of a crash at once. On
storage others may share (PostgreSQL, S3) the start-up sweep is the scheduler's first,
in the background, with the grace.

Other processes on the same storage (``--workers N``, or several servers on one
PostgreSQL) are protected by the grace alone: it must exceed the longest time between a
payload's commit and its row insert in any of them, which is seconds, except on S3, where
a multipart object's age counts from the start of its upload.

Each round also compacts the change feed (SPEC 8, ``MetadataIndex.compact_changes``):
changes a later one of the same blob supersedes go, which no reader misses, and so do
changes older than ``feed_retention``, which moves the user's horizon (older cursors get
410). One per deployment is enough: worker 0 of ``--workers N``; several servers on one
PostgreSQL each compact, harmlessly (each compaction is one transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .blobstore import BlobStore, SweepReport

log = logging.getLogger("blobsync.server.sweep")


class Sweeper:
    def __init__(self, store: BlobStore, interval: float, grace: float, *,
                 swept: bool = False, feed_retention: float | None = None) -> None:
        """``swept``: the start-up sweep is done already (``sweep_alone``), so the first
        sweep here waits ``interval`` like the others. ``feed_retention``: each sweep
        also compacts the change feed, dropping changes older than this many seconds
        (None: only the superseded ones)."""
        self.store = store
        self.interval = interval
        self.grace = grace
        self.swept = swept
        self.feed_retention = feed_retention
        self._task: asyncio.Task[None] | None = None
        self._compaction: asyncio.Task[int | None] | None = None

    def start(self) -> None:
        """Sweep in the background now (unless ``swept``), then every ``interval`` s."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sweep")

    async def stop(self) -> None:
        for task in (self._task, self._compaction):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._compaction = None

    async def _run(self) -> None:
        if self.swept:
            await asyncio.sleep(self.interval)
        while True:
            await self.sweep_once()
            # Beside the sweeps, not in their way: a compaction may wait for the index's
            # write lock. One at a time.
            if self._compaction is None or self._compaction.done():
                self._compaction = asyncio.get_running_loop().create_task(
                    self.compact_once(), name="feed compaction")
            await asyncio.sleep(self.interval)

    async def sweep_once(self) -> SweepReport | None:
        """One sweep, logged; None if it failed (logged too)."""
        try:
            report = await self.store.sweep(self.grace)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the server goes on; the next sweep retries
            log.warning("sweep failed: %s: %s", type(exc).__name__, exc)
            return None
        log.info(
            "sweep: %d orphan payloads removed, %d younger than %gs spared, "
            "%d bytes reclaimed, in %.2fs",
            report.removed, report.spared, self.grace, report.reclaimed, report.seconds,
        )
        return report

    async def compact_once(self) -> int | None:
        """One compaction of the change feed, logged; None if it failed (logged too).
        Apart from the sweep: a failure of either leaves the other to run."""
        try:
            dropped = await compact_feed(self.store, self.feed_retention)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next round retries
            log.warning("feed compaction failed: %s: %s", type(exc).__name__, exc)
            return None
        retention = "kept for ever" if self.feed_retention is None else (
            f"retention {self.feed_retention:.15g} s")  # not :g's 2.592e+06
        log.info("feed compaction: %d changes dropped (%s)", dropped, retention)
        return dropped


async def compact_feed(store: BlobStore, retention: float | None) -> int:
    """Drop superseded changes, and those older than ``retention`` seconds (None or 0:
    none for age); return how many went. Safe beside servers: it is one transaction."""
    return await store.index.compact_changes(retention or None)


async def sweep_alone(store: BlobStore) -> SweepReport | None:
    """The start-up sweep of a process that holds the data dir's lock: every orphan goes,
    whatever its age. Run before serving, so that no upload of this process is under way
    either. One INFO line; a failure is a WARNING and the server starts all the same."""
    try:
        report = await store.sweep(0)
    except Exception as exc:  # noqa: BLE001 - the scheduled sweeps will retry
        log.warning("sweep at start-up failed: %s: %s", type(exc).__name__, exc)
        return None
    log.info(
        "sweep at start-up (alone on the data dir, no grace): %d orphan payloads removed, "
        "%d bytes reclaimed, in %.2fs",
        report.removed, report.reclaimed, report.seconds,
    )
    return report
