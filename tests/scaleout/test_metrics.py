"""/metrics on the local port: the counters move with real requests to a real server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from blobsync.format import encode_upstream_header, seal
from tests.helpers.metrics import scrape, value
from tests.helpers.rawhttp import head, open_raw
from tests.helpers.servers import RunningServer, auth_header, make_user, running_server

SECRET = os.urandom(128)
BLOB_ROUTE = "/blobs/{uuid}/{blob_id}"


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path) as s:
        yield s


async def test_counters_move(srv: RunningServer) -> None:
    token = await make_user(srv.store, "alice-secret-name")
    auth = auth_header("alice-secret-name", token)
    blob = seal(SECRET, "blob-secret-id", os.urandom(5000))
    url = f"{srv.url}/blobs/alice-secret-name/blob-secret-id"
    async with aiohttp.ClientSession() as s:
        _, before = await scrape(s, srv)
        async with s.put(url, data=blob, headers=auth) as r:
            assert r.status == 200
        async with s.put(url, data=blob, headers=auth) as r:
            assert r.status == 409
        async with s.get(url, headers=auth) as r:
            assert await r.read() == blob
        async with s.get(url + "-absent", headers=auth) as r:
            assert r.status == 404
        async with s.get(url) as r:  # no credentials
            assert r.status == 401
        stream = {"s1": seal(SECRET, "s1", b"a"), "s2": seal(SECRET, "s2", b"bb")}
        body = encode_upstream_header([(i, len(b)) for i, b in stream.items()])
        body += b"".join(stream.values())
        async with s.post(f"{srv.url}/stream/alice-secret-name?direction=upload", data=body,
                          headers=auth) as r:
            assert r.status == 200, await r.text()
        async with s.delete(url, headers=auth) as r:
            assert r.status == 200
        async with s.get(f"{srv.url}/metrics") as r:  # not on the public port
            assert r.status == 404
        text, after = await scrape(s, srv)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    reqs = "blobsync_http_requests_total"
    assert moved(reqs, method="PUT", route=BLOB_ROUTE, status="200") == 1
    assert moved(reqs, method="PUT", route=BLOB_ROUTE, status="409") == 1
    assert moved(reqs, method="GET", route=BLOB_ROUTE, status="200") == 1
    assert moved(reqs, method="GET", route=BLOB_ROUTE, status="404") == 1
    assert moved(reqs, method="GET", route=BLOB_ROUTE, status="401") == 1
    assert moved(reqs, method="DELETE", route=BLOB_ROUTE, status="200") == 1
    assert moved(reqs, method="POST", route="/stream/{uuid}", status="200") == 1
    assert moved(reqs, method="GET", route="unmatched", status="404") == 1
    assert moved(reqs, method="GET", route="/metrics", status="200") == 1  # the first scrape
    assert moved("blobsync_http_errors_total", method="GET", route=BLOB_ROUTE,
                 kind="client") == 2
    assert moved("blobsync_http_errors_total", method="PUT", route=BLOB_ROUTE,
                 kind="client") == 1
    assert moved("blobsync_http_request_duration_seconds_count", method="PUT",
                 route=BLOB_ROUTE) == 2
    assert moved("blobsync_blobs_stored_total") == 3
    assert moved("blobsync_blob_stored_bytes_total") == len(blob) + sum(
        map(len, stream.values())
    )
    assert moved("blobsync_blobs_deleted_total") == 1
    assert moved("blobsync_blob_served_bytes_total") == len(blob)
    assert moved("blobsync_blob_puts_refused_total", reason="BlobExists") == 1
    assert moved("blobsync_http_received_bytes_total", route=BLOB_ROUTE) == 2 * len(blob)
    # The answer with the blob, plus its status line and headers.
    assert len(blob) < moved("blobsync_http_sent_bytes_total", route=BLOB_ROUTE) \
        < len(blob) + 3000
    # The 8 requests above and the first scrape (a scrape counts once it has answered).
    assert moved("blobsync_worker_requests_total", worker="0") == 9
    assert value(after, "blobsync_http_requests_in_progress") == 1  # this scrape
    # Labels are route patterns: no user name or blob id ever reaches the metrics.
    for secret in ("alice-secret-name", "blob-secret-id", "s1", "s2"):
        assert secret not in text


async def test_dropped_upload_is_counted(srv: RunningServer) -> None:
    token = await make_user(srv.store, "bob")
    async with aiohttp.ClientSession() as s:
        _, before = await scrape(s, srv)
        reader, writer = await open_raw(srv.url)
        headers = {**auth_header("bob", token), "Content-Length": "200000"}
        writer.write(head("PUT", srv.url, "/blobs/bob/cut", headers))
        writer.write(seal(SECRET, "cut", os.urandom(50_000)))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        async def dropped() -> float:
            _, now = await scrape(s, srv)
            return value(now, "blobsync_http_errors_total", method="PUT", route=BLOB_ROUTE,
                         kind="dropped") - value(before, "blobsync_http_errors_total",
                                                 method="PUT", route=BLOB_ROUTE, kind="dropped")

        async with asyncio.timeout(10):
            while await dropped() != 1:
                await asyncio.sleep(0.05)
        _, after = await scrape(s, srv)
    assert value(after, "blobsync_blobs_stored_total") == value(before,
                                                                "blobsync_blobs_stored_total")
    assert value(after, "blobsync_http_requests_total", method="PUT", route=BLOB_ROUTE,
                 status="dropped") == 1
    assert await srv.store.index.get_blob("bob", "default", "cut") is None
