"""The payload database gives space back (issue 10 item 8): incremental auto-vacuum, run
by the sweep, and a -wal that does not stay large. Older databases are converted once."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from blobsync.format import seal
from blobsync.server.storage.factory import make_store
from blobsync.server.storage.sqlitepayloads import SCHEMA, SQLitePayloads
from blobsync.server.storage.sqlitethread import JOURNAL_SIZE_LIMIT
from tests.helpers.storage import NS, chunked, read_all

BLOBS = 100_000
PLAINTEXT = 100  # a small message: its sealed blob is about 4.6 KB


async def test_half_of_100k_small_blobs_deleted_then_one_sweep_shrinks_the_file(
    tmp_path: Path,
) -> None:
    store = make_store(str(tmp_path), None, None)  # the default: SQLite index, tiered
    await store.open()
    try:
        await store.index.add_user("bob", "hash-of-bob's-token")
        secret = os.urandom(128)
        started = time.monotonic()
        # Stream uploads' path: batches of small blobs, one transaction each. Alice's and
        # bob's blobs alternate, so bob's pages are spread all over the file.
        batches = {user: store.batch(user, NS) for user in ("alice", "bob")}
        for i in range(BLOBS):
            user = ("alice", "bob")[i % 2]
            blob_id = f"b{i}"
            data = seal(secret, blob_id, os.urandom(PLAINTEXT))
            batch = batches[user]
            await batch.receive(blob_id, chunked(data), len(data))
            if batch.full:
                await batch.flush()
        for batch in batches.values():
            await batch.flush()
        db = tmp_path / "payloads.sqlite3"
        await store.payloads.reclaim()  # nothing to give back yet; the -wal checkpointed
        before = db.stat().st_size
        stored = time.monotonic()

        # Half of them deleted: bob's account goes, his payloads are orphans for the sweep.
        await store.index.remove_user("bob")
        report = await store.sweep(0)
        after = db.stat().st_size
        swept = time.monotonic()
        assert report.removed == BLOBS // 2
        assert report.reclaimed > 0
        assert after <= 0.6 * before, (before, after)
        conn = sqlite3.connect(db)
        totals, counted = conn.execute(
            "SELECT (SELECT rows || ' ' || bytes FROM totals), "
            "(SELECT count(*) || ' ' || sum(length(data)) FROM payloads)"
        ).fetchone()
        conn.close()
        assert totals == counted  # the running totals reclaim relies on are exact
        wal = Path(str(db) + "-wal")
        assert not wal.exists() or wal.stat().st_size <= JOURNAL_SIZE_LIMIT
        # Alice's half is all there, bytes and all.
        assert await store.index.count_blobs("alice", NS) == BLOBS // 2
        for i in range(0, BLOBS, 9999):
            if i % 2 == 0:
                assert len(await read_all(store, f"b{i}", user="alice")) > PLAINTEXT
        print(f"stored in {stored - started:.1f}s, swept in {swept - stored:.1f}s, "
              f"{before} -> {after} bytes")
    finally:
        await store.close()


async def test_an_older_payload_database_is_converted_once(tmp_path: Path) -> None:
    path = tmp_path / "payloads.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(SCHEMA)
    conn.execute("PRAGMA user_version = 1")
    conn.executemany("INSERT INTO payloads VALUES (?, ?, ?)",
                     [(f"db:{i:032x}", os.urandom(5000), time.time()) for i in range(200)])
    conn.execute("DELETE FROM payloads WHERE rowid % 2 = 0")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()

    payloads = SQLitePayloads(path)
    await payloads.open()
    try:
        assert [loc async for loc, _ in payloads.locations()] == [
            f"db:{i:032x}" for i in range(200) if i % 2 == 0
        ]
        assert [c async for c in payloads.read(f"db:{2:032x}")]
    finally:
        await payloads.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    # The running total of payload bytes starts from what the rows hold.
    assert conn.execute("SELECT rows, bytes FROM totals").fetchone() == (100, 100 * 5000)
    conn.close()
