"""A client that goes away mid-download, and the bytes the server says it sent.

A disconnect is one INFO line in the server's log, never a traceback nor a warning (nor,
under TLS, asyncio's "SSL connection is closed" once per write). The access log line and
``blobsync_http_sent_bytes`` count the bytes that went out, sendfile(2) GETs included,
and on a cut connection what was sent before the cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from blobsync.format import seal
from tests.helpers.rawhttp import head
from tests.helpers.server_cli import self_signed
from tests.helpers.servers import RunningServer, auth_header, make_user, running_server
from tests.helpers.subproc import ServerProcess, blobsync, new_data_dir

SECRET = os.urandom(128)
# Larger than what loopback's socket buffers hold, so that a client reading only the start
# leaves the server in the middle of the body.
BIG = 12 << 20
BLOB_ROUTE = "/blobs/{uuid}/{blob_id}"
GONE = re.compile(r"INFO blobsync\.server: client went away: (\S+) (\S+)")
ACCESS = re.compile(r"INFO blobsync\.access: (\S+) (\S+) (\d+) (\d+) ")


async def connect(url: str, tls: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    u = URL(url)
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return await asyncio.open_connection(u.host, u.port, ssl=ctx)


async def read_some_and_leave(url: str, raw: bytes, tls: bool, abort: bool) -> int:
    """Send ``raw``, read a little of the answer, go away; return the bytes read."""
    reader, writer = await connect(url, tls)
    writer.write(raw)
    await writer.drain()
    got = len(await reader.readexactly(64 << 10))
    if abort:
        writer.transport.abort()  # RST
    else:
        writer.close()  # FIN (and close_notify under TLS)
    return got


def get_raw(url: str, auth: dict[str, str], blob_id: str) -> bytes:
    return head("GET", url, f"/blobs/alice/{blob_id}", auth)


def stream_raw(url: str, auth: dict[str, str], blob_id: str) -> bytes:
    body = json.dumps([blob_id]).encode()
    return head("POST", url, "/stream/alice?direction=download",
                {**auth, "Content-Length": str(len(body))}) + body


# --- a real server process: its whole stderr -----------------------------------------------


@pytest.fixture(params=["http", "https"])
def proc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    data = new_data_dir(tmp_path / "d")
    added = blobsync("user", "add", "alice", "--data", data)
    assert added.returncode == 0, added.stderr
    args = ["--data", data, "--port", "0", "--local-port", "0"]
    if request.param == "https":
        cert, key = self_signed(tmp_path)
        args += ["--tls-cert", cert, "--tls-key", key]
    server = ServerProcess(*args)
    try:
        yield server, added.stdout.strip()
    finally:
        server.terminate()


@pytest.mark.parametrize("abort", [False, True], ids=["fin", "rst"])
async def test_client_gone_is_one_info_line(proc: tuple[ServerProcess, str], abort: bool
                                            ) -> None:
    server, token = proc
    tls = server.url.startswith("https")
    auth = auth_header("alice", token)
    blob = seal(SECRET, "big", os.urandom(BIG))
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{server.url}/blobs/alice/big", data=blob, headers=auth,
                         ssl=ctx if tls else None) as r:
            assert r.status == 200, await r.text()
    for raw, line in ((get_raw(server.url, auth, "big"), "GET /blobs/alice/big"),
                      (stream_raw(server.url, auth, "big"), "POST /stream/alice")):
        await read_some_and_leave(server.url, raw, tls, abort)
        # In a thread: the loop must run for the socket to close.
        await asyncio.to_thread(server.wait_for_log, f"access: {line} ")
    log = server.log
    assert "Traceback" not in log, log
    assert "WARNING" not in log and "ERROR" not in log, log
    gone = GONE.findall(log)
    assert gone == [("GET", "/blobs/alice/big"), ("POST", "/stream/alice")], log


# --- an in-process server: the access log and /metrics ------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def access(self, request_line: str) -> list[int]:
        """The byte counts of the access lines of ``request_line``."""
        return [int(m.group(4)) for line in self.lines
                if (m := ACCESS.match(line)) and f"{m.group(1)} {m.group(2)}" == request_line]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path) as s:  # SQLite and files: large blobs are files
        yield s


async def sent_metric(srv: RunningServer) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{srv.local_url}/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "blobsync_http_sent_bytes_total"
                    and sample.labels.get("route") == BLOB_ROUTE):
                return sample.value
    return 0.0


async def until(predicate: object, what: str) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_sendfile_get_counts_its_body(srv: RunningServer, lines: Lines) -> None:
    token = await make_user(srv.store, "alice")
    auth = auth_header("alice", token)
    blob = seal(SECRET, "b1", os.urandom(3 << 20))
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{srv.url}/blobs/alice/b1", data=blob, headers=auth) as r:
            assert r.status == 200
    info = await srv.store.index.get_blob("alice", "default", "b1")
    assert info is not None and srv.store.payloads.file_path(info.location) is not None  # type: ignore[attr-defined]
    before = await sent_metric(srv)
    reader, writer = await connect(srv.url, False)
    try:
        writer.write(get_raw(srv.url, auth, "b1"))
        await writer.drain()
        headers = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(len(blob))
    finally:
        writer.close()
    assert body == blob
    await until(lambda: lines.access("GET /blobs/alice/b1"), "no access line")
    assert lines.access("GET /blobs/alice/b1") == [len(headers) + len(blob)]
    assert await sent_metric(srv) - before == len(headers) + len(blob)


async def test_cut_sendfile_get_counts_what_was_sent(srv: RunningServer, lines: Lines
                                                     ) -> None:
    token = await make_user(srv.store, "alice")
    auth = auth_header("alice", token)
    blob = seal(SECRET, "big", os.urandom(BIG))
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{srv.url}/blobs/alice/big", data=blob, headers=auth) as r:
            assert r.status == 200
    before = await sent_metric(srv)
    got = await read_some_and_leave(srv.url, get_raw(srv.url, auth, "big"), False, True)
    await until(lambda: lines.access("GET /blobs/alice/big"), "no access line")
    [logged] = lines.access("GET /blobs/alice/big")
    # The server sent at least what the client read, and less than the whole answer.
    assert got <= logged < len(blob)
    assert await sent_metric(srv) - before == logged
    # The disconnect line tells the same body bytes.
    [gone] = [line for line in lines.lines if "client went away" in line]
    body_sent = int(re.search(r"after (\d+) of", gone).group(1))  # type: ignore[union-attr]
    assert 0 < body_sent < logged and logged - body_sent < 1024  # the rest: headers
