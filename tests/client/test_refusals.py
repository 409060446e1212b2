"""Lasting refusals (quota) end in FAILED_UPLOAD; check() and retry_failed() see them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blobsync.client import BlobManager, QuotaExceeded, SyncStatus
from tests.helpers.client import fast_settings
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.payloads import damage_payload
from tests.helpers.servers import make_user, running_server


async def test_quota_refusals_are_failed_uploads(tmp_path: Path) -> None:
    async with running_server(tmp_path, quota=40_000) as srv:
        token = await make_user(srv.store, "alice")
        m = await BlobManager.init(tmp_path / "a", server=srv.url, user="alice", token=token,
                                   passphrase=PASSPHRASE, settings=fast_settings())
        try:
            with pytest.raises(QuotaExceeded):
                await m.put("too-big", os.urandom(50_000))
            assert await m.status("too-big") is SyncStatus.FAILED_UPLOAD
            assert await m.get("too-big") is not None  # still here, locally
            # a stream that would pass the quota: what fits is stored, the rest fails
            for i in range(5):
                await m.put(f"s{i}", os.urandom(10_000), upload=False)
            report = await m.sync()
            stored = await m.remote_list()
            assert "too-big" not in stored
            assert len(stored) + len(report.failed) == 5 and report.failed
            assert report.uploaded == len(stored)
            for blob_id in report.failed:
                assert await m.status(blob_id) is SyncStatus.FAILED_UPLOAD
            problems = await m.check()
            assert any("too-big: FAILED_UPLOAD" in p for p in problems)
            # making room and retrying the failed ones
            for blob_id in stored:
                await m.delete(blob_id)
            assert await m.retry_failed() == len(report.failed) + 1
            again = await m.sync()
            assert sorted(await m.remote_list()) == sorted(report.failed)
            assert again.failed == ["too-big"]
        finally:
            await m.close()


async def test_check_finds_damaged_copies_here_and_there(devices, account) -> None:
    m = await devices("a")
    await m.put("fine", b"ok")
    large = await m.put(None, os.urandom(200_000))
    assert await m.check(remote=True) == []
    row = await m.store.get("default", large)
    path = m.store.blob_path(row.location)
    data = bytearray(path.read_bytes())
    data[5000] ^= 1
    path.write_bytes(bytes(data))
    (m.profile.blobs_dir / "zz").mkdir(exist_ok=True)
    (m.profile.blobs_dir / "zz" / "stray").write_bytes(b"x")
    await m.transport.delete_blob("default", "fine")  # behind the client's back
    await m.put("tampered", b"fine here, damaged on the server")
    info = await account.server.store.index.get_blob("alice", "default", "tampered")
    damage_payload(account.server.config.data, info.location, lambda data: data[:-1] + b"!")
    problems = await m.check()
    assert not any("tampered" in p for p in problems)  # the local copy is fine
    problems = await m.check(remote=True)
    assert any(large in p and "local copy does not verify" in p for p in problems)
    assert any("stray" in p for p in problems)
    assert any("fine: SYNCED here but not on the server" in p for p in problems)
    assert any("tampered: the server's copy does not verify" in p for p in problems)
    assert not any(f"{large}: the server's copy" in p for p in problems)


async def test_missing_local_payload_fails_the_upload_instead_of_looping(devices) -> None:
    m = await devices("a")
    await m.put("ok", b"fine", upload=False)
    for blob_id, size in (("mid", 100_000), ("big", 2 << 20)):
        await m.put(blob_id, os.urandom(size), upload=False)
        row = await m.store.get("default", blob_id)
        m.store.blob_path(row.location).unlink()
    report = await m.sync()
    assert sorted(report.failed) == ["big", "mid"]
    assert report.uploaded == 1
    assert await m.status("mid") is SyncStatus.FAILED_UPLOAD
    assert await m.remote_list() == ["ok"]
