"""Batched paths of the client: put_many, inline payloads read many per query, and the
set-based reconcile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blobsync.client import SyncReport, SyncStatus, putting
from blobsync.client.errors import ClientError
from blobsync.client.localstore import reads
from tests.helpers.client import copy_sealed


async def test_put_many_stores_in_order_and_syncs(devices, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(putting, "PUT_BATCH_COUNT", 3)  # several batches out of few files
    a = await devices("a")
    b = await devices("b")
    files = []
    for i in range(7):
        f = tmp_path / f"f{i}"
        # one file too large to be inline, in the middle: order must hold around it
        f.write_bytes(os.urandom(200_000 if i == 4 else 1000 + i))
        files.append(f)
    seen: list[tuple[str, Path]] = []
    ids = await a.put_many(files, stored=lambda i, p: seen.append((i, p)))
    assert [p for _, p in seen] == files and [i for i, _ in seen] == ids
    assert len(set(ids)) == 7
    assert sorted(await a.local_list(status=SyncStatus.PENDING_UPLOAD)) == sorted(ids)
    assert await a.send_missing() == 7
    await b.sync()
    for blob_id, f in zip(ids, files, strict=True):
        assert await b.get(blob_id) == f.read_bytes()


async def test_put_many_batch_is_whole_or_absent(devices, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(putting, "PUT_BATCH_COUNT", 2)
    a = await devices("a")
    ok = [tmp_path / "a", tmp_path / "b"]
    for f in ok:
        f.write_bytes(b"x" * 100)
    bad = tmp_path / "unreadable"
    bad.mkdir()  # stat works, reading fails: the batch holding it is not kept
    later = tmp_path / "c"
    later.write_bytes(b"y" * 100)
    with pytest.raises(ClientError):
        await a.put_many([*ok, bad, later], local_only=True)
    # the first batch (a, b) is kept, the one with the bad file is not, not even in part
    assert len(await a.local_list(status=SyncStatus.LOCAL_ONLY)) == 2


async def test_read_sealed_many_matches_one_by_one(devices, monkeypatch) -> None:
    monkeypatch.setattr(reads, "INLINE_READ_BYTES", 5000)  # groups of a few blobs
    a = await devices("a")
    sizes = [10, 3000, 200_000, 2500, 1, 4000, 90_000, 50]
    for i, n in enumerate(sizes):
        await a.put(f"b{i}", os.urandom(n), upload=False)
    rows = await a.store.rows("default")
    assert any(r.inline for r in rows) and any(not r.inline for r in rows)
    expected = b""
    for r in rows:
        async for chunk in a.store.read_sealed(r):
            expected += chunk
    got = b"".join([c async for c in a.store.read_sealed_many(rows)])
    assert got == expected


async def test_reconcile_classifies_by_sets(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    for i in range(3):
        await a.put(f"s{i}", f"v{i}".encode())
    await b.sync()
    await a.delete("s0")  # tombstoned: b removes it
    await a.put("new", b"fresh")  # b learns of it
    large = os.urandom(2_000_000)  # beyond the stream threshold
    await b.put("big", large, upload=False)
    # Already there: b must not send it again. The very sealed blob b holds (as after an
    # upload whose answer was lost): since issue 10 item 3 (SPEC 7), other bytes under
    # the id are a conflict, no longer SYNCED (test_upload_conflicts_fail_with_id_taken).
    await copy_sealed(b, a, "big")
    await a._upload_now(await a.store.get("default", "big"))
    await b.put("big-alone", large, upload=False)
    report = SyncReport()
    await b.engine.reconcile("default", report)
    assert report.deleted_local == 1 and await b.status("s0") is None
    assert await b.status("new") is SyncStatus.PENDING_DOWNLOAD
    assert await b.status("s1") is SyncStatus.SYNCED
    assert await b.status("big") is SyncStatus.SYNCED
    assert await b.status("big-alone") is SyncStatus.PENDING_UPLOAD
    known, unsynced = await b.store.statuses("default")
    assert known == {"s1", "s2", "new", "big", "big-alone"}
    assert unsynced == {"new": "PENDING_DOWNLOAD", "big-alone": "PENDING_UPLOAD"}
    assert await b.store.statuses("other") == (set(), {})


async def test_statuses_with_an_id_holding_the_separator(devices) -> None:
    a = await devices("a")
    await a.store.add_pending_downloads("default", ["a\nb", "c"])
    await a.put("d", b"x", upload=False)
    known, unsynced = await a.store.statuses("default")
    assert known == {"a\nb", "c", "d"}
    assert unsynced == {"a\nb": "PENDING_DOWNLOAD", "c": "PENDING_DOWNLOAD",
                        "d": "PENDING_UPLOAD"}


async def test_put_many_uploads_each_batch_as_it_is_stored(
    devices, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(putting, "PUT_BATCH_COUNT", 4)
    a = await devices("a", concurrency=2)
    files = []
    for i in range(11):
        f = tmp_path / f"f{i}"
        f.write_bytes(os.urandom(300_000 if i == 5 else 500 + i))  # one large, left behind
        files.append(f)
    report = SyncReport()
    progress: list[object] = []
    ids = await a.put_many(files, upload=True, report=report, progress=progress.append)
    large = ids[5]
    small = [b for b in ids if b != large]
    assert report.uploaded == 10 and progress
    assert sorted(await a.local_list(status=SyncStatus.SYNCED)) == sorted(small)
    assert await a.local_list(status=SyncStatus.PENDING_UPLOAD) == [large]
    assert sorted(await a.remote_list()) == sorted(small)  # there without a sync
    assert await a.send_missing() == 1


async def test_put_many_uploads_nothing_without_streams(devices, tmp_path: Path) -> None:
    a = await devices("a", stream=False)
    files = [tmp_path / f"f{i}" for i in range(3)]
    for f in files:
        f.write_bytes(b"small")
    ids = await a.put_many(files, upload=True)
    assert sorted(await a.local_list(status=SyncStatus.PENDING_UPLOAD)) == sorted(ids)
    assert await a.remote_list() == []
