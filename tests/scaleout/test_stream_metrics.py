"""Stream uploads and downloads move the blob counters of /metrics, reported by the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp

from blobsync.format import encode_upstream_header, seal
from tests.helpers.metrics import scrape, value
from tests.helpers.servers import auth_header, make_user, running_server

SECRET = os.urandom(128)


async def test_stream_counts_stored_refused_and_served(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, aiohttp.ClientSession() as s:
        token = await make_user(srv.store, "carol")
        auth = auth_header("carol", token)
        big = seal(SECRET, "big", os.urandom(300_000))  # too big for a batch: goes via put
        small = {f"s{i}": seal(SECRET, f"s{i}", os.urandom(100 + i)) for i in range(3)}
        blobs = {**small, "big": big}
        url = f"{srv.url}/stream/carol"
        _, before = await scrape(s, srv)
        body = encode_upstream_header([(i, len(b)) for i, b in blobs.items()])
        async with s.post(url + "?direction=upload", data=body + b"".join(blobs.values()),
                          headers=auth) as r:
            assert r.status == 200, await r.text()
        # Again: all four are present now, each one a refusal.
        async with s.post(url + "?direction=upload", data=body + b"".join(blobs.values()),
                          headers=auth) as r:
            assert r.status == 200, await r.text()
        async with s.post(url + "?direction=download", data=json.dumps(list(blobs)),
                          headers=auth) as r:
            assert r.status == 200
            await r.read()
        _, after = await scrape(s, srv)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = sum(map(len, blobs.values()))
    assert moved("blobsync_blobs_stored_total") == 4
    assert moved("blobsync_blob_stored_bytes_total") == total
    assert moved("blobsync_blob_puts_refused_total", reason="BlobExists") == 4
    assert moved("blobsync_blob_served_bytes_total") == total
