"""Fill a server's data directory with many small blobs, fast, through the storage APIs.

For the no-op sync only the index matters, but every row gets a real payload (sealed under
the user's secret, so a device that syncs them verifies them) in the layout FilePayloads
reads. Files are written without fsync and rows go in with ``SQLiteIndex.insert_many``,
one transaction per 10,000: this is set-up, not a measurement, and it never runs beside
a server writing to the same directory.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from blobsync.format import seal
from blobsync.server.storage.files import shard_parts
from blobsync.server.storage.sqlite import SQLiteIndex

BATCH = 10_000


def _write_payloads(root: Path, rows: list[tuple[str, str, str, int, bytes, str,
                                                  frozenset[str]]],
                    user: str, namespace: str, secret: bytes, size: int, count: int) -> None:
    plain = os.urandom(size)
    made: set[Path] = set()
    for _ in range(count):
        blob_id = uuid.uuid4().hex
        sealed = seal(secret, blob_id, plain)
        parts = shard_parts(user, namespace, blob_id)
        shard = root.joinpath(*parts)
        if shard not in made:
            shard.mkdir(parents=True, exist_ok=True)
            made.add(shard)
        (shard / blob_id).write_bytes(sealed)
        location = "/".join((*parts, blob_id))
        rows.append((user, namespace, blob_id, len(sealed), sealed[-16:], location, frozenset()))


async def populate(data: Path, user: str, namespace: str, secret: bytes, count: int,
                   size: int = 100) -> None:
    """Store ``count`` blobs of ``size`` plaintext bytes for ``user`` in ``data``."""
    index = SQLiteIndex(data / "index.sqlite3")
    await index.open()
    try:
        done = 0
        while done < count:
            n = min(BATCH, count - done)
            rows: list[tuple[str, str, str, int, bytes, str, frozenset[str]]] = []
            await asyncio.to_thread(_write_payloads, data / "blobs", rows, user, namespace,
                                    secret, size, n)
            await index.insert_many(rows)
            done += n
    finally:
        await index.close()
