"""The server's sweep: orphan payloads removed and freed space given back, on a schedule.

A crash between a payload's commit and its index row leaves an orphan (see ``base``). The
server sweeps once at start-up, in the background as soon as it serves, then every
``interval`` seconds: ``BlobStore.sweep`` removes orphans older than ``grace`` (payloads
of writes under way in this process are spared whatever their age), then reclaims the
space deletions freed in the payload database. Each sweep is one INFO line with its
counts; a failed sweep is one WARNING line, and the next one comes on schedule.

Other processes on the same storage (``--workers N``, or several servers on one
PostgreSQL) are protected by the grace alone: it must exceed the longest time between a
payload's commit and its row insert in any of them, which is seconds, except on S3, where
a multipart object's age counts from the start of its upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .blobstore import BlobStore, SweepReport

log = logging.getLogger("blobsync.server.sweep")


class Sweeper:
    def __init__(self, store: BlobStore, interval: float, grace: float) -> None:
        self.store = store
        self.interval = interval
        self.grace = grace
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sweep now, in the background, and then every ``interval`` seconds."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sweep")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self.sweep_once()
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
