"""The sync planner: what a round should do, decided from plain data.

No store, no transport, no asyncio here: the engine (sync.py) reads the local statuses
and the server's listings, asks the planner, and carries its answers out. So every
decision is a function of its inputs, tested without a server (tests/client/
test_sync_plan.py):

- ``reconcile``: from the local statuses and the remote listing, which blobs were deleted
  on the server (remove here), which we waited for in vain (forget), which the server
  lost (upload again), which large uploads are already there (compare tags) and which
  are new (download);
- ``plan_feed``: the same from a page of the change feed (SPEC 8), with the tags telling
  a blob deleted and created again under its id;
- ``batches``, ``take_batch``, ``order_uploads``, ``rank``: which blobs travel together
  in a stream, and in which order, highest priority first;
- ``SizeBook``: the average sealed size learned per namespace, to size download streams
  of blobs whose size is unknown until their first byte arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .model import SyncStatus

# Sealed size assumed for a blob when nothing is known yet about the namespace (and at
# most half of stream_max_bytes, so that a first stream asks for two blobs at least). It
# sizes only the first download streams; a wrong guess costs no bytes, since streams are
# read to the end, just a stream longer or shorter than stream_max_bytes.
FIRST_SIZE_GUESS = 64 << 10


class Planned(Protocol):
    """What the planner needs of a local row (``localstore.Row`` has it)."""

    @property
    def id(self) -> int: ...  # insertion order: the older first among equals

    @property
    def priority(self) -> int: ...

    @property
    def sealed_size(self) -> int | None: ...


R = TypeVar("R", bound=Planned)


# --- reconcile -----------------------------------------------------------------------------


@dataclass
class ReconcilePlan:
    """What follows from one listing. Every list is sorted."""

    gone_here: list[str] = field(default_factory=list)  # deleted on the server: remove here
    vanished: list[str] = field(default_factory=list)  # waited for, gone: forget them
    reupload: list[str] = field(default_factory=list)  # SYNCED, the server lost them
    already: list[str] = field(default_factory=list)  # large pending uploads it has
    new: list[str] = field(default_factory=list)  # on the server, unknown here


def reconcile(
    known: set[str],
    unsynced: dict[str, str],
    listed: Iterable[str],
    tombstoned: Iterable[str],
    *,
    uploading: Collection[str] = (),
    large_pending_upload: Collection[str] = (),
) -> ReconcilePlan:
    """``known``: every id of the namespace here; ``unsynced``: the status value of those
    not SYNCED; ``listed``/``tombstoned``: the server's listings; ``uploading``: ids whose
    upload is on its way; ``large_pending_upload``: PENDING_UPLOAD ids too large for a
    stream (sending one only to hear 409 wastes its size; small ones go anyway, the
    stream answers "existing" for the price of a header)."""
    remote, tombs = set(listed), set(tombstoned)
    plan = ReconcilePlan()
    # Set operations on ids, no per-blob Python work for what did not change: a no-op
    # sync of 100,000 blobs must stay well under a second.
    synced = SyncStatus.SYNCED.value
    waiting = (SyncStatus.PENDING_DOWNLOAD.value, SyncStatus.FAILED_DOWNLOAD.value)
    pending_delete = SyncStatus.PENDING_DELETE.value
    for b in sorted(known - remote):
        st = unsynced.get(b, synced)
        if st == synced:
            # Tombstoned: another device deleted it. Not tombstoned: the server lost it
            # (restored from backup, say), so it goes up again.
            (plan.gone_here if b in tombs else plan.reupload).append(b)
        elif st in waiting:
            (plan.gone_here if b in tombs else plan.vanished).append(b)
        elif st == pending_delete:
            # Nothing left to delete on the server, unless an upload of it is still on
            # its way: that upload deletes it once it landed.
            if b not in uploading:
                plan.vanished.append(b)
    plan.already = sorted(set(large_pending_upload) & remote)
    plan.new = sorted(remote - known - tombs)
    return plan


@dataclass
class FeedPlan:
    """What follows from a page of the change feed (SPEC 8). Every list is sorted."""

    gone_here: list[str] = field(default_factory=list)  # deleted on the server: remove here
    vanished: list[str] = field(default_factory=list)  # PENDING_DELETE, gone there already
    replace: list[str] = field(default_factory=list)  # held, another blob there now: fetch
    already: list[str] = field(default_factory=list)  # large pending uploads it has
    new: list[str] = field(default_factory=list)  # put there, unknown here: download


def plan_feed(
    changes: Iterable[tuple[str, str, bytes | None]],
    held: dict[str, str],
    tags: dict[str, bytes | None],
    *,
    uploading: Collection[str] = (),
    large_pending_upload: Collection[str] = (),
) -> FeedPlan:
    """``changes``: (blob_id, op, tag) of one namespace, oldest first; ``held``: the status
    value of those ids that are here; ``tags``: the tags of the held payloads (None: not
    readable, so another blob). A put or delete supersedes what came before it for its
    blob, as on the server; flags change nothing here. The rules are the listing's
    (``reconcile``) with a delete for a tombstone, plus the tag: a put of a held id with
    another tag is a blob deleted and created again there, fetched anew."""
    last: dict[str, tuple[str, bytes | None]] = {}
    for blob_id, op, tag in changes:
        if op in ("put", "delete"):
            last[blob_id] = (op, tag)
    plan = FeedPlan()
    synced = SyncStatus.SYNCED.value
    waiting = (SyncStatus.PENDING_DOWNLOAD.value, SyncStatus.FAILED_DOWNLOAD.value)
    for blob_id, (op, tag) in last.items():
        st = held.get(blob_id)
        if op == "delete":
            if st == synced or st in waiting:
                plan.gone_here.append(blob_id)
            elif st == SyncStatus.PENDING_DELETE.value and blob_id not in uploading:
                plan.vanished.append(blob_id)
        elif st is None:
            plan.new.append(blob_id)
        elif st == synced:
            if tag is None or tags.get(blob_id) != tag:
                plan.replace.append(blob_id)
        elif st == SyncStatus.FAILED_DOWNLOAD.value:
            plan.replace.append(blob_id)  # a new blob under the id: worth another try
        elif st == SyncStatus.PENDING_UPLOAD.value and blob_id in large_pending_upload:
            plan.already.append(blob_id)
    for ids in (plan.gone_here, plan.vanished, plan.replace, plan.already, plan.new):
        ids.sort()
    return plan


# --- batching ------------------------------------------------------------------------------


def rank(row: Planned) -> tuple[int, int]:
    """Sort key: highest priority first, then oldest."""
    return (-row.priority, row.id)


def is_small(row: Planned, stream_sealed_max: int) -> bool:
    """Whether the blob travels in a stream: small, or of a size not known yet."""
    return row.sealed_size is None or row.sealed_size <= stream_sealed_max


def batches(rows: Iterable[R], max_count: int, max_bytes: int) -> list[list[R]]:
    """Rows (already highest priority first) cut into stream batches by count and bytes.
    A row over ``max_bytes`` still goes, alone; unknown sizes count as 0."""
    out: list[list[R]] = []
    cur: list[R] = []
    size = 0
    for r in rows:
        s = r.sealed_size or 0
        if cur and (len(cur) >= max_count or size + s > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(r)
        size += s
    if cur:
        out.append(cur)
    return out


def take_batch(queue: deque[R], guess: int, max_count: int, max_bytes: int) -> list[R]:
    """The next download stream from the front of ``queue`` (taken from it): blobs of
    unknown size count at ``guess``."""
    batch: list[R] = []
    size = 0
    while queue and len(batch) < max_count:
        s = queue[0].sealed_size or guess
        if batch and size + s > max_bytes:
            break
        batch.append(queue.popleft())
        size += s
    return batch


def order_uploads(
    rows: list[R], *, stream: bool, stream_sealed_max: int, max_count: int, max_bytes: int
) -> list[list[R] | R]:
    """An upload round's transfers, highest priority first: stream batches (lists) of
    the small blobs, and each large blob (or every blob, streams off) alone."""
    if stream:
        small = [r for r in rows if is_small(r, stream_sealed_max)]
        large = [r for r in rows if not is_small(r, stream_sealed_max)]
    else:
        small, large = [], rows
    keyed: list[tuple[tuple[int, int], list[R] | R]] = []
    for b in batches(small, max_count, max_bytes):
        keyed.append(((-max(r.priority for r in b), b[0].id), b))
    for r in large:
        keyed.append((rank(r), r))
    keyed.sort(key=lambda k: k[0])
    return [item for _, item in keyed]


# --- sizes ---------------------------------------------------------------------------------


@dataclass
class SizeBook:
    """Per namespace: (bytes, count) of the stream-sized blobs seen, to size requests."""

    stream_sealed_max: int
    stream_max_bytes: int
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)

    def knows(self, namespace: str) -> bool:
        return namespace in self.seen

    def seed(self, namespace: str, stats: tuple[int, int]) -> None:
        """(bytes, count) of the namespace's blobs already in the store."""
        self.seen[namespace] = stats

    def estimate(self, namespace: str) -> int:
        """Average sealed size of the stream-sized blobs of ``namespace`` seen so far."""
        total, n = self.seen.get(namespace, (0, 0))
        if n:
            return max(1, total // n)
        return max(1, min(FIRST_SIZE_GUESS, self.stream_max_bytes // 2))

    def learn(self, namespace: str, sealed_size: int) -> None:
        if sealed_size <= self.stream_sealed_max:
            total, n = self.seen.get(namespace, (0, 0))
            self.seen[namespace] = (total + sealed_size, n + 1)
