"""Child process of test_crash_safety: stores some blobs, then is killed mid-write.

Usage: python crash_writer.py DATA_DIR. Prints ``DONE <id> <sha256>`` for each complete blob,
then ``WRITING`` and keeps feeding a large blob slowly until it is killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator

from blobsync.format import CHUNK_SIZE, Sealer, seal
from blobsync.server.storage.factory import make_store


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def slow_large(secret: bytes, blob_id: str, size: int) -> AsyncIterator[bytes]:
    sealer = Sealer(secret, blob_id, size)
    yield sealer.start()
    block = os.urandom(CHUNK_SIZE)
    for n in range(size // CHUNK_SIZE):
        yield sealer.update(block)
        if n == 4:
            print("WRITING", flush=True)
        await asyncio.sleep(0.01)
    yield sealer.finish()


async def main(data_dir: str) -> None:
    store = make_store(data_dir, None, None)
    await store.open()
    secret = os.urandom(128)
    for i in range(3):
        blob_id = f"done{i}"
        data = seal(secret, blob_id, os.urandom(100_000 + i))
        await store.put("alice", "default", blob_id, once(data), size=len(data))
        print("DONE", blob_id, hashlib.sha256(data).hexdigest(), flush=True)
    size = 1 << 30  # far more than is written before the kill
    await store.put("alice", "default", "big", slow_large(secret, "big", size))
    print("FINISHED", flush=True)  # never reached when the test kills us in time


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
