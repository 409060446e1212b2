"""Uploads under an id the server already holds (SPEC 7): the same sealed blob counts as
synced without sending it again, another blob fails with IdTaken and is never SYNCED."""

from __future__ import annotations

import os

import pytest

from blobsync.client import SyncStatus
from blobsync.client.errors import IdTaken
from tests.helpers.client import Account, copy_sealed, device
from tests.helpers.relay import relay_to


async def test_upload_of_what_the_server_has_marks_synced(account: Account) -> None:
    # Updated for issue 10 item 3 (SPEC 7): a 409 counts as done only for the same sealed
    # blob. It used to hold other bytes on b (then b held other blobs than the server
    # under the same ids, silently); now b holds a's very sealed blobs, as after an upload
    # whose answer was lost. Other bytes: test_upload_conflicts_fail_with_id_taken.
    a = await account.device("a")
    await a.put("big", os.urandom(3 << 20))
    await a.put("s1", b"small on the server")
    await a.put("s2", b"another small on the server")
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url)
        try:
            for blob_id in ("big", "s1", "s2"):
                await copy_sealed(a, b, blob_id)
            first = len(relay.requests)
            report = await b.sync()
            assert report.failed == [] and report.pending == []
            for blob_id in ("big", "s1", "s2"):
                assert await b.status(blob_id) is SyncStatus.SYNCED
            sent = relay.lines()[first:]
            # the large one is not sent only to hear 409; the small ones ask once
            assert not [r for r in sent if r.startswith("PUT /blobs/alice/big")]
            assert len([r for r in sent if "direction=upload" in r]) == 1
            assert sorted(await b.remote_list()) == ["big", "s1", "s2"]
            # a plain PUT answered 409
            await a.put("p", b"first")
            await copy_sealed(a, b, "p")
            await b._upload_now(await b.store.get("default", "p"))
            assert await b.status("p") is SyncStatus.SYNCED
            assert len([r for r in relay.lines() if r.startswith("PUT /blobs/alice/p?")]) == 1
        finally:
            await b.close()
            await a.close()


async def test_upload_conflicts_fail_with_id_taken(account: Account) -> None:
    """Another blob under an id the server holds: never SYNCED (SPEC 7), whichever way
    it would have gone up: a large one seen in the listing, small ones in a stream, a
    plain PUT."""
    a = await account.device("a")
    await a.put("big", os.urandom(3 << 20))
    await a.put("s1", b"small on the server")
    await a.put("s2", b"another small on the server")
    b = await account.device("b")
    try:
        await b.put("big", os.urandom(3 << 20), upload=False)
        await b.put("s1", b"small here", upload=False)
        await b.put("s2", b"small here too", upload=False)
        await b.put("fresh", b"a new one", upload=False)
        report = await b.sync()
        assert sorted(report.failed) == ["big", "s1", "s2"]
        assert sorted(report.taken) == ["big", "s1", "s2"]
        assert report.uploaded == 1  # fresh
        for blob_id in ("big", "s1", "s2"):
            assert await b.status(blob_id) is SyncStatus.FAILED_UPLOAD
        await a.put("p", b"first")
        with pytest.raises(IdTaken, match="id p is taken by another blob on the server"):
            await b.put("p", b"second")
        assert await b.status("p") is SyncStatus.FAILED_UPLOAD
        assert await a.get("p") == b"first"  # the server's blob is untouched
    finally:
        await b.close()
        await a.close()
