"""Small payloads as rows of the PostgreSQL database that holds the index.

With PostgreSQL metadata and S3 payloads, a small blob used to cost at least one S3
request each way (a PUT and a HEAD up, a GET down): ~500 files/s up against ~5,600 on the
default store. Here a stream upload's batch is one INSERT in one transaction, and a stream
download's run one SELECT, as ``SQLitePayloads`` does for the default store;
``TieredPayloads`` sends the larger payloads to S3. docs/storage.md ("Small payloads on
PostgreSQL + S3") has the measurements behind the choice of rows over packed S3 objects.

- A location is ``pg:`` and 32 hex digits (the time, then random: ``new_locations``): no
  S3 key of ours has that shape (seven ``/``-separated parts), so the tiered store tells
  the two apart by the location alone. The primary key refuses a second writer of a name.
- The table is the index's schema step 3 (``postgres.MIGRATIONS``); ``open`` runs the
  migration too, under the same advisory lock, so either may open first.
- A pool of its own on the index's DSN: a payload transaction never waits behind an
  index transaction for a connection, and each side's failures stay its own (503).
- A commit is durable when it returns (PostgreSQL's ``synchronous_commit``, on by default,
  as the index relies on it): the payload is written before the row that names it.
- Deleted rows' space comes back by PostgreSQL's autovacuum; ``reclaim`` has nothing to do.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

import asyncpg

from blobsync.format.errors import LimitExceeded
from blobsync.format.limits import valid_id

from .base import BATCH_BLOB_MAX, READ_PIECE_MAX, BlobNotFound
from .inline import InlineStore, InlineWriter
from .postgres import UNAVAILABLE, DatabaseUnavailable, migrate, redact_dsn

log = logging.getLogger(__name__)

PREFIX = "pg:"
_HEX = frozenset("0123456789abcdef")
# The default limit, as the default store's: every blob a stream upload batches.
INLINE_MAX = BATCH_BLOB_MAX
# Rows per query when listing for gc: bounds memory whatever the table holds.
LIST_PAGE = 1000
_COPY_COLUMNS = ("location", "data", "mtime")


def new_location() -> str:
    return new_locations(1)[0]


def new_locations(count: int) -> list[str]:
    """``count`` fresh locations: 12 hex digits of the time (65 us steps), then 20 random
    ones (80 bits), as ``sqlitepayloads.new_locations``: rising keys append to the right
    edge of the primary key's b-tree instead of dirtying a random leaf page per row, and
    the system's random source is read once per run, not once per payload."""
    stamp = "%012x" % (time.time_ns() >> 16)
    digits = secrets.token_hex(10 * count)
    return [PREFIX + stamp + digits[i : i + 20] for i in range(0, 20 * count, 20)]


def is_pg_inline(location: str) -> bool:
    return (
        len(location) == len(PREFIX) + 32
        and location.startswith(PREFIX)
        and set(location[len(PREFIX) :]) <= _HEX
    )


