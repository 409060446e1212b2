"""Stream requests as the wire sees them: bounded by count and bytes each way, and a
download stream moves little more than the data. A relay (tests/helpers/relay.py) between
the client and the real server captures and counts them."""

from __future__ import annotations

import json
import os

from tests.helpers.client import Account, device
from tests.helpers.relay import relay_to


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
