"""Priorities rank low < medium < high < urgent, and transfers go highest first: plain
PUTs, the order inside an upload stream, and a download asked for urgently that failed.
A relay (tests/helpers/relay.py) between the client and the real server shows the order
of the requests."""

from __future__ import annotations

import json
import os

import pytest

from blobsync.client import ConnectionLost
from blobsync.client.model import priority_rank
from tests.helpers.client import Account, device
from tests.helpers.relay import relay_to


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


def test_priorities_rank_in_order() -> None:
    ranks = [priority_rank(p) for p in ("low", "medium", "high", "urgent")]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4
    with pytest.raises(ValueError):
        priority_rank("asap")
