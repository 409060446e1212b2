"""A call that races a transfer of the same blob: a get() while a stream brings the
blob, a delete while it goes up, a blob deleted elsewhere between the listing and the
stream. A relay (tests/helpers/relay.py) holds a transfer at the point of the race."""

from __future__ import annotations

import asyncio
import os

from blobsync.client import SyncReport, SyncStatus
from tests.helpers.client import Account, device
from tests.helpers.relay import Hold, relay_to


async def test_get_during_a_stream_download_of_the_same_blob(account: Account) -> None:
    a = await account.device("a")
    data = os.urandom(200_000)  # over inline_max (a file), under stream_threshold
    await a.put("mid", data)
    await a.close()
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url)
        try:
            hold = Hold(b"GET /blobs/alice/mid", after=0)
            relay.hold_down.append(hold)
            getting = asyncio.create_task(b.get("mid"))
            await hold.reached.wait()  # get() is downloading
            report = await b.sync()  # the stream brings the same blob meanwhile
            assert report.downloaded == 1
            hold.release.set()
            assert await getting == data
            assert await b.get("mid") == data
            assert await b.check() == []
        finally:
            await b.close()


async def test_delete_during_upload_does_not_resurrect(account: Account) -> None:
    async with relay_to(account.server.url) as relay:
        a = await device(account, "a", relay.url)
        try:
            hold = Hold(b"PUT /blobs/alice/big", after=1 << 20)
            relay.hold_up.append(hold)
            putting = asyncio.create_task(a.put("big", os.urandom(3 << 20)))
            await hold.reached.wait()
            await a.delete("big")
            hold.release.set()
            await putting
            await a.sync()
            assert await a.local_list() == []
            assert await a.remote_list() == []
        finally:
            await a.close()


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
