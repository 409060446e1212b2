"""The local store keeps a batch of downloads in a handful of SQLite statements, not one or
more per blob: SQLite lets go of the GIL at every step, and a step per blob made the
store's thread wait for the GIL thousands of times while the event loop verified the next
frames (docs/performance.md, issue 13)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blobsync.client.localstore import Attach, LocalStore
from blobsync.client.model import SyncStatus
from blobsync.client.secrets import names_key, store_key
from tests.helpers.client import Account

COUNT = 1200  # more than one group of any per-statement limit


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    secret = os.urandom(128)
    s = LocalStore(
        tmp_path / "local.db", tmp_path / "blobs", tmp_path / "tmp",
        db_key=store_key(secret), names_key=names_key(secret), inline_max=64 << 10,
    )
    await s.open()
    yield s
    await s.close()


async def traced(store: LocalStore) -> list[str]:
    """Every statement the store's connection runs from now on (each run of a prepared
    statement counts: an ``executemany`` of N rows is N of them)."""
    seen: list[str] = []
    await store._run(store._conn.set_trace_callback, seen.append)
    return seen


async def test_a_batch_of_downloads_is_kept_in_a_few_statements(store: LocalStore) -> None:
    ids = [f"blob-{i:05d}" for i in range(COUNT)]
    seen = await traced(store)
    assert await store.add_pending_downloads("ns", ids) == COUNT
    assert await store.add_pending_downloads("ns", ids[:10]) == 0  # known ids are left
    assert len(seen) <= 10, seen[:20]

    payloads = {b: os.urandom(100) + i.to_bytes(4, "big") + b"t" * 16
                for i, b in enumerate(ids)}
    items = [Attach(b, 50, len(p), False, payload=p) for b, p in payloads.items()]
    # one blob kept as a file, one asked twice in the batch, one not waiting
    items[5] = Attach(ids[5], 50, 300, True, location="ab" * 20, tag=b"f" * 16)
    items.append(Attach(ids[7], 50, 120, False, payload=payloads[ids[7]]))
    items.append(Attach("never-asked", 50, 120, False, payload=b"x" * 120))
    seen.clear()
    kept = await store.attach_many("ns", items)
    assert len(seen) <= 20, seen[:20]

    assert kept == [True] * COUNT + [False, False]
    rows = {r.blob_id: r for r in await store.rows("ns")}
    assert {r.status for r in rows.values()} == {SyncStatus.SYNCED}
    five = rows[ids[5]]
    assert (five.location, five.inline, five.external, five.sealed_size) == (
        "ab" * 20, False, True, 300)
    for b in (ids[0], ids[7], ids[-1]):
        assert rows[b].inline and rows[b].size == 50 and rows[b].sealed_size == 120
        assert b"".join([c async for c in store.read_sealed(rows[b])]) == payloads[b]
    tags = await store._run(lambda: dict(store._conn.execute(
        "SELECT blob_id, tag FROM blobs").fetchall()))
    assert tags[ids[0]] == payloads[ids[0]][-16:] and tags[ids[5]] == b"f" * 16
    assert not await store.due("ns", SyncStatus.PENDING_DOWNLOAD, time.time())


async def test_a_stream_of_small_blobs_is_kept_in_one_go(
    account: Account, tmp_path: Path
) -> None:
    """A stream request (up to 1,000 blobs and 16 MiB) is kept in one ``attach_many``,
    not cut at 8 MiB: each cut costs a commit and its fsyncs more."""
    a = await account.device("a")
    try:
        files = []
        for i in range(COUNT):
            files.append(tmp_path / f"f{i}")
            files[-1].write_bytes(os.urandom(10_000))
        await a.put_many(files)
        await a.sync()
    finally:
        await a.close()
    b = await account.device("b", concurrency=1)
    try:
        kept: list[int] = []
        attach_many = b.store.attach_many

        async def counted(namespace: str, items: list[Attach]) -> list[bool]:
            kept.append(len(items))
            return await attach_many(namespace, items)

        b.store.attach_many = counted  # type: ignore[method-assign]
        assert (await b.sync()).downloaded == COUNT
    finally:
        await b.close()
    # Nothing known at first: a first stream of a guessed few, then the rest in one
    # stream (over 900 blobs of 10 KB, 9.5 MB sealed), kept whole.
    assert len(kept) == 2 and sum(kept) == COUNT and kept[1] > 900, kept
