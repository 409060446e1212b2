"""Deletions carried both ways, flags, and the remote listing filters."""

from __future__ import annotations

import os

import pytest

from blobsync.client import BlobNotFound, PreconditionFailed, RemoteError, SyncStatus
from tests.helpers.relay import relay_to


async def test_deletion_on_one_device_reaches_the_other(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    small = await a.put(None, b"small")
    large = await a.put(None, os.urandom(2 << 20))
    keep = await a.put(None, b"keep")
    await b.sync()
    assert sorted(await b.local_list()) == sorted([small, large, keep])
    await a.delete(small)
    await a.delete(large)
    assert await a.remote_list(deleted=True) == [small, large]
    report = await b.sync()
    assert report.deleted_local == 2
    assert await b.local_list() == [keep]
    # the sealed file of the large blob left b's disk too
    files = [p for p in b.profile.blobs_dir.rglob("*") if p.is_file()]
    assert files == []
    with pytest.raises(BlobNotFound):
        await b.get(small)


async def test_offline_delete_is_sent_by_the_next_sync(devices, account) -> None:
    a = await devices("a")
    await a.put("gone", b"to be deleted")
    await a.put("stays", b"kept")
    # the same profile, pointed at a relay we then stop: the server is unreachable
    async with relay_to(account.server.url) as relay:
        a.transport.base = a.transport.base.with_port(int(relay.url.rsplit(":", 1)[1]))
    await a.delete("gone")  # the server cannot be reached: stays pending
    assert await a.status("gone") is SyncStatus.PENDING_DELETE
    assert await a.local_list() == ["stays"]
    a.transport.base = a.transport.base.with_port(int(account.server.url.rsplit(":", 1)[1]))
    report = await a.sync()
    assert report.deleted_remote == 1
    assert await a.remote_list() == ["stays"]
    assert await a.status("gone") is None


async def test_pending_delete_of_a_blob_already_gone_counts_as_done(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    await a.put("twice", b"deleted by both")
    await b.sync()
    await a.delete("twice")
    # b deletes too, without syncing first: the server answers 404, which is fine
    await b.delete("twice")
    assert await b.status("twice") is None
    # and a delete of something nobody has is BlobNotFound
    with pytest.raises(BlobNotFound):
        await b.delete("nothing")


async def test_recreated_blob_is_not_deleted_by_old_tombstone(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    await a.put("phoenix", b"first life")
    await a.delete("phoenix")
    await a.put("phoenix", b"second life")
    await b.sync()
    assert await b.get("phoenix") == b"second life"


async def test_flags_and_listing_filters(devices) -> None:
    a = await devices("a")
    for i in range(4):
        await a.put(f"m{i}", b"x" * i)
    await a.set_flags("m1", ["PENDING"])
    await a.set_flags("m3", ["PENDING", "FAILED"])
    assert await a.get_flags("m1") == ["PENDING"]
    assert sorted(await a.get_flags("m3")) == ["FAILED", "PENDING"]
    assert await a.get_flags("m0") == []
    assert sorted(await a.remote_list(filter_flag="PENDING")) == ["m1", "m3"]
    assert await a.remote_count() == 4
    assert await a.remote_count(filter_flag="FAILED") == 1
    assert await a.remote_list(order_by="date") == ["m0", "m1", "m2", "m3"]
    assert await a.remote_list(order_by="+date") == ["m0", "m1", "m2", "m3"]
    assert await a.remote_list(order_by="-date") == ["m3", "m2", "m1", "m0"]
    # expect: changes only while the flag holds
    await a.set_flags("m1", ["PROCESSING"], expect="PENDING")
    with pytest.raises(PreconditionFailed):
        await a.set_flags("m1", ["PROCESSING"], expect="PENDING")
    with pytest.raises(RemoteError) as bad:
        await a.set_flags("m1", ["BOGUS"])
    assert bad.value.status == 406
    with pytest.raises(BlobNotFound):
        await a.get_flags("nope")
    await a.delete("m2")
    assert await a.remote_list(deleted=True) == ["m2"]
