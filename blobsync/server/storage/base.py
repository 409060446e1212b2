"""The two storage interfaces the HTTP layer sees: a metadata index and a payload store.

Every index passes the index suite and every payload store the payload suite in
``tests/storage/``, and each combination the server runs the combined suite. ``BlobStore``
(``blobstore.py``) combines them into the operations the routes call; the routes never
touch an implementation directly.

Write order, for every backend: the payload goes to a location no other writer can use and
is made durable; only then is the index row inserted, in one transaction that enforces id
uniqueness and the quota. The loser of a race deletes its own payload. A crash between the
two leaves an orphan payload that no row names: invisible, and removed by the sweep
(``BlobStore.sweep``, at server start-up and on a schedule) or ``admin gc``, once older than
a grace period. Deletion removes the row first, then the payload.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum

from blobsync.format.errors import BlobsyncError

# The largest piece PayloadStore.read yields: what one transfer holds, and big enough that
# per-piece costs (a thread hop, a socket write) are small against the copying.
READ_PIECE_MAX = 1 << 20

# A stream upload gathers blobs up to BATCH_BLOB_MAX bytes in memory and stores them
# together (BlobStore.batch); a payload store may keep payloads up to it inline. Here,
# under both, so that neither layer imports the other for it.
BATCH_BLOB_MAX = 256 << 10

FLAGS = frozenset({"PENDING", "PROCESSING", "PROCESSED", "FAILED"})


class StorageError(BlobsyncError):
    """Base of the errors storage raises on purpose; each maps to one HTTP status."""

    status_hint = 500


class BlobExists(StorageError):
    status_hint = 409


class BlobNotFound(StorageError):
    status_hint = 404


class BlobReplaced(StorageError):
    """A blob was replaced under a read each time it was asked for: try again."""

    status_hint = 409


class QuotaExceeded(StorageError):
    status_hint = 507


class PreconditionFailed(StorageError):
    """An ``expect`` flag condition did not hold."""

    status_hint = 412


class UserExists(StorageError):
    status_hint = 409


class UserNotFound(StorageError):
    status_hint = 404


class CursorGone(StorageError):
    """A change-feed position this index can no longer serve (SPEC 8): before what
    retention dropped, or past anything it ever handed out. The client lists in full."""

    status_hint = 410
    extra = {"resync": True}  # in the JSON error body (SPEC 8)


class Order(Enum):
    NONE = "none"  # any order; the cheapest
    OLDEST_FIRST = "date"  # stored order, SPEC 4's `date` and `+date`
    NEWEST_FIRST = "-date"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    user: str
    namespace: str
    blob_id: str
    size: int  # sealed size in bytes
    tag: bytes  # the last 16 bytes of the sealed blob, for the Tag header and frames
    flags: frozenset[str]
    seq: int  # stored order: strictly increasing per server, across all processes
    location: str  # where the payload store keeps the bytes; opaque outside it
    # SPEC 11: the sealed meta, opaque here; out of repr, so that no log shows it.
    meta: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class NewBlob:
    """A blob whose payload is durable, to be indexed (``MetadataIndex.insert_blob``)."""

    blob_id: str
    size: int  # sealed size in bytes
    tag: bytes
    location: str  # where the payload store committed it
    flags: frozenset[str] = frozenset()
    # SPEC 11, checked by the route (format.meta.check_meta_text); out of repr, as above.
    meta: str | None = field(default=None, repr=False)


# The operations a change records (SPEC 8).
CHANGE_OPS = ("put", "delete", "flags")


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a user's change feed, appended in the transaction of its write."""

    seq: int  # feed position: per user, changes commit in seq order (cursors never skip)
    namespace: str
    blob_id: str
    op: str  # one of CHANGE_OPS
    size: int | None = None  # sealed size; put only
    tag: bytes | None = None  # put only
    flags: frozenset[str] | None = None  # put and flags
    meta: str | None = field(default=None, repr=False)  # put only, when it has one (SPEC 11)


