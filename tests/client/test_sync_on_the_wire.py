"""Sync correctness seen from the wire. A relay (tests/helpers/relay.py) between the client
and the real server shows what was asked, in which order, how many at once and how large;
it also drops requests and delivers answers in network-sized pieces."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from blobsync.client import ConnectionLost, SyncStatus
from blobsync.client.errors import IdTaken
from blobsync.format import InvalidBlob
from tests.helpers.client import Account, copy_sealed, corrupt_on_server, device
from tests.helpers.relay import Hold, relay_to


async def test_deletion_on_a_while_b_is_offline(account: Account) -> None:
    a = await account.device("a")
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url)
        try:
            for name in ("x", "y", "z"):
                await a.put(name, name.encode() * 100)
            await b.sync()
            assert sorted(await b.local_list()) == ["x", "y", "z"]

            relay.drop = lambda head: True  # b is offline
            await a.delete("x")
            await b.delete("y")  # waits, PENDING_DELETE
            assert await b.status("y") is SyncStatus.PENDING_DELETE
            await b.put("w", b"written offline")  # waits, PENDING_UPLOAD
            assert await b.status("w") is SyncStatus.PENDING_UPLOAD
            assert await b.get("x") == b"x" * 100  # still here while offline
            with pytest.raises(ConnectionLost):
                await b.sync()

            relay.drop = None  # back online
            report = await b.sync()
            assert (report.deleted_local, report.deleted_remote, report.uploaded) == (1, 1, 1)
            assert report.downloaded == 0 and report.failed == [] and report.pending == []
            assert sorted(await b.local_list()) == ["w", "z"]
            assert await b.status("x") is None and await b.status("y") is None
            assert sorted(await b.remote_list()) == ["w", "z"]  # x was not sent back
            again = await b.sync()
            assert (again.downloaded, again.uploaded, again.deleted_local,
                    again.deleted_remote) == (0, 0, 0, 0)
            await a.sync()
            assert sorted(await a.local_list()) == ["w", "z"]
            assert await a.get("w") == b"written offline"
        finally:
            await b.close()
            await a.close()


async def test_priorities_highest_first(account: Account) -> None:
    order = [("m1", "medium"), ("l1", "low"), ("u1", "urgent"), ("h1", "high"),
             ("l2", "low"), ("u2", "urgent"), ("m2", "medium"), ("h2", "high")]
    expected = ["u1", "u2", "h1", "h2", "m1", "m2", "l1", "l2"]
    async with relay_to(account.server.url, capture=True) as relay:
        one = await device(account, "one", relay.url, stream=False, concurrency=1)
        try:
            for blob_id, prio in order:
                await one.put(blob_id, os.urandom(500), priority=prio, upload=False)
            first = len(relay.requests)
            await one.sync()
            puts = [r.line.split()[1].split("?")[0].rsplit("/", 1)[1]
                    for r in relay.requests[first:] if r.line.startswith("PUT ")]
            assert puts == expected
        finally:
            await one.close()
        streamed = await device(account, "streamed", relay.url)
        try:
            for blob_id, prio in order:
                await streamed.put("s" + blob_id, os.urandom(500), priority=prio, upload=False)
            relay.conn_data.clear()
            await streamed.sync()
            (stream,) = [r for r in relay.parsed() if "direction=upload" in r.line]
            header = json.loads(stream.body.split(b"\n", 1)[0])
            assert [i for i, _ in header] == ["s" + e for e in expected]
        finally:
            await streamed.close()
        # downloads: a blob asked for urgently that could not come goes first later on
        two = await device(account, "two", relay.url, stream=False, concurrency=1)
        try:
            relay.drop = lambda head: head.startswith(b"GET /blobs/alice/l2?")
            with pytest.raises(ConnectionLost):
                await two.get("l2", priority="urgent")
            relay.drop = None
            await two.retry_failed()  # due now, as everything else
            first = len(relay.requests)
            await two.sync()
            gets = [r.line.split()[1].split("?")[0].rsplit("/", 1)[1]
                    for r in relay.requests[first:]
                    if r.line.startswith("GET /blobs/alice/") and "only_" not in r.line]
            assert gets[0] == "l2" and len(gets) == len(expected) * 2
        finally:
            await two.close()


@pytest.mark.parametrize(("concurrency", "stream"), [(1, False), (2, False), (3, True)])
async def test_concurrent_transfers_stay_within_the_limit(
    account: Account, concurrency: int, stream: bool
) -> None:
    size = 20_000 if stream else 1_200_000
    async with relay_to(account.server.url) as relay:
        up = await device(account, "up", relay.url, concurrency=concurrency, stream=stream,
                          stream_max_count=2)
        try:
            for i in range(8):
                await up.put(f"c{i}", os.urandom(size), upload=False)
            relay.max_open = relay.open_now
            report = await up.sync()
            assert report.uploaded == 8
            assert relay.max_open == concurrency
        finally:
            await up.close()
        down = await device(account, "down", relay.url, concurrency=concurrency,
                            stream=stream, stream_max_count=2)
        try:
            relay.max_open = relay.open_now
            report = await down.sync()
            assert report.downloaded == 8
            assert relay.max_open == concurrency
        finally:
            await down.close()


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


async def test_stream_requests_are_bounded_by_count_and_bytes(account: Account) -> None:
    max_bytes = 10_000
    async with relay_to(account.server.url, capture=True) as relay:
        up = await device(account, "up", relay.url, stream_max_count=4,
                          stream_max_bytes=max_bytes, concurrency=2)
        try:
            for i in range(15):
                await up.put(f"b{i:02d}", os.urandom(2000), upload=False)  # 2753 sealed
            for i in range(6):
                await up.put(f"t{i}", os.urandom(10), upload=False)  # 763 sealed
            relay.conn_data.clear()
            report = await up.sync()
            assert report.uploaded == 21
        finally:
            await up.close()
        uploads = [r for r in relay.parsed() if "direction=upload" in r.line]
        sent: list[str] = []
        for r in uploads:
            head, payloads = r.body.split(b"\n", 1)
            items = json.loads(head)
            assert 2 <= len(items) <= 4
            assert len(payloads) == sum(size for _, size in items) <= max_bytes
            sent += [i for i, _ in items]
        singles = [r for r in relay.parsed() if r.line.startswith("PUT ")]
        assert len(sent) + len(singles) == 21 and len(set(sent)) == len(sent)
        down = await device(account, "down", relay.url, stream_max_count=4,
                            stream_max_bytes=max_bytes, concurrency=2)
        try:
            relay.conn_data.clear()
            report = await down.sync()
            assert report.downloaded == 21 and report.failed == []
        finally:
            await down.close()
        asked = [json.loads(r.body) for r in relay.parsed() if "direction=download" in r.line]
        assert asked and all(1 <= len(ids) <= 4 for ids in asked)


async def test_answers_arriving_in_pieces_are_read_whole(account: Account) -> None:
    # ~16 KB JSON answers in 1400-byte pieces 5 ms apart, like a real network
    async with relay_to(account.server.url, fragment=1400, fragment_pause=0.005) as relay:
        a = await device(account, "a", relay.url, max_sync_wait=1.0)
        try:
            ids = [f"piece-{i:03d}-" + "x" * 40 for i in range(300)]
            for blob_id in ids:
                await a.put(blob_id, os.urandom(100), upload=False)
            report = await a.sync()
            assert report.pending == [] and report.uploaded == 300
            assert sorted(await a.remote_list()) == sorted(ids)
        finally:
            await a.close()


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


async def test_download_streams_do_not_move_much_more_than_the_data(account: Account) -> None:
    a = await account.device("a")
    try:
        for i in range(60):
            await a.put(f"b{i:02d}", os.urandom(100_000), upload=False)
        await a.sync()
    finally:
        await a.close()
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url, stream_max_bytes=1 << 20, concurrency=1)
        try:
            relay.down_bytes = 0
            report = await b.sync()
            assert report.downloaded == 60
            assert relay.down_bytes <= 1.5 * 60 * 100_753
        finally:
            await b.close()

