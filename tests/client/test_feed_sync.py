"""Feed-driven sync (SPEC 8): the cursor in the local store, a sync that reads the change
feed from it, and the full listing only when there is no way around it. Real servers on
loopback; the relay (tests/helpers/relay.py) in front of one counts the requests, or
stands for a server without the feed."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from blobsync.client import BlobManager, SyncStatus
from blobsync.client.localstore import SCHEMA_VERSION
from blobsync.server.auth import hash_token
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.memory import MemoryIndex, MemoryPayloads
from tests.helpers.client import Account, device
from tests.helpers.fixed_port import serving_on, start_on
from tests.helpers.net import free_port
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.relay import relay_to
from tests.helpers.servers import make_user

NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
             b"Content-Length: 24\r\nConnection: close\r\n\r\n{\"error\": \"not found\"}\r\n")


def feed_requests(relay) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in relay.lines() if line.startswith("GET /changes/")]


async def cursor_of(m: BlobManager, namespace: str = "default") -> str | None:
    return await m.store.cursor(m.feed.server, namespace)


# --- the local store -----------------------------------------------------------------------


async def test_a_schema_3_store_migrates_in_place_to_4(devices) -> None:
    a = await devices("a")
    blob = await a.put(None, b"kept through the migration", upload=False)

    def back_to_schema_3() -> list[str]:
        # The schema-3 layout: no cursors table, no tag column.
        conn = a.store._conn
        conn.execute("DROP TABLE cursors")
        conn.execute("ALTER TABLE blobs DROP COLUMN tag")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
        return [r[1] for r in conn.execute("PRAGMA table_info(blobs)")]

    assert "tag" not in await a.store._run(back_to_schema_3)
    home = a.profile.home
    await a.close()

    b = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        def layout() -> tuple[str, list[str], int]:
            conn = b.store._conn
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            cols = [r[1] for r in conn.execute("PRAGMA table_info(blobs)")]
            n = conn.execute("SELECT count(*) FROM cursors").fetchone()[0]
            return version[0], cols, n

        version, cols, n = await b.store._run(layout)
        assert (version, n) == (SCHEMA_VERSION, 0) == ("5", 0)
        assert "tag" in cols
        assert await b.get(blob) == b"kept through the migration"
        # The tag of a blob from before the column is read from its payload, then kept.
        row = await b.store.get("default", blob)
        assert row is not None
        assert (await b.store.tags([row]))[blob] == await b.store.tail(row, 16)
        await b.store.set_cursor("http://x/", "default", "abc.1")
        assert await b.store.cursor("http://x/", "default") == "abc.1"
    finally:
        await b.close()


# --- one request when nothing changed ------------------------------------------------------


async def test_a_sync_with_nothing_to_do_is_one_request(account: Account) -> None:
    async with relay_to(account.server.url) as relay:
        a = await device(account, "a", relay.url)
        try:
            for i in range(20):
                await a.put(f"blob-{i}", os.urandom(100), upload=False)
            await a.sync()  # the first: lists in full, uploads
            assert await cursor_of(a) is not None
            await a.sync()  # its own uploads come back in the feed: nothing to do
            relay.requests.clear()
            report = await a.sync()
            assert (report.downloaded, report.uploaded, report.deleted_local) == (0, 0, 0)
            lines = relay.lines()
            assert len(lines) == 1, lines
            assert lines[0].startswith("GET /changes/alice?") and "since=" in lines[0]
        finally:
            await a.close()


# --- what the feed says --------------------------------------------------------------------


async def test_puts_and_deletes_reach_another_device_through_the_feed(
    account: Account, devices
) -> None:
    a = await devices("a")
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url)
        try:
            await b.sync()  # first: a full listing, and a cursor
            x = await a.put(None, b"from a")
            y = await a.put(None, b"also from a")
            relay.requests.clear()
            report = await b.sync()
            assert report.downloaded == 2
            assert await b.get(x) == b"from a" and await b.get(y) == b"also from a"
            await a.delete(x)
            report = await b.sync()
            assert report.deleted_local == 1
            assert await b.status(x) is None
            assert await b.status(y) is SyncStatus.SYNCED
            # Through the feed only: no listing after the first sync.
            assert [ln for ln in relay.lines() if ln.startswith("GET /blobs/")] == []
        finally:
            await b.close()


async def test_a_recreated_id_reaches_a_device_that_held_the_old_copy(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    await a.put("note", b"the first text", namespace="default")
    await b.sync()
    assert await b.get("note") == b"the first text"
    # Deleted and created again under the same id, with other bytes: the listing shows
    # the same id as before, only the feed's tag tells.
    await a.delete("note")
    await a.put("note", b"the second text, longer")
    await b.sync()
    assert await b.status("note") is SyncStatus.SYNCED
    assert await b.get("note") == b"the second text, longer"
    # Its old copy is gone, not left beside the new one.
    assert (await b.check()) == []


async def test_a_recreated_large_id_replaces_the_old_file(devices) -> None:
    a = await devices("a")
    b = await devices("b", inline_max=1024)
    first, second = os.urandom(300_000), os.urandom(200_000)
    await a.put("big", first)
    await b.sync()
    old = await b.store.get("default", "big")
    assert old is not None and old.location is not None
    old_file = b.store.blob_path(old.location)
    assert old_file.exists()
    await a.delete("big")
    await a.put("big", second)
    await b.sync()
    assert await b.get("big") == second
    assert not old_file.exists()


async def test_a_remote_delete_leaves_a_local_upload_alone(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    await b.sync()
    shared = await a.put(None, b"shared")
    await b.sync()
    mine = await b.put(None, b"not uploaded yet", upload=False)
    await a.delete(shared)
    report = await b.sync()
    assert await b.status(shared) is None
    assert report.uploaded == 1 and await b.status(mine) is SyncStatus.SYNCED


# --- full listings -------------------------------------------------------------------------


async def test_sync_full_lists_and_keeps_the_listing_cursor(account: Account, devices) -> None:
    a = await devices("a")
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url)
        try:
            await b.sync()
            x = await a.put(None, b"x")
            relay.requests.clear()
            report = await b.sync(full=True)
            assert report.downloaded == 1 and await b.get(x) == b"x"
            assert feed_requests(relay) == []
            assert len([ln for ln in relay.lines() if ln.startswith("GET /blobs/")]) == 2
            before = await cursor_of(b)
            relay.requests.clear()
            await b.sync()
            assert [ln.split(" ")[1].split("?")[0] for ln in relay.lines()] == [
                "/changes/alice"]
            assert before is not None
        finally:
            await b.close()


async def test_a_v1_client_that_only_lists_still_syncs(devices) -> None:
    """A device that never uses the feed (full listings every time, as a v1 client)."""
    a = await devices("a")
    b = await devices("b")
    x = await a.put(None, b"to b")
    await b.sync(full=True)
    assert await b.get(x) == b"to b"
    y = await b.put(None, b"to a")
    await a.delete(x)
    await b.sync(full=True)
    assert await b.status(x) is None
    await a.sync(full=True)
    assert await a.get(y) == b"to a"


async def test_a_server_without_the_feed_is_synced_by_listing(
    account: Account, devices, caplog: pytest.LogCaptureFixture
) -> None:
    a = await devices("a")

    def no_feed(head: bytes) -> bytes | None:
        return NOT_FOUND if head.startswith(b"GET /changes/") else None

    async with relay_to(account.server.url, answer=no_feed) as relay:
        b = await device(account, "b", relay.url)
        try:
            await b.sync()
            # The server has a listing cursor here: the next sync asks the feed once,
            # hears 404, and lists; after that it never asks again in this session.
            await b.store.set_cursor(b.feed.server, "default", "0000.0")
            x = await a.put(None, b"one")
            with caplog.at_level(logging.INFO, logger="blobsync.client"):
                assert (await b.sync()).downloaded == 1
                y = await a.put(None, b"two")
                assert (await b.sync()).downloaded == 1
                await a.delete(x)
                assert (await b.sync()).deleted_local == 1
            assert await b.get(y) == b"two" and await b.status(x) is None
            assert len(feed_requests(relay)) == 1
            said = [r for r in caplog.records if "no change feed" in r.getMessage()]
            assert len(said) == 1 and said[0].levelno == logging.INFO
        finally:
            await b.close()


async def test_a_refused_cursor_is_a_full_resync(account: Account, devices) -> None:
    a = await devices("a")
    b = await devices("b")
    await a.put("early", b"early")
    await b.sync()
    stale = await cursor_of(b)
    assert stale is not None
    late = [await a.put(None, f"late {i}".encode()) for i in range(3)]
    await a.delete("early")
    # Retention passes over every change: b's cursor now lies before the horizon.
    dropped = await account.server.store.index.compact_changes(1.0, now=time.time() + 3600)
    assert dropped > 0
    report = await b.sync()
    assert report.downloaded == 3 and report.deleted_local == 1
    assert [await b.get(x) for x in late] == [f"late {i}".encode() for i in range(3)]
    fresh = await cursor_of(b)
    assert fresh is not None and fresh != stale
    assert (await b.sync()).downloaded == 0


async def test_a_cursor_of_another_feed_is_a_full_resync(tmp_path: Path) -> None:
    """A memory server restarted on the same port is another feed (another feed id): 410,
    then a full listing, and the device goes on from the new server's cursor."""
    port = free_port()
    srv = await start_on(tmp_path / "srv", port, BlobStore(MemoryIndex(), MemoryPayloads()))
    try:
        token = await make_user(srv.store, "alice")
        b = await Account(srv, "alice", token, tmp_path).device("b")
        mine = await b.put(None, b"uploaded to the first server")
        await b.sync()
        old = await cursor_of(b)
        assert old is not None
    finally:
        await srv.stop()
    try:
        async with serving_on(tmp_path / "srv", port,
                              BlobStore(MemoryIndex(), MemoryPayloads())) as srv2:
            await srv2.store.index.add_user("alice", hash_token(token))
            report = await b.sync()
            # The new server lost everything: the listing says so, and the blob goes up.
            assert report.uploaded == 1
            assert await srv2.store.index.get_blob("alice", "default", mine) is not None
            new = await cursor_of(b)
            assert new not in (None, old)
            assert (await b.sync()).uploaded == 0
    finally:
        await b.close()
