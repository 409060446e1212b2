"""Progress of a phase (seal, download, upload, delete) as the library reports it: blobs
counted when they finish, and the bytes of the transfers under way as they move.

A transfer's bytes come from its chunk loop (``Flow.add``: an addition and a clock read
per chunk of up to 1 MiB). The callback runs at most every ``REPORT_EVERY`` seconds
from there, besides once per finished blob: a callback per chunk would cost the caller's
drawing on every piece of a 1 GiB transfer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable

from .localstore import Row
from .model import Progress, ProgressCallback

# Seconds between two reports of bytes moving within blobs.
REPORT_EVERY = 0.1


class Tracker:
    """Progress of one phase across rounds (or across the files of a put)."""

    def __init__(self, phase: str, callback: ProgressCallback | None) -> None:
        self.phase = phase
        self.callback = callback
        self.seen: set[str] = set()
        self.done = 0
        self.bytes_done = 0  # of the finished blobs
        self.bytes_total = 0
        self._sized: set[str] = set()
        # Transfers under way, by blob: their bytes so far count as done too.
        self.moving: dict[str, Flow] = {}
        self.next_report = 0.0
        self._planned = (0, 0, 0)  # (blobs, bytes, sized) known before the first

    def plan(self, blobs: int, nbytes: int, sized: int) -> None:
        """What the phase has before it, counted before its first round: the totals
        reported are at least these (the rounds' rows are the same blobs, counted as
        they come)."""
        self._planned = (blobs, nbytes, sized)
        if blobs:  # a phase with nothing to do draws no bar
            self.report()

    def add(self, rows: Iterable[Row]) -> None:
        for r in rows:
            self.seen.add(r.blob_id)
            self.size(r.blob_id, r.sealed_size)
        self.report()

    def expect(self, key: str, nbytes: int) -> None:
        """One item to come, of ``nbytes``, known before it starts (a file to seal)."""
        self.seen.add(key)
        self.size(key, nbytes)

    def size(self, blob_id: str, sealed_size: int | None) -> None:
        if sealed_size is not None and blob_id not in self._sized:
            self._sized.add(blob_id)
            self.bytes_total += sealed_size

    def flow(self, blob_id: str) -> Flow | None:
        """The byte counter of a transfer of ``blob_id`` starting now (one before it is
        replaced: a retry starts again). None without a callback: nothing to count."""
        if self.callback is None:
            return None
        flow = self.moving[blob_id] = Flow(self, blob_id)
        return flow

    def finished(self, blob_id: str, sealed_size: int | None) -> None:
        self.size(blob_id, sealed_size)
        self.moving.pop(blob_id, None)
        self.done += 1
        self.bytes_done += sealed_size or 0
        self.report()

    def stopped(self, blob_id: str) -> None:
        """A transfer that broke off, to be tried again: its bytes no longer count."""
        if self.moving.pop(blob_id, None) is not None:
            self.report()

    def dropped(self, blob_id: str) -> None:
        """A blob that left this phase without a transfer (vanished, gave up)."""
        self.seen.discard(blob_id)
        self.moving.pop(blob_id, None)
        self.report()

    def report(self) -> None:
        if self.callback is not None:
            self.next_report = time.monotonic() + REPORT_EVERY
            moving = sum(f.done for f in self.moving.values())
            blobs, nbytes, sized = self._planned
            self.callback(Progress(
                self.phase, self.done, max(blobs, len(self.seen)), self.bytes_done + moving,
                max(nbytes, self.bytes_total), max(sized, len(self._sized)),
            ))


class Flow:
    """The bytes of one transfer under way (``Tracker.flow``)."""

    __slots__ = ("_tracker", "blob_id", "done")

    def __init__(self, tracker: Tracker, blob_id: str) -> None:
        self._tracker = tracker
        self.blob_id = blob_id
        self.done = 0

    def start(self, nbytes: int | None, offset: int = 0) -> None:
        """The transfer's whole size, once known (a download's, from its answer), and the
        bytes it has already (a resumed download's partial file)."""
        self._tracker.size(self.blob_id, nbytes)
        self.done = offset

    def add(self, nbytes: int) -> None:
        self.done += nbytes
        tracker = self._tracker
        if time.monotonic() >= tracker.next_report and tracker.moving.get(self.blob_id) is self:
            tracker.report()


async def counted(chunks: AsyncIterable[bytes], flow: Flow) -> AsyncIterator[bytes]:
    """``chunks`` as they are, counted into ``flow`` as each is handed on."""
    async for chunk in chunks:
        yield chunk
        flow.add(len(chunk))
