"""``Expect: 100-continue`` over raw sockets: a request that would fail on its credentials,
its declared size or the quota gets its 4xx (JSON) instead of ``100 Continue``, before any
body byte is sent; a good one is invited and goes through."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blobsync.format import encode_upstream_header, seal
from tests.helpers.rawhttp import RawResponse, head, open_raw, read_response
from tests.helpers.servers import RunningServer, auth_header, make_service, make_user, start_server

SECRET = os.urandom(128)
QUOTA = 48 << 10
MAX_BLOB = 32 << 10
MAX_STREAM = 48 << 10
HUGE = 10 << 30  # what a client declares that it would send, if invited


@dataclass
class Srv:
    srv: RunningServer
    alice: dict[str, str]  # alice's Authorization header
    bob: dict[str, str]  # bob's: valid credentials, of another user
    incoming: dict[str, str]  # the incoming service's
    other_service: dict[str, str]  # a service the incoming box does not accept


@pytest.fixture
async def s(tmp_path: Path) -> AsyncIterator[Srv]:
    srv = await start_server(tmp_path, quota=QUOTA, max_blob_size=MAX_BLOB,
                             max_stream_size=MAX_STREAM)
    try:
        yield Srv(
            srv,
            auth_header("alice", await make_user(srv.store, "alice")),
            auth_header("bob", await make_user(srv.store, "bob")),
            auth_header("incoming", await make_service(srv.store, "incoming")),
            auth_header("smtp", await make_service(srv.store, "smtp")),
        )
    finally:
        await srv.stop()


class Exchange:
    """One connection: headers with ``Expect: 100-continue`` first, the body only when
    the server invites it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def start(cls, url: str, method: str, path: str, headers: dict[str, str],
                    length: int) -> tuple[Exchange, RawResponse]:
        reader, writer = await open_raw(url)
        hdrs = {**headers, "Content-Length": str(length), "Expect": "100-continue"}
        writer.write(head(method, url, path, hdrs))
        await writer.drain()
        first = await read_response(reader)  # no body byte has been sent
        return cls(reader, writer), first

    async def send(self, body: bytes) -> RawResponse:
        self.writer.write(body)
        await self.writer.drain()
        return await read_response(self.reader)

    def close(self) -> None:
        self.writer.close()


async def refused(url: str, method: str, path: str, headers: dict[str, str], length: int,
                  status: int) -> str:
    ex, first = await Exchange.start(url, method, path, headers, length)
    try:
        assert first.status == status, (first.status, first.body)
        assert first.headers["content-type"].startswith("application/json"), first.headers
        error = first.json()["error"]
        assert isinstance(error, str) and error
        # The body was never invited: the connection is not kept for another request.
        assert first.headers.get("connection", "").lower() == "close", first.headers
        return str(error)
    finally:
        ex.close()


def blob(blob_id: str, size: int) -> bytes:
    return seal(SECRET, blob_id, os.urandom(size))


# --- PUT /blobs --------------------------------------------------------------------------


async def test_put_refusals_come_before_the_body(s: Srv) -> None:
    url, path = s.srv.url, "/blobs/alice/b1"
    await refused(url, "PUT", path, {}, HUGE, 401)
    await refused(url, "PUT", path, {"Authorization": "Token bm9wZTpub3Bl"}, HUGE, 401)
    await refused(url, "PUT", path, s.bob, HUGE, 403)
    assert "limit" in await refused(url, "PUT", path, s.alice, HUGE, 413)
    # Under the size limit but past the quota, once some is used.
    data = blob("b0", 20_000)
    ex, first = await Exchange.start(url, "PUT", "/blobs/alice/b0", s.alice, len(data))
    assert first.status == 100
    assert (await ex.send(data)).status == 200
    ex.close()
    assert "quota" in await refused(url, "PUT", path, s.alice, 30_000, 507)
    # A blob already stored is 409 as without Expect, whatever the room left.
    await refused(url, "PUT", "/blobs/alice/b0", s.alice, 30_000, 409)
    assert await s.srv.store.index.get_blob("alice", "default", "b1") is None


async def test_put_invited_when_it_can_succeed(s: Srv) -> None:
    data = blob("b1", 20_000)
    ex, first = await Exchange.start(s.srv.url, "PUT", "/blobs/alice/b1", s.alice, len(data))
    try:
        assert first.status == 100
        r = await ex.send(data)
        assert r.status == 200, r.body
        assert r.json() == {"blob_id": "b1", "size": len(data)}
    finally:
        ex.close()
    info = await s.srv.store.index.get_blob("alice", "default", "b1")
    assert info is not None and info.size == len(data)


async def test_unknown_expectation_is_417_json(s: Srv) -> None:
    reader, writer = await open_raw(s.srv.url)
    try:
        writer.write(head("PUT", s.srv.url, "/blobs/alice/b1",
                          {**s.alice, "Content-Length": "10", "Expect": "tea"}))
        await writer.drain()
        r = await read_response(reader)
        assert r.status == 417 and "error" in r.json()
    finally:
        writer.close()


# --- POST /stream ------------------------------------------------------------------------


async def test_stream_upload_refusals_come_before_the_body(s: Srv) -> None:
    url, path = s.srv.url, "/stream/alice?direction=upload"
    await refused(url, "POST", path, {}, HUGE, 401)
    await refused(url, "POST", path, s.bob, HUGE, 403)
    assert "limit" in await refused(url, "POST", path, s.alice, HUGE, 413)
    await refused(url, "POST", "/stream/alice?direction=sideways", s.alice, 10, 400)
    await refused(url, "POST", "/stream/alice?direction=download", s.alice, HUGE, 413)


async def test_stream_upload_invited_when_it_can_succeed(s: Srv) -> None:
    blobs = {f"s{i}": blob(f"s{i}", 1000) for i in range(3)}
    body = encode_upstream_header([(k, len(v)) for k, v in blobs.items()])
    body += b"".join(blobs.values())
    ex, first = await Exchange.start(s.srv.url, "POST", "/stream/alice?direction=upload",
                                     s.alice, len(body))
    try:
        assert first.status == 100
        r = await ex.send(body)
        assert r.status == 200, r.body
        assert r.json() == {"stored": ["s0", "s1", "s2"], "existing": []}
    finally:
        ex.close()


# --- PUT /incoming -----------------------------------------------------------------------


async def test_incoming_refusals_come_before_the_body(s: Srv) -> None:
    url, path = s.srv.local_url, "/incoming/alice/m1"
    await refused(url, "PUT", path, {}, HUGE, 401)
    await refused(url, "PUT", path, s.other_service, HUGE, 403)
    await refused(url, "PUT", path, s.alice, HUGE, 401)  # a user is no service
    await refused(url, "PUT", "/incoming/nobody/m1", s.incoming, HUGE, 404)
    assert "limit" in await refused(url, "PUT", path, s.incoming, HUGE, 413)
    await s.srv.store.put("alice", "default", "b0", _one(blob("b0", 20_000)))
    assert "quota" in await refused(url, "PUT", path, s.incoming, 30_000, 507)


async def test_incoming_invited_when_it_can_succeed(s: Srv) -> None:
    payload = os.urandom(5000)
    ex, first = await Exchange.start(s.srv.local_url, "PUT", "/incoming/alice/m1", s.incoming,
                                     len(payload))
    try:
        assert first.status == 100
        r = await ex.send(payload)
        assert r.status == 200, r.body
        assert r.json()["namespace"] == "MX"
    finally:
        ex.close()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