@dataclass(frozen=True, slots=True)
class ChangePage:
    """What ``MetadataIndex.read_changes`` found."""

    changes: list[Change]
    # The position after this page: past every change read, never past a change that
    # commits later. A full page stops at its last change; a page that is not full
    # stops at the user's newest change (other namespaces included).
    position: int
    done: bool  # False: more changes are waiting after ``position``


@dataclass(frozen=True, slots=True)
class Principal:
    """A user or a service with its hashed token."""

    name: str
    token_hash: str


class MetadataIndex(abc.ABC):
    """Users, services, blobs, tombstones and usage. All methods are atomic."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and create or migrate the schema."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # users and services -----------------------------------------------------------------
    @abc.abstractmethod
    async def add_user(self, uuid: str, token_hash: str) -> None:
        """Raises UserExists."""

    @abc.abstractmethod
    async def set_user_token(self, uuid: str, token_hash: str) -> None:
        """Raises UserNotFound."""

    @abc.abstractmethod
    async def remove_user(self, uuid: str) -> None:
        """Removes the user and all its rows. Raises UserNotFound."""

    @abc.abstractmethod
    async def get_user(self, uuid: str) -> Principal | None: ...

    @abc.abstractmethod
    async def list_users(self) -> list[Principal]: ...

    @abc.abstractmethod
    async def add_service(self, name: str, token_hash: str) -> None:
        """Adds a service or replaces its token."""

    @abc.abstractmethod
    async def get_service(self, name: str) -> Principal | None: ...

    @abc.abstractmethod
    async def list_services(self) -> list[Principal]: ...

    @abc.abstractmethod
    async def remove_service(self, name: str) -> None:
        """Raises UserNotFound."""

    # blobs ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def insert_blob(
        self,
        user: str,
        namespace: str,
        blob: NewBlob,
        quota: int = 0,
    ) -> BlobInfo:
        """Index a blob whose payload is durable, in one transaction.

        Raises BlobExists if (user, namespace, blob_id) is indexed, QuotaExceeded if
        ``quota`` > 0 and usage + size would pass it. On success: adds ``size`` to the
        user's usage, removes any tombstone of the id, and gives it the next ``seq``.
        """

    async def insert_blobs(
        self,
        user: str,
        namespace: str,
        blobs: list[NewBlob],
        quota: int = 0,
    ) -> list[BlobInfo | BlobExists | QuotaExceeded]:
        """Index a run of blobs with ``insert_blob``'s rules; backends do it in one transaction.

        ``blobs`` have durable payloads. Returns one outcome per blob, in order: its
        BlobInfo, or BlobExists for an id already indexed
        (or earlier in the run), even when its size would also pass the quota: every
        backend checks the id before the quota (409 before 507, SPEC 9). The first row that
        would pass the quota gets QuotaExceeded and ends the run: the list is then shorter
        than ``blobs`` and the rest is not indexed. This default goes row by row (one
        transaction each), with the same outcomes.
        """
        out: list[BlobInfo | BlobExists | QuotaExceeded] = []
        for blob in blobs:
            try:
                out.append(await self.insert_blob(user, namespace, blob, quota=quota))
            except BlobExists as exc:
                out.append(exc)
            except QuotaExceeded as exc:
                out.append(exc)
                break
        return out

    @abc.abstractmethod
    async def get_blob(self, user: str, namespace: str, blob_id: str) -> BlobInfo | None: ...

    @abc.abstractmethod
    async def delete_blob(self, user: str, namespace: str, blob_id: str) -> BlobInfo:
        """Remove the row, leave a tombstone, subtract the usage. Raises BlobNotFound."""

    @abc.abstractmethod
    async def set_flags(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        flags: frozenset[str],
        expect: str | None = None,
    ) -> None:
        """Replace the flags; with ``expect``, only if the blob carries that flag now.

        Raises BlobNotFound, or PreconditionFailed when ``expect`` does not hold.
        """

    @abc.abstractmethod
    async def list_blobs(
        self,
        user: str,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order: Order = Order.NONE,
        limit: int | None = None,
    ) -> list[str]: ...

    async def list_blobs_meta(
        self,
        user: str,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order: Order = Order.NONE,
        limit: int | None = None,
    ) -> list[tuple[str, int, str | None]]:
        """``list_blobs`` with each blob's sealed size and meta (SPEC 11's
        ``with_meta=true``): (blob_id, size, meta or None). A query of its own, so that the
        plain listing reads no more than it did. This default joins the two reads (the
        memory index uses it); SQLite and PostgreSQL read it in one query."""
        ids = await self.list_blobs(
            user, namespace, filter_flag=filter_flag, order=order, limit=limit
        )
        infos = {i.blob_id: i for i in await self.get_blobs(user, namespace, ids)}
        return [(b, infos[b].size, infos[b].meta) for b in ids if b in infos]

    @abc.abstractmethod
    async def count_blobs(
        self, user: str, namespace: str, *, filter_flag: str | None = None
    ) -> int: ...

    @abc.abstractmethod
    async def list_deleted(self, user: str, namespace: str) -> list[str]:
        """Ids with a tombstone, oldest deletion first."""

    @abc.abstractmethod
    async def add_tombstone(self, user: str, namespace: str, blob_id: str) -> bool:
        """Record a deletion that has no row to delete (history imported from elsewhere).

        It becomes the newest deletion. Does nothing and returns False if the id is indexed
        (a live blob wins, as a re-creation removes its tombstone) or already has a
        tombstone (which keeps its place, so that imports can be re-run).
        """

    @abc.abstractmethod
    async def get_blobs(self, user: str, namespace: str, blob_ids: list[str]) -> list[BlobInfo]:
        """The rows of those ids that exist, in the order asked (for stream downloads)."""

    @abc.abstractmethod
    async def usage(self, user: str) -> int:
        """Sealed bytes the user stores, exact."""

    @abc.abstractmethod
    async def all_locations(self) -> set[str]:
        """Every location a row names, for garbage collection."""

    # the change feed (SPEC 8) -----------------------------------------------------------
    # insert_blob(s), delete_blob and set_flags each append one change per blob written,
    # in their own transaction; a failed or refused write appends none. Each user's
    # changes commit in seq order, in every process (serialise the user's writers, and
    # take the seq under that serialisation). remove_user drops the user's changes.

    # A random id of this database, made with the schema and kept in it, set by ``open``.
    # Cursors carry it, so that a cursor made by another database is told apart (410).
    feed_id: str = ""

    @abc.abstractmethod
    async def read_changes(
        self, user: str, since: int | None, limit: int, namespace: str | None = None
    ) -> ChangePage:
        """The user's changes after position ``since``, oldest first, at most ``limit``;
        with ``namespace``, only that namespace's (the position still moves over all).

        Read in one snapshot. Raises CursorGone when ``since`` lies before the user's
        horizon (changes that retention dropped) or after the newest seq the index ever
        gave out. ``since=None`` starts at the beginning of what is kept and never raises.
        """

    @abc.abstractmethod
    async def feed_position(self, user: str) -> int:
        """A position that every change committed later lies after: the user's newest
        change, or its horizon, or 0. Taken before a listing, it bootstraps a client."""

    @abc.abstractmethod
    async def compact_changes(
        self, retention_seconds: float | None, now: float | None = None
    ) -> int:
        """Keep the feed small; return how many changes were dropped.

        Drops changes that a later change of the same blob supersedes (a later put or
        delete supersedes everything before it; a later flags change supersedes earlier
        flags changes only), which loses nothing a reader needs, so no cursor goes bad.
        With ``retention_seconds``, also drops changes committed more than that long
        before ``now`` (default: the clock), and moves the user's horizon up to the
        newest one dropped: older cursors get CursorGone.
        """

    @abc.abstractmethod
    async def changed_since(self, seq: int) -> tuple[int, set[str]]:
        """The newest seq given out, and the users with changes after ``seq``. A process
        polls this to learn of other processes' commits (see ``follow_commits``)."""

    async def follow_commits(
        self, wake: Callable[[set[str] | None], None], active: Callable[[], bool]
    ) -> None:
        """Run until cancelled, calling ``wake(users)`` when another process commits
        changes for ``users`` (None: anyone may have changed, e.g. after a reconnect).
        ``active()`` is False while nobody in this process waits: a poller may rest then.

        Only a hint: waiters re-read the feed. This default returns at once, for indexes
        that one process alone uses (memory). SQLite polls ``changed_since``; PostgreSQL
        LISTENs on a connection of its own.
        """
        return


