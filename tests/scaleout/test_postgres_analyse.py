"""The index analyses its tables itself once they have grown (postgres.ANALYZE_AFTER_ROWS).

Autovacuum refreshes a table's statistics at most once a naptime (a minute by default); a
table filled faster than that is planned as empty, and the per-run lookup of a stream
download then scans a user's rows instead of probing the primary key (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from blobsync.server.storage.base import NewBlob
from blobsync.server.storage.postgres import ANALYZE_AFTER_ROWS, PostgresIndex

TAG = bytes(range(16))


def _blobs(start: int, count: int) -> list[NewBlob]:
    return [NewBlob(f"b{i:06d}", 10, TAG, f"loc{i}") for i in range(start, start + count)]


async def _last_analyze(dsn: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'blobs'"
        )
    finally:
        await conn.close()


async def test_a_grown_table_is_analysed_without_waiting_for_autovacuum(
    postgres_db: str,
) -> None:
    index = PostgresIndex(postgres_db)
    await index.open()
    try:
        below = ANALYZE_AFTER_ROWS - 1
        await index.insert_blobs("alice", "default", _blobs(0, below))
        await asyncio.sleep(0.5)
        assert await _last_analyze(postgres_db) is None, "analysed before it grew enough"
        await index.insert_blobs("alice", "default", _blobs(below, 2))
        deadline = time.monotonic() + 10
        while await _last_analyze(postgres_db) is None:
            assert time.monotonic() < deadline, "not analysed within 10 s"
            await asyncio.sleep(0.1)
    finally:
        await index.close()
