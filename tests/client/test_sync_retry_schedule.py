"""Failed transfers are tried again on the schedule (10, 20, ... 60 s, scaled): three
verification failures leave a blob failed, passing failures wait and retry, and the retry
state outlives the process. A relay (tests/helpers/relay.py) times the requests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from blobsync.client import BlobManager, ClientSettings, SyncStatus
from blobsync.format import InvalidBlob
from tests.helpers.client import Account, corrupt_on_server, device, fast_settings
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.relay import relay_to


async def test_three_verification_failures_on_the_retry_schedule(account: Account) -> None:
    a = await account.device("a")
    await a.put("bad", os.urandom(200_000))
    await a.put("good", os.urandom(200_000))
    await a.close()
    await corrupt_on_server(account.server, "bad")
    scale = 0.02
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url, stream=False, retry_scale=scale)
        try:
            report = await b.sync()
            assert report.failed == ["bad"] and report.downloaded == 1
            gets = [r.at for r in relay.requests if r.line.startswith("GET /blobs/alice/bad")]
            assert len(gets) == 3  # exactly three tries, then left alone
            # waited at least 10 and 20 (scaled) seconds between them
            assert gets[1] - gets[0] >= 10 * scale - 0.01
            assert gets[2] - gets[1] >= 20 * scale - 0.01
            row = await b.store.get("default", "bad")
            assert row.status is SyncStatus.FAILED_DOWNLOAD and row.verify_failures == 3
            again = await b.sync()
            assert again.failed == [] and again.downloaded == 0
            assert len([r for r in relay.requests if "/blobs/alice/bad" in r.line]) == 3
            assert list((b.profile.home / "tmp").iterdir()) == []
        finally:
            await b.close()


async def test_verification_failures_through_get_count_too(account: Account) -> None:
    a = await account.device("a")
    await a.put("bad", os.urandom(5000))
    await a.close()
    await corrupt_on_server(account.server, "bad")
    scale = 100.0  # retry times far in the future, to read them back exactly
    b = await account.device("b", retry_scale=scale, max_sync_wait=0.0)
    try:
        for attempt in (1, 2):
            before = time.time()
            with pytest.raises(InvalidBlob):
                await b.get("bad")
            after = time.time()
            row = await b.store.get("default", "bad")
            assert row.status is SyncStatus.PENDING_DOWNLOAD
            assert (row.verify_failures, row.retries) == (attempt, attempt)
            delay = 10 * attempt * scale
            assert before + delay <= row.next_attempt <= after + delay
        with pytest.raises(InvalidBlob):
            await b.get("bad")
        assert await b.status("bad") is SyncStatus.FAILED_DOWNLOAD
    finally:
        await b.close()


async def test_passing_failures_follow_the_retry_schedule(account: Account) -> None:
    a = await account.device("a")
    await a.put("t1", os.urandom(3000))
    await a.close()
    scale = 0.02
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url, stream=False, retry_scale=scale,
                         max_sync_wait=1.3)
        try:
            relay.drop = lambda head: head.startswith(b"GET /blobs/alice/t1")
            report = await b.sync()
            assert report.pending == ["t1"] and report.downloaded == 0
            tries: list[float] = []
            for r in relay.requests:
                # aiohttp itself repeats a GET at once when a kept-alive connection drops:
                # one attempt of the client may show as two requests here.
                if r.line.startswith("GET /blobs/alice/t1") and (
                        not tries or r.at - tries[-1] > 5 * scale):
                    tries.append(r.at)
            # 0, then 10, 20, 30 (scaled) later; the next wait (40) passes max_sync_wait
            assert len(tries) == 4
            for i in range(1, 4):
                assert tries[i] - tries[i - 1] >= 10 * i * scale - 0.01
            row = await b.store.get("default", "t1")
            assert row.retries == 4 and row.status is SyncStatus.PENDING_DOWNLOAD
            relay.drop = None
            report = await b.sync()  # waits out the last delay, then gets it
            assert report.downloaded == 1 and report.pending == []
        finally:
            await b.close()


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


def test_retry_schedule_is_10_to_60_seconds_scaled() -> None:
    s = ClientSettings()
    assert [s.retry_delay(n) for n in range(1, 9)] == [10, 20, 30, 40, 50, 60, 60, 60]
    fast = ClientSettings(retry_scale=0.01)
    assert fast.retry_delay(1) == pytest.approx(0.1)
    assert fast.retry_delay(100) == pytest.approx(0.6)