class PayloadWriter(abc.ABC):
    """One payload being written. Nothing is visible at any location until ``commit``."""

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    async def commit(self) -> str:
        """Make the payload durable at a location no other writer can get; return it."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard what was written. Safe to call after a failed write or commit."""


class PayloadStore(abc.ABC):
    """Sealed bytes by location, streamed in and out in chunks."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare, and clean up what a crashed process left half-written."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    @abc.abstractmethod
    async def writer(self, user: str, namespace: str, blob_id: str) -> PayloadWriter: ...

    @abc.abstractmethod
    def read(
        self, location: str, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Yield the bytes at ``location`` from ``offset``, ``length`` of them or to the end,
        in pieces of at most READ_PIECE_MAX bytes.

        Raises BlobNotFound if nothing is there. A generator: whoever stops reading early
        calls ``aclose`` on it.
        """

    # Optional features: each has a default that works for any store; the stores that can
    # do better override it.

    # True when ``read_many`` reads a run of payloads in one go (one thread hop); a stream
    # download then batches small blobs. False: it sends them one by one through ``read``.
    batched_reads: bool = False

    async def store_many(
        self, user: str, namespace: str, items: list[tuple[str, bytes]]
    ) -> list[str]:
        """Commit many small payloads, each to a location of its own; return the locations.

        The guarantees of a writer's commit, per payload: when this returns every payload
        is durable; if it raises, none of the locations it made is left behind. This
        default uses one writer per payload; stores that can share the fsyncs override it.
        """
        locations: list[str] = []
        try:
            for blob_id, data in items:
                writer = await self.writer(user, namespace, blob_id)
                try:
                    await writer.write(data)
                    locations.append(await writer.commit())
                except BaseException:
                    await writer.abort()
                    raise
        except BaseException:
            for location in locations:
                await self.delete(location)
            raise
        return locations

    async def read_many(self, locations: list[str]) -> list[bytes]:
        """The whole payloads at ``locations`` (small ones: the caller bounds their total).

        BlobNotFound if any is missing. This default reads them one by one through ``read``.
        """
        out: list[bytes] = []
        for location in locations:
            out.append(b"".join([chunk async for chunk in self.read(location)]))
        return out

    def file_path(self, location: str) -> str | None:
        """The file holding a committed payload, for a GET to send with sendfile(2); None
        when the store keeps it in no file of its own (the default)."""
        return None

    @abc.abstractmethod
    async def delete(self, location: str) -> None:
        """Remove the payload; no error if it is already gone."""

    async def delete_many(self, locations: list[str]) -> None:
        """Remove several payloads (gc); backends that can do it in one go override this."""
        for location in locations:
            await self.delete(location)

    async def reclaim(self) -> int:
        """Give back to the filesystem the space deletions freed; return how many bytes.

        Called by the sweep, never per delete, so that deletes stay cheap. Nothing to do
        for stores whose deletes free their space themselves (files, S3).
        """
        return 0

    @abc.abstractmethod
    def locations(self) -> AsyncIterator[tuple[str, float]]:
        """Every committed location with its modification time (Unix seconds), for gc.

        The time is never earlier than the start of the write that made the payload: the
        sweep spares payloads younger than a grace period, and the writes under way in its
        own process by their start time.
        """
