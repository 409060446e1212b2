"""Answers delivered in network-sized pieces (by a relay, tests/helpers/relay.py) are
read whole."""

from __future__ import annotations

import os

from tests.helpers.client import Account, device
from tests.helpers.relay import relay_to


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