class PostgresPayloads(InlineStore):
    batched_reads = True  # read_many reads a run in one query

    def __init__(
        self,
        dsn: str,
        max_size: int = INLINE_MAX,
        *,
        min_size: int = 1,
        pool_size: int = 10,
        acquire_timeout: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self.max_size = max_size
        self._min_size = min_size
        self._pool_size = pool_size
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None

    def owns(self, location: str) -> bool:
        return is_pg_inline(location)

    # housekeeping -----------------------------------------------------------------------
    async def open(self) -> None:
        where = redact_dsn(self._dsn)
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min_size, max_size=self._pool_size
            )
        except UNAVAILABLE as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {where}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise DatabaseUnavailable(f"PostgreSQL at {where} refused us: {exc}") from exc
        try:
            async with self._connection() as conn:
                await migrate(conn)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; connection failures become DatabaseUnavailable (503)."""
        if self._pool is None:
            raise DatabaseUnavailable("the payload database is not open")
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                yield conn
        except UNAVAILABLE as exc:
            log.warning("PostgreSQL (payloads) unavailable: %r", exc)
            raise DatabaseUnavailable(
                f"payload database unavailable ({type(exc).__name__})"
            ) from exc

    # writing ----------------------------------------------------------------------------
    async def _store_all(self, payloads: list[bytes]) -> list[str]:
        now = time.time()  # before the write: the sweep spares younger orphans
        locations = new_locations(len(payloads))
        # One COPY, one transaction: all of the run or none of it (a name collision fails
        # the whole run, as a full disk would). COPY, not INSERT ... unnest: asyncpg encoded
        # a bytea[] parameter at ~23 us of this process's CPU per 10 KB payload, the binary
        # COPY's records at ~9; PostgreSQL's own work is alike (docs/performance.md).
        async with self._connection() as conn:
            await conn.copy_records_to_table(
                "payloads",
                records=[(location, data, now) for location, data in zip(locations, payloads,
                                                                        strict=True)],
                columns=_COPY_COLUMNS,
            )
        return locations

    async def writer(self, user: str, namespace: str, blob_id: str) -> InlineWriter:
        _check_names(user, namespace, blob_id)
        return InlineWriter(self)

    async def store_many(
        self, user: str, namespace: str, items: list[tuple[str, bytes]]
    ) -> list[str]:
        """Many small payloads in one transaction; the locations in order. All are durable
        when this returns; if it raises, none is left."""
        _check_names(user, namespace, *(blob_id for blob_id, _ in items))
        too_big = [blob_id for blob_id, data in items if len(data) > self.max_size]
        if too_big:
            raise LimitExceeded(f"payload of {too_big[0]} is larger than {self.max_size} bytes")
        if not items:
            return []
        return await self._store_all([data for _, data in items])

    # reading ----------------------------------------------------------------------------
    async def read_many(self, locations: list[str]) -> list[bytes]:
        """The whole payloads at ``locations``, in order, in one query. BlobNotFound if any
        is missing."""
        for location in locations:
            _check_readable(location)
        if not locations:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT location, data FROM payloads WHERE location = ANY($1::text[])",
                list(dict.fromkeys(locations)),
            )
        found = {row["location"]: row["data"] for row in rows}
        missing = [location for location in locations if location not in found]
        if missing:
            raise BlobNotFound(f"no payload at {missing[0]}")
        return [found[location] for location in locations]

    async def read(
        self, location: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        _check_readable(location)
        # Clamped as FilePayloads clamps: a negative offset or length counts as zero.
        start = max(offset, 0)
        want = None if length is None else max(length, 0)
        async with self._connection() as conn:
            # substring counts bytes from 1; past the end it gives an empty bytea. With
            # EXTERNAL storage only the TOAST chunks of the range are read.
            data = await conn.fetchval(
                "SELECT CASE WHEN $3::int IS NULL THEN substring(data FROM $2::int)"
                " ELSE substring(data FROM $2::int FOR $3::int) END"
                " FROM payloads WHERE location = $1",
                location,
                start + 1,
                want,
            )
        if data is None:
            raise BlobNotFound(f"no payload at {location}")
        for pos in range(0, len(data), READ_PIECE_MAX):
            yield data[pos : pos + READ_PIECE_MAX]

    # deleting and listing ---------------------------------------------------------------
    async def delete(self, location: str) -> None:
        await self.delete_many([location])

    async def delete_many(self, locations: list[str]) -> None:
        """Remove the payloads at ``locations`` in one statement; missing ones are no error."""
        for location in locations:
            if not self.owns(location):
                raise ValueError(f"not a PostgreSQL payload location: {location!r}")
        if not locations:
            return
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM payloads WHERE location = ANY($1::text[])", locations
            )

    async def locations(self) -> AsyncIterator[tuple[str, float]]:
        # Page by key: short queries, and never the whole listing in memory.
        after = ""
        while True:
            async with self._connection() as conn:
                page = await conn.fetch(
                    "SELECT location, mtime FROM payloads WHERE location > $1"
                    " ORDER BY location LIMIT $2",
                    after,
                    LIST_PAGE,
                )
            for row in page:
                yield row["location"], float(row["mtime"])
            if len(page) < LIST_PAGE:
                return
            after = page[-1]["location"]


def _check_readable(location: str) -> None:
    # A location of another store is simply not here, as the interface promises readers.
    if not is_pg_inline(location):
        raise BlobNotFound(f"no payload at {location}")


def _check_names(*values: str) -> None:
    # The names are not stored, but a store refuses what the other stores would refuse.
    for value in values:
        if not valid_id(value):
            raise ValueError(f"not a valid name: {value!r}")
