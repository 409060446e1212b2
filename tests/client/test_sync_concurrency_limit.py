"""A sync never has more transfers open at once than its concurrency setting, plain or
streamed, up or down; a relay (tests/helpers/relay.py) counts the open connections."""

from __future__ import annotations

import os

import pytest

from tests.helpers.client import Account, device
from tests.helpers.relay import relay_to


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
