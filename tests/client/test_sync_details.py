"""Sync details: persisted retry state, blobs vanishing mid-sync, fetch_missing."""

from __future__ import annotations

import os
import time
from pathlib import Path

from blobsync.client import BlobManager, SyncReport, SyncStatus
from tests.helpers.client import fast_settings
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.relay import relay_to


async def test_retry_state_is_persisted_and_max_sync_wait_gives_up(
    account, tmp_path: Path
) -> None:
    a = await account.device("a")
    for i in range(3):
        await a.put(f"r{i}", os.urandom(2000))
    await a.close()
    async with relay_to(account.server.url) as relay:
        home = tmp_path / "b"
        b = await BlobManager.init(
            home, server=relay.url, user="alice", token=account.token, passphrase=PASSPHRASE,
            recover=True, settings=fast_settings(retry_scale=10.0, max_sync_wait=0.0),
        )
        relay.cut_match = b"direction=download"
        relay.cuts = [10]  # the stream breaks in its first frame header
        report = await b.sync()
        assert sorted(report.pending) == ["r0", "r1", "r2"]
        assert report.downloaded == 0
        await b.close()
    # a new process sees the count and the next attempt time: 10 s * scale 10 ahead
    b = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        rows = await b.store.rows("default")
        assert {r.status for r in rows} == {SyncStatus.PENDING_DOWNLOAD}
        assert all(r.retries == 1 for r in rows)
        assert all(r.next_attempt > time.time() + 90 for r in rows)
    finally:
        await b.close()


async def test_blob_deleted_between_listing_and_stream_is_dropped(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    for i in range(4):
        await a.put(f"v{i}", f"value {i}".encode())
    report = SyncReport()
    await b.engine.reconcile("default", report)
    assert len(await b.local_list(status=SyncStatus.PENDING_DOWNLOAD)) == 4
    await a.delete("v2")  # gone before b asks for it: the stream answers 404 missing
    await b.engine.run("default", ["download"], report=report)
    assert report.downloaded == 3 and report.failed == []
    assert sorted(await b.local_list()) == ["v0", "v1", "v3"]
    assert await b.status("v2") is None


async def test_fetch_missing_and_send_missing(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    await a.put("from-a", b"A")
    await b.put("from-b", b"B", upload=False)
    assert await b.fetch_missing() == 1
    assert await b.status("from-b") is SyncStatus.PENDING_UPLOAD  # fetch does not send
    assert await b.get("from-a") == b"A"
    assert await b.send_missing() == 1
    assert await a.fetch_missing() == 1
    assert await a.get("from-b") == b"B"


async def test_server_holds_only_sealed_bytes(devices, account) -> None:
    a = await devices("a")
    marker = b"SERVER-MUST-NOT-SEE-" * 100
    await a.put("s", marker)
    await a.put("l", marker * 1000)
    srv_root = Path(account.server.config.data)  # payloads inline in SQLite and as files
    assert (srv_root / "payloads.sqlite3").is_file()
    for p in srv_root.rglob("*"):
        if p.is_file():
            assert b"SERVER-MUST-NOT-SEE" not in p.read_bytes()
