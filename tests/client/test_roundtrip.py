"""Round trips through a real server: put on one device, get and sync on another."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from blobsync.client import BlobExists, BlobNotFound, ClientError, SyncStatus
from blobsync.format import SEAL_OVERHEAD

# Edges: empty, one byte, the 4096 rounding step, the inline (64 KiB sealed) edge, the
# stream threshold (1 MiB plaintext) edge, and a blob that travels alone.
SIZES = [0, 1, 4095, 4096, (64 << 10) - SEAL_OVERHEAD, (64 << 10) - SEAL_OVERHEAD + 1,
         1 << 20, (1 << 20) + 1, 3 << 20]


async def test_put_get_round_trip_at_many_sizes(devices, tmp_path: Path) -> None:
    a = await devices("a")
    b = await devices("b")
    blobs = {}
    for size in SIZES:
        data = os.urandom(size)
        blob_id = await a.put(None, data)
        blobs[blob_id] = data
        assert await a.status(blob_id) is SyncStatus.SYNCED
        assert await a.get(blob_id) == data  # from the local store
    for blob_id, data in blobs.items():
        assert await b.get(blob_id) == data  # downloaded, verified, kept
        assert await b.status(blob_id) is SyncStatus.SYNCED
    # kept: b answers again from its own store (the partial files are gone)
    assert sorted(await b.local_list()) == sorted(blobs)
    assert not list((b.profile.tmp_dir).iterdir())


async def test_file_put_and_get_to_dest(devices, tmp_path: Path) -> None:
    a = await devices("a")
    b = await devices("b")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom((2 << 20) + 12345))
    blob_id = await a.put("file-blob", src, priority="high")
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    assert await b.get(blob_id, dest=dest) is None
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    # a small one to dest too, and one read as a stream of chunks
    small = await a.put(None, b"hello world")
    await b.get(small, dest=tmp_path / "small.txt")
    assert (tmp_path / "small.txt").read_bytes() == b"hello world"
    chunks = [c async for c in b.open_stream(blob_id)]
    assert b"".join(chunks) == src.read_bytes()


async def test_second_device_syncs_what_first_put(devices) -> None:
    a = await devices("a")
    data = {f"blob-{i}": os.urandom(s) for i, s in enumerate([10, 5000, 70_000, 1 << 20, 2 << 20])}
    for blob_id, d in data.items():
        await a.put(blob_id, d, upload=False)
    assert await a.sync_progress("default") == {
        **{s: 0 for s in SyncStatus}, SyncStatus.PENDING_UPLOAD: len(data)}
    report = await a.sync()
    assert report.uploaded == len(data) and report.failed == []
    b = await devices("b")
    progress = []
    report = await b.sync(progress=progress.append)
    assert report.downloaded == len(data)
    assert (await b.sync_progress())[SyncStatus.SYNCED] == len(data)
    for blob_id, d in data.items():
        assert await b.get(blob_id) == d
    done = [p for p in progress if p.phase == "download"][-1]
    assert done.done == done.total == len(data)
    # a second sync has nothing to do
    again = await b.sync()
    assert (again.downloaded, again.uploaded, again.deleted_local) == (0, 0, 0)


async def test_namespaces_are_apart(devices) -> None:
    a = await devices("a")
    await a.put("same", b"in default")
    await a.put("same", b"in other", namespace="other")
    assert await a.get("same") == b"in default"
    assert await a.get("same", namespace="other") == b"in other"
    assert await a.remote_list("other") == ["same"]
    b = await devices("b")
    await b.sync("other")
    assert await b.local_list("other") == ["same"]
    assert await b.local_list() == []


async def test_put_refuses_an_existing_id_and_bad_ids(devices) -> None:
    a = await devices("a")
    await a.put("x", b"one")
    with pytest.raises(BlobExists):
        await a.put("x", b"two")
    with pytest.raises(ClientError):
        await a.put("../etc", b"no")
    with pytest.raises(ValueError):
        await a.put("y", b"no", priority="highest")  # type: ignore[arg-type]
    with pytest.raises(BlobNotFound):
        await a.get("never-was")


async def test_local_only_and_deferred_upload(devices) -> None:
    a = await devices("a")
    await a.put("private", b"stays here", local_only=True)
    await a.put("later", b"goes on sync", upload=False)
    assert await a.remote_list() == []
    assert await a.local_list(status=SyncStatus.LOCAL_ONLY) == ["private"]
    report = await a.sync()
    assert report.uploaded == 1
    assert await a.remote_list() == ["later"]
    assert await a.status("private") is SyncStatus.LOCAL_ONLY


async def test_priorities_order_the_work(devices) -> None:
    a = await devices("a", stream=False, concurrency=1)
    for i, prio in enumerate(["low", "urgent", "medium", "high"]):
        await a.put(f"b{i}-{prio}", os.urandom(100), priority=prio, upload=False)  # type: ignore[arg-type]
    await a.sync()
    # the server lists in stored order: highest priority was sent first
    order = await a.remote_list(order_by="date")
    assert [o.split("-")[1] for o in order] == ["urgent", "high", "medium", "low"]


async def test_get_and_sync_of_the_same_blob_at_once(devices) -> None:
    import asyncio

    a = await devices("a")
    data = os.urandom(3 << 20)
    small = os.urandom(100)
    await a.put("big", data)
    await a.put("small", small)
    b = await devices("b")
    got, report = await asyncio.gather(b.get("big"), b.sync())
    assert got == data
    assert await b.get("big") == data and await b.get("small") == small
    assert sorted(await b.local_list()) == ["big", "small"]
    assert report.failed == []
    c = await devices("c")
    streamed = b"".join([chunk async for chunk in c.open_stream("big")])  # not local yet
    assert streamed == data
