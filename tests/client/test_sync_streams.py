"""Download streams sized by what was learned and read to their end; deletes that race
an upload in a stream."""

from __future__ import annotations

import asyncio
import json
import os

from blobsync.client import SyncStatus
from tests.helpers.client import Account, device
from tests.helpers.relay import Hold, relay_to

FRAME_HEADER = 33


async def test_download_streams_are_sized_by_the_average_and_read_whole(
    account: Account,
) -> None:
    a = await account.device("a")
    try:
        for i in range(40):
            await a.put(f"b{i:02d}", os.urandom(20_000), upload=False)  # 20,753 sealed
        await a.sync()
    finally:
        await a.close()
    async with relay_to(account.server.url, capture=True) as relay:
        b = await device(account, "b", relay.url, stream_max_bytes=100_000, concurrency=1)
        try:
            relay.down_bytes = 0
            report = await b.sync()
            assert report.downloaded == 40 and report.failed == []
        finally:
            await b.close()
    asked = [json.loads(r.body) for r in relay.parsed() if "direction=download" in r.line]
    # Nothing known at first: a guess of half the bytes (2 blobs); then 100,000 bytes
    # hold 4 blobs of 20,753, and every stream is read to its end: no id asked twice.
    assert [len(ids) for ids in asked] == [2] + [4] * 9 + [2]
    assert sorted(i for ids in asked for i in ids) == [f"b{i:02d}" for i in range(40)]
    payload = 40 * (20_753 + FRAME_HEADER)
    assert payload < relay.down_bytes < payload + 40_000  # plus HTTP heads and listings


async def test_delete_during_a_stream_upload_does_not_resurrect(account: Account) -> None:
    async with relay_to(account.server.url) as relay:
        a = await device(account, "a", relay.url)
        try:
            for i in range(5):
                await a.put(f"s{i}", os.urandom(30_000), upload=False)
            hold = Hold(b"direction=upload", after=60_000)
            relay.hold_up.append(hold)
            syncing = asyncio.create_task(a.sync())
            await hold.reached.wait()  # s0, s1 sent, s2 on its way
            await a.delete("s1")
            await a.delete("s3")
            assert await a.status("s1") is SyncStatus.PENDING_DELETE
            hold.release.set()
            await syncing
            await a.sync()
            assert sorted(await a.local_list()) == ["s0", "s2", "s4"]
            assert sorted(await a.remote_list()) == ["s0", "s2", "s4"]
            assert await a.status("s1") is None and await a.status("s3") is None
        finally:
            await a.close()
    b = await account.device("b")
    try:
        report = await b.sync()
        assert report.downloaded == 3
    finally:
        await b.close()
