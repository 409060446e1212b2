"""Child process of test_pg_inline: commits payloads to both tiers of PostgreSQL + S3, then
waits to be killed before any index row names them (a crash between payload and index).

Usage: python pg_inline_crash_writer.py DSN S3_URL (the AWS_* variables name the endpoint).
Prints ``KEPT`` once a blob is stored whole (payload and row), then ``COMMITTED`` once a
small payload (inline row) and a large one (S3 object) are durable with no row.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

from blobsync.format import seal
from blobsync.server.storage.factory import make_store
from blobsync.server.storage.pgpayloads import INLINE_MAX


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def main(dsn: str, payload: str) -> None:
    store = make_store("/nonexistent", dsn, payload)
    await store.open()
    secret = os.urandom(128)
    kept = seal(secret, "kept", os.urandom(5000))
    await store.put("alice", "default", "kept", once(kept), size=len(kept))
    print("KEPT", flush=True)
    # What a stream batch and a large upload do first; the index rows would come next.
    await store.payloads.store_many("alice", "default", [("small", os.urandom(5000))])
    writer = await store.payloads.writer("alice", "default", "large")
    await writer.write(os.urandom(INLINE_MAX + 1))
    await writer.commit()
    print("COMMITTED", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
