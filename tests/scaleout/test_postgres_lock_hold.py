"""One user's concurrent stream batches on PostgreSQL must not queue behind client round trips.

Every batch of a user takes that user's usage row and feed lock. If a batch holds them
across round trips between the server process and PostgreSQL, every other batch of the
user waits those round trips too, and the user's batches go one at a time at the pace of
the network and of the server's event loop (the 32-client load on PostgreSQL + S3 had a
p99 of 854 ms this way, with the server mostly idle). Here a real TCP proxy between the
index and a real PostgreSQL delays every packet, so a round trip costs ``2 * DELAY``: eight
batches that each hold the locks across round trips take at least eight times that; batches
that take them only inside one statement overlap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from blobsync.server.storage.base import BlobExists, BlobInfo, NewBlob
from blobsync.server.storage.postgres import PostgresIndex

TAG = bytes(range(16))
DELAY = 0.04  # seconds, each way
BATCHES = 8


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Forward ``reader`` to ``writer``, every chunk ``DELAY`` late, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + DELAY, data))
    except ConnectionError:
        pass
    finally:
        queue.put_nowait((0.0, b""))
        await asyncio.gather(sender, return_exceptions=True)


@pytest.fixture
async def slow_dsn(postgres_db: str) -> AsyncIterator[str]:
    """``postgres_db`` reached through a proxy that delays each packet ``DELAY`` each way."""
    parts = urlsplit(postgres_db)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    tasks: set[asyncio.Task[object]] = set()

    async def serve(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(host, port)
        both = asyncio.gather(_pipe(cr, sw), _pipe(sr, cw), return_exceptions=True)
        tasks.add(both)  # type: ignore[arg-type]
        await both

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    netloc = parts.netloc.rsplit("@", 1)
    where = f"127.0.0.1:{proxy_port}"
    netloc_new = f"{netloc[0]}@{where}" if len(netloc) == 2 else where
    try:
        yield urlunsplit(parts._replace(netloc=netloc_new))
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_users_batches_overlap_without_a_quota(slow_dsn: str) -> None:
    index = PostgresIndex(slow_dsn, min_size=BATCHES, max_size=BATCHES)
    await index.open()
    try:

        async def batch(round_: int, n: int) -> list[BlobInfo | BlobExists | object]:
            ids = [f"r{round_}-b{n}-{j}" for j in range(5)]
            rows = [NewBlob(i, 10, TAG, f"loc/{i}") for i in ids]
            return list(await index.insert_blobs("u", "ns", rows))

        # Warm every pooled connection (statement preparation costs round trips too).
        await asyncio.gather(*(batch(0, n) for n in range(BATCHES)))
        start = time.monotonic()
        outs = await asyncio.gather(*(batch(1, n) for n in range(BATCHES)))
        elapsed = time.monotonic() - start
        assert all(isinstance(o, BlobInfo) for out in outs for o in out)
        rtt = 2 * DELAY
        # One at a time, holding the locks across two round trips each: >= 16 RTT. Overlapped:
        # the statement's round trip plus the pool's reset on release, a few RTT in all.
        assert elapsed < 6 * rtt, f"{BATCHES} batches took {elapsed * 1000:.0f} ms"
        # Nothing lost on the way: the usage and the feed hold every blob, in seq order.
        assert await index.usage("u") == 2 * BATCHES * 5 * 10
        page = await index.read_changes("u", None, 1000)
        assert len(page.changes) == 2 * BATCHES * 5
        seqs = [c.seq for c in page.changes]
        assert seqs == sorted(seqs)
    finally:
        await index.close()
