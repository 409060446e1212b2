"""Hostile and broken requests against a real server on loopback, mostly over raw sockets.

The rule: bad input gets the status SPEC 4 names with a JSON ``{"error": "<string>"}`` body,
never a 500 and never a traceback; a dropped connection leaves every blob complete or
absent; and nothing a client sends (token, Authorization value, body bytes) reaches the logs.

One documented exception: framing errors that aiohttp's HTTP parser catches before the
application runs (a garbled method, a header line over 8190 bytes, a bad Content-Length...)
get aiohttp's own plain-text 400 (docs/server.md, Statuses); ``parser_400`` checks those.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from blobsync.format import encode_frame, encode_upstream_header, seal
from blobsync.server.metrics import StoreMetrics
from blobsync.server.storage.sqlitepayloads import INLINE_MAX
from tests.helpers.rawhttp import RawResponse, head, open_raw, read_response
from tests.helpers.servers import RunningServer, auth_header, make_user, start_server

SECRET = os.urandom(128)
# Users are u1, u2...; their other user (valid credentials, wrong account) is u1-bob...
_SEQ = itertools.count(1)
# Servers by name; "tiny" refuses blobs so small that a test sends all of an over-size body
# (the server reads it all, so closing does not reset the connection under the answer).
LIMITS: dict[str, dict[str, int]] = {
    "plain": {},
    "limited": {"max_blob_size": 1 << 20, "max_stream_size": 1 << 21},
    "tiny": {"max_blob_size": 4096},
}

pytestmark = pytest.mark.asyncio(loop_scope="module")
TIMEOUT = 10

# --- plumbing ---------------------------------------------------------------------------


class _Records(logging.Handler):
    """Every record logged while a test runs, formatted with its traceback if any."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.lines.append(text)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Hostile:
    """A server, a user on it, raw HTTP, and the log records of the test."""

    srv: RunningServer
    user: str  # a fresh user per test: the server is shared by the whole module
    token: str
    other_token: str  # bob's: valid credentials of another user
    records: _Records
    # Strings that must never appear in the logs: credentials, and body markers.
    secrets: list[str] = field(default_factory=list)
    logs_checked: bool = False

    @property
    def auth(self) -> dict[str, str]:
        return auth_header(self.user, self.token)

    async def send(self, raw: bytes) -> RawResponse:
        """Write ``raw`` on a fresh connection and read one response."""
        reader, writer = await open_raw(self.srv.url)
        try:
            writer.write(raw)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()

    async def req(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        auth: bool = True,
    ) -> RawResponse:
        """One request with the user's credentials (unless ``auth=False``) and a correct
        Content-Length for any body."""
        hdrs = dict(self.auth) if auth else {}
        if body or method in ("PUT", "POST"):
            hdrs["Content-Length"] = str(len(body))
        hdrs.update(headers or {})
        return await self.send(head(method, self.srv.url, path, hdrs) + body)

    async def put(self, blob_id: str, plaintext_size: int = 300) -> bytes:
        """Store a real sealed blob; return its bytes."""
        blob = seal(SECRET, blob_id, os.urandom(plaintext_size))
        r = await self.req("PUT", f"/blobs/{self.user}/{blob_id}", blob)
        assert r.status == 200, r.body
        return blob

    async def get_status(self, blob_id: str) -> int:
        return (await self.req("GET", f"/blobs/{self.user}/{blob_id}")).status

    async def blob(self, blob_id: str) -> bytes | None:
        r = await self.req("GET", f"/blobs/{self.user}/{blob_id}")
        if r.status == 404:
            return None
        assert r.status == 200, r.body
        return r.body

    def temp_files(self) -> list[Path]:
        tmp = Path(self.srv.config.data) / "blobs" / ".tmp"
        return [p for p in tmp.rglob("*") if p.is_file()] if tmp.exists() else []

    def assert_logs_clean(self) -> None:
        self.logs_checked = True
        text = self.records.text
        for secret in self.secrets:
            assert secret not in text, f"{secret[:12]}... reached the server log"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[dict[str, RunningServer]]:
    """The servers of LIMITS, shared by the module's tests (each test has its own user)."""
    started: dict[str, RunningServer] = {}
    try:
        for name, limits in LIMITS.items():
            started[name] = await start_server(tmp_path_factory.mktemp(name), **limits)
        yield started
    finally:
        for srv in started.values():
            await srv.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def h(servers: dict[str, RunningServer], request: pytest.FixtureRequest
            ) -> AsyncIterator[Hostile]:
    """A fresh user (and its bob, another user) on the plain server, or on another server of
    LIMITS when the test is parametrized indirectly with its name."""
    srv = servers[getattr(request, "param", "plain")]
    user = f"u{next(_SEQ)}"
    records = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    try:
        token = await make_user(srv.store, user)
        other = await make_user(srv.store, f"{user}-bob")
        hostile = Hostile(srv, user, token, other, records)
        for name, tok in ((user, token), (f"{user}-bob", other)):
            hostile.secrets += [tok, auth_header(name, tok)["Authorization"].split()[1]]
        yield hostile
    finally:
        root.removeHandler(records)
        root.setLevel(old_level)
    if not hostile.logs_checked:
        hostile.assert_logs_clean()


def json_error(r: RawResponse, status: int) -> dict[str, Any]:
    """The answer is ``status`` with a JSON ``{"error": "<string>"}`` body."""
    assert b"Traceback" not in r.body, r.body
    assert r.status == status, (r.status, r.body)
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    doc = json.loads(r.body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc
    return doc


def parser_400(r: RawResponse) -> None:
    """aiohttp's parser refused the request before the application ran (documented)."""
    assert b"Traceback" not in r.body, r.body
    assert r.status == 400, (r.status, r.body)
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until the server has settled; a deadline only so a bug cannot hang the suite."""
    async with asyncio.timeout(TIMEOUT):
        while not await predicate():
            await asyncio.sleep(0.02)
    assert await predicate(), what


# --- methods, framing, headers ----------------------------------------------------------


@pytest.mark.parametrize("method", ["PATCH", "OPTIONS", "TRACE", "PROPFIND"])
async def test_method_the_route_lacks_is_405_with_allow(h: Hostile, method: str) -> None:
    r = await h.req(method, f"/blobs/{h.user}/b1")
    json_error(r, 405)
    assert set(r.headers["allow"].split(",")) == {"GET", "PUT", "POST", "DELETE"}


async def test_head_is_405(h: Hostile) -> None:
    reader, writer = await open_raw(h.srv.url)
    writer.write(head("HEAD", h.srv.url, f"/blobs/{h.user}/b1", h.auth))
    async with asyncio.timeout(TIMEOUT):
        status = await reader.readline()
    writer.close()
    assert status.split()[1] == b"405"


@pytest.mark.parametrize(
    "request_line",
    [b"G@T /blobs/alice HTTP/1.1", b"FOO /blobs/alice HTTP/1.1", b"GET /blobs/alice HTTP/9.9x",
     b"GET /blobs/alice/caf\xc3\xa9 HTTP/1.1", b"GET /blobs/alice/a b HTTP/1.1",
     b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],  # a TLS ClientHello on the HTTP port
    ids=["bad-token", "unknown-method", "bad-version", "raw-utf8-path", "space-in-path", "tls"],
)

async def test_garbled_request_line_is_parser_400(h: Hostile, request_line: bytes) -> None:
    parser_400(await h.send(request_line + b"\r\nHost: x\r\n\r\n"))


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * 20000,
        b"".join(b"X-H%d: v\r\n" % i for i in range(300)).rstrip(b"\r\n"),
        b"Content-Length: -1",
        b"Content-Length: 1.5",
        b"Content-Length: " + str(2**70).encode(),
        b"Content-Length: 5\r\nContent-Length: 6",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked",
        b"X-Ctl: a\x01b",
    ],
    ids=["huge-header", "many-headers", "negative-length", "float-length", "2**70-length",
         "two-lengths", "length-and-chunked", "control-char"],
)
async def test_broken_headers_are_parser_400(h: Hostile, extra: bytes) -> None:
    raw = head("PUT", h.srv.url, f"/blobs/{h.user}/b1", h.auth)[:-2] + extra + b"\r\n\r\n"
    parser_400(await h.send(raw + b"123456"))
    assert await h.get_status("b1") == 404


async def test_huge_url_is_parser_400(h: Hostile) -> None:
    parser_400(await h.req("GET", f"/blobs/{h.user}?namespace=" + "a" * 10000))


async def test_garbled_chunked_body_is_400(h: Hostile) -> None:
    raw = head("PUT", h.srv.url, f"/blobs/{h.user}/b1", {**h.auth, "Transfer-Encoding": "chunked"})
    r = await h.send(raw + b"zz\r\nabc\r\n0\r\n\r\n")
    assert r.status == 400 and b"Traceback" not in r.body
    assert await h.get_status("b1") == 404


# --- credentials --------------------------------------------------------------------------


BAD_AUTH: dict[str, bytes | None] = {
    "absent": None,
    "empty": b"",
    "blank": b"   ",
    "scheme-only": b"Token",
    "basic": b"Basic " + b64(b"alice:x").encode(),
    "not-base64": b"Token !!!not*base64!!!",
    "base64-no-colon": b"Token " + b64(b"alicetoken").encode(),
    "base64-empty-token": b"Token " + b64(b"alice:").encode(),
    "base64-empty-name": b"Token " + b64(b":token").encode(),
    "base64-not-utf8": b"Token " + b64(b"alice:\xff\xfe").encode(),
    "unicode-name": b"Token " + b64("al\u00efce:tok".encode()).encode(),
    "nul-in-name": b"Token " + b64(b"alice\x00:tok").encode(),
    "raw-utf8": "Token \u00e9t\u00e9".encode(),
    "raw-latin1": b"Token \xff\xfe",
    "unknown-user": b"Token " + b64(b"mallory:tok").encode(),
    "huge": b"Token " + b"A" * 4000,
}


@pytest.mark.parametrize("value", list(BAD_AUTH.values()), ids=list(BAD_AUTH))
async def test_bad_credentials_are_401(h: Hostile, value: bytes | None) -> None:
    await h.put("b1")
    for method, path in (("GET", f"/blobs/{h.user}"), ("GET", f"/blobs/{h.user}/b1"),
                         ("PUT", f"/blobs/{h.user}/b2"), ("POST", f"/blobs/{h.user}/b1"),
                         ("DELETE", f"/blobs/{h.user}/b1"),
                         ("POST", f"/stream/{h.user}?direction=download"),
                         ("POST", f"/stream/{h.user}?direction=upload")):
        raw = head(method, h.srv.url, path, {"Content-Length": "2"})
        if value is not None:
            raw = raw[:-2] + b"Authorization: " + value + b"\r\n\r\n"
        r = await h.send(raw + b"[]")
        json_error(r, 401)
        assert r.headers.get("www-authenticate") == "Token"
    assert await h.get_status("b1") == 200 and await h.get_status("b2") == 404


async def test_wrong_token_is_401(h: Hostile) -> None:
    wrong = auth_header(h.user, h.other_token)
    r = await h.req("GET", f"/blobs/{h.user}", headers=wrong, auth=False)
    json_error(r, 401)


async def test_another_users_credentials_are_403(h: Hostile) -> None:
    blob = await h.put("b1")
    bob = auth_header(f"{h.user}-bob", h.other_token)
    for method, path, body in (("GET", f"/blobs/{h.user}", b""),
                               ("GET", f"/blobs/{h.user}/b1", b""),
                               ("PUT", f"/blobs/{h.user}/b2", blob),
                               ("POST", f"/blobs/{h.user}/b1", b'["FAILED"]'),
                               ("DELETE", f"/blobs/{h.user}/b1", b""),
                               ("POST", f"/stream/{h.user}?direction=download", b'["b1"]')):
        json_error(await h.req(method, path, body, headers=bob, auth=False), 403)
    assert await h.blob("b1") == blob and await h.get_status("b2") == 404
    assert (await h.req("GET", f"/blobs/{h.user}/b1?only_flags=true")).json() == []


@pytest.mark.parametrize("junk", [b"\x00", b"\x01", b"\x7f"])
async def test_unparsable_credentials_do_not_reach_the_log(h: Hostile, junk: bytes) -> None:
    """A genuine Authorization header spoiled by one control byte (a client's bug)."""
    value = h.auth["Authorization"].encode() + junk
    raw = head("GET", h.srv.url, f"/blobs/{h.user}", {})[:-2] + b"Authorization: " + value
    parser_400(await h.send(raw + b"\r\n\r\n"))
    h.assert_logs_clean()


# --- names ----------------------------------------------------------------------------------


BAD_IDS = {
    "unicode": "caf%C3%A9",
    "zero-width": "a%E2%80%8Bb",
    "half-utf8": "a%C3",
    "space": "a%20b",
    "tab": "a%09b",
    "newline": "a%0Ab",
    "trailing-newline": "ab%0A",
    "plus": "a+b",
    "dot": "a.b",
    "percent-zz": "a%zz",
    "lone-percent": "a%",
    "255-chars": "a" * 255,
    "dotdot": "%2e%2e",
    "encoded-slash": "a%2Fb",
    "encoded-backslash": "a%5Cb",
    "nul": "a%00",
}


@pytest.mark.parametrize("blob_id", list(BAD_IDS.values()), ids=list(BAD_IDS))
async def test_bad_blob_ids_are_400(h: Hostile, blob_id: str) -> None:
    for method, body in (("GET", b""), ("PUT", b"x" * 800), ("POST", b'["PENDING"]'),
                         ("DELETE", b"")):
        json_error(await h.req(method, f"/blobs/{h.user}/{blob_id}", body), 400)
    assert (await h.req("GET", f"/blobs/{h.user}")).json() == []


@pytest.mark.parametrize("uuid", list(BAD_IDS.values()), ids=list(BAD_IDS))
async def test_bad_uuids_are_400(h: Hostile, uuid: str) -> None:
    json_error(await h.req("GET", f"/blobs/{uuid}"), 400)
    json_error(await h.req("POST", f"/stream/{uuid}?direction=download", b"[]"), 400)


async def test_longest_ids_are_fine(h: Hostile) -> None:
    longest = "b" * 254
    await h.put(longest)
    r = await h.req("GET", f"/blobs/{h.user}?namespace=" + "n" * 254)
    assert r.status == 200 and json.loads(r.body) == []
    assert await h.get_status(longest) == 200


@pytest.mark.parametrize(
    "query",
    ["namespace=../default", "namespace=a/b", "namespace=default%00", "namespace=",
     "namespace", "namespace=%zz", "namespace=%ff", "namespace=caf%C3%A9",
     "namespace=default&namespace=MX", "namespace=" + "n" * 255, "namespace=%2e%2e",
     "namespace=default%0A"],
)
async def test_namespace_injection_is_400(h: Hostile, query: str) -> None:
    await h.put("b1")
    for method, path, body in (("GET", f"/blobs/{h.user}", b""),
                               ("GET", f"/blobs/{h.user}/b1", b""),
                               ("PUT", f"/blobs/{h.user}/b2", b"x"),
                               ("POST", f"/blobs/{h.user}/b1", b"[]"),
                               ("DELETE", f"/blobs/{h.user}/b1", b""),
                               ("POST", f"/stream/{h.user}?direction=download", b'["b1"]')):
        sep = "&" if "?" in path else "?"
        json_error(await h.req(method, f"{path}{sep}{query}", body), 400)
    assert await h.get_status("b1") == 200  # the DELETE did not reach any namespace


@pytest.mark.parametrize(
    "query,status",
    [("limit=0", 400), ("limit=-1", 400), ("limit=", 400), ("limit=1e3", 400),
     ("limit=0x10", 400), ("limit=9999999999999", 400), ("limit=1&limit=2", 400),
     ("order_by=sideways", 400), ("order_by=date&order_by=-date", 400),
     ("only_count=maybe", 400), ("deleted=2", 400),
     ("deleted=true&filter_flag=PENDING", 400), ("filter_flag=BOGUS", 406),
     ("filter_flag=pending", 406), ("filter_flag=%00", 406)],
)
async def test_bad_listing_parameters(h: Hostile, query: str, status: int) -> None:
    json_error(await h.req("GET", f"/blobs/{h.user}?{query}"), status)


@pytest.mark.parametrize("digit", ["%C2%B2", "%E2%91%A0", "%EF%BC%91"],
                         ids=["superscript-2", "circled-1", "fullwidth-1"])
async def test_limit_with_unicode_digit_is_400(h: Hostile, digit: str) -> None:
    json_error(await h.req("GET", f"/blobs/{h.user}?limit={digit}"), 400)


async def test_unknown_paths_are_json_404(h: Hostile) -> None:
    for path in ("/blobs//alice", f"/blobs/{h.user}/", f"/blobs/{h.user}/b1/", "/nope",
                 "/incoming/alice/b1", "/blobs/alice/b1/extra"):
        json_error(await h.req("GET", path), 404)


async def test_bodies_queries_and_headers_never_reach_the_log(h: Hostile) -> None:
    marker = "MARK" + os.urandom(8).hex()
    h.secrets.append(marker)
    m = marker.encode()
    await h.put("b1")
    for method, path, body, status in (
        ("PUT", f"/blobs/{h.user}/b2", m * 50, 400),
        ("PUT", f"/blobs/{h.user}/b2", b"A" * 736 + b" " + m, 400),
        ("POST", f"/blobs/{h.user}/b1", json.dumps([marker]).encode(), 406),
        ("POST", f"/blobs/{h.user}/b1", m, 400),
        ("POST", f"/blobs/{h.user}/b1", b'["PENDING", ' + m + b"]", 400),
        ("POST", f"/stream/{h.user}?direction=download", m, 400),
        ("POST", f"/stream/{h.user}?direction=upload", m + b"\n", 400),
        ("POST", f"/stream/{h.user}?direction=upload", b'[["u1", 900]]\n' + m * 30, 400),
        ("GET", f"/blobs/{h.user}?namespace={marker}&order_by={marker}", b"", 400),
        ("GET", f"/blobs/{h.user}?filter_flag={marker}", b"", 406),
        ("GET", f"/blobs/{h.user}/b1?only_flags={marker}", b"", 400),
        ("POST", f"/stream/{h.user}?direction={marker}", b"[]", 400),
    ):
        r = await h.req(method, path, body, headers={"X-Note": marker, "Cookie": f"c={marker}"})
        json_error(r, status)
    r = await h.req("GET", f"/blobs/{h.user}/b1", headers={"Range": f"bytes={marker}"})
    json_error(r, 416)
    h.assert_logs_clean()


# --- ranges ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def ranged(h: Hostile) -> tuple[Hostile, bytes]:
    return h, await h.put("r1", 1000)


async def ranged_get(h: Hostile, value: bytes) -> RawResponse:
    raw = head("GET", h.srv.url, f"/blobs/{h.user}/r1", h.auth)[:-2]
    return await h.send(raw + b"Range: " + value + b"\r\n\r\n")


@pytest.mark.parametrize(
    "value",
    [b"bytes=5-2", b"bytes=-0", b"bytes=0-1,3-4", b"bytes=0-1, 0-1", b"bytes=", b"bytes=-",
     b"bytes=a-b", b"bytes=0x10-", b"bytes=1-2-3", b"bytes=--1", b"bytes=1753-",
     b"bytes=99999999999999999999-", b"bytes=999999999999999999999-", b"bytes=\xc2\xb2-"],
)
async def test_unsatisfiable_ranges_are_416(ranged: tuple[Hostile, bytes], value: bytes
                                            ) -> None:
    h, blob = ranged
    r = await ranged_get(h, value)
    json_error(r, 416)
    assert r.headers["content-range"] == f"bytes */{len(blob)}"


@pytest.mark.parametrize(
    "value,start,end",
    [(b"bytes=0-", 0, None), (b"bytes=1-1", 1, 1), (b"bytes=-1", -1, None),
     (b"bytes=-99999999999", 0, None), (b"bytes=0-99999999999999999999", 0, None),
     (b"bytes=100-199", 100, 199), (b"BYTES=3-4", 3, 4)],
)
async def test_satisfiable_ranges_are_206(ranged: tuple[Hostile, bytes], value: bytes,
                                          start: int, end: int | None) -> None:
    h, blob = ranged
    r = await ranged_get(h, value)
    assert r.status == 206, r.body
    first = start % len(blob)
    last = len(blob) - 1 if end is None else end
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(blob)}"
    assert r.body == blob[first:last + 1]


@pytest.mark.parametrize("value", [b"items=0-1", b"0-1", b"bits=0-"])
async def test_ranges_of_other_units_are_ignored(ranged: tuple[Hostile, bytes], value: bytes
                                                 ) -> None:
    h, blob = ranged
    r = await ranged_get(h, value)
    assert r.status == 200 and r.body == blob


async def test_range_of_non_ascii_digits_is_416(ranged: tuple[Hostile, bytes]) -> None:
    h, blob = ranged
    json_error(await ranged_get(h, "bytes=\u0660-\u0665".encode()), 416)  # Arabic-Indic 0-5


# --- JSON bodies ----------------------------------------------------------------------------

NOT_A_FLAG_LIST = {
    "not-json": b"PENDING",
    "truncated": b'["PENDING"',
    "not-utf8": b"\xff\xfe[]",
    "empty": b"",
    "dict": b'{"flags": ["PENDING"]}',
    "nested": b'[["PENDING"]]',
    "number": b"42",
    "huge-number": b"1" * 4000,
    "null": b"null",
    "string": b'"PENDING"',
    "list-of-numbers": b"[1, 2]",
    "list-with-null": b'["PENDING", null]',
    "nan": b"NaN",
    "true": b"true",
}


@pytest.mark.parametrize("body", list(NOT_A_FLAG_LIST.values()), ids=list(NOT_A_FLAG_LIST))
async def test_flags_body_of_wrong_shape_is_400(h: Hostile, body: bytes) -> None:
    await h.put("b1")
    json_error(await h.req("POST", f"/blobs/{h.user}/b1", body), 400)


# Deeper than Python's recursion limit, yet under the 4 KiB bound of a flags body.
DEEP = {
    "lists": b"[" * 2000 + b"]" * 2000,
    "lists-and-dicts": b'[{"":' * 550 + b"1" + b"}]" * 550,
}


@pytest.mark.parametrize("body", list(DEEP.values()), ids=list(DEEP))
async def test_flags_body_nested_deep_is_400(h: Hostile, body: bytes) -> None:
    await h.put("b1")
    json_error(await h.req("POST", f"/blobs/{h.user}/b1", body), 400)


@pytest.mark.parametrize(
    "body,status",
    [(b'["BOGUS"]', 406), (b'["pending"]', 406), (b'["PENDING", "\\u00e9"]', 406),
     (b'["' + b"P" * 5000 + b'"]', 413), (b"[" + b" " * 5000 + b"]", 413)],
)
async def test_flags_body_refusals(h: Hostile, body: bytes, status: int) -> None:
    await h.put("b1")
    json_error(await h.req("POST", f"/blobs/{h.user}/b1", body), status)
    r = await h.req("GET", f"/blobs/{h.user}/b1?only_flags=true")
    assert json.loads(r.body) == []


async def test_flags_body_declared_too_large_is_413_unread(h: Hostile) -> None:
    raw = head("POST", h.srv.url, f"/blobs/{h.user}/b1", {**h.auth, "Content-Length": "999999999"})
    json_error(await h.send(raw), 413)  # answered without sending a byte of the body


NOT_AN_ID_LIST = {
    **{k: v for k, v in NOT_A_FLAG_LIST.items() if k not in ("list-with-null", "empty")},
    "empty": b"",
    "list-with-null": b'["b1", null]',
    "invalid-id": b'["b1", "../b1"]',
    "unicode-id": '["caf\u00e9"]'.encode(),
    "huge-number": b"[" + b"1" * 5000 + b"]",
}


@pytest.mark.parametrize("body", list(NOT_AN_ID_LIST.values()), ids=list(NOT_AN_ID_LIST))
async def test_stream_download_body_of_wrong_shape_is_400(h: Hostile, body: bytes) -> None:
    await h.put("b1")
    json_error(await h.req("POST", f"/stream/{h.user}?direction=download", body), 400)


@pytest.mark.parametrize("body", list(DEEP.values()), ids=list(DEEP))
async def test_stream_download_body_nested_deep_is_400(h: Hostile, body: bytes) -> None:
    json_error(await h.req("POST", f"/stream/{h.user}?direction=download", body), 400)


async def test_stream_download_refusals(h: Hostile) -> None:
    await h.put("b1")
    path = f"/stream/{h.user}?direction=download"
    doc = json_error(await h.req("POST", path, b'["b1", "b2", "b2"]'), 404)
    assert doc["missing"] == ["b2"]
    raw = head("POST", h.srv.url, path, {**h.auth, "Content-Length": str(2 << 20)})
    json_error(await h.send(raw), 413)
    for direction in ("", "sideways", "DOWNLOAD", "download&direction=upload"):
        json_error(await h.req("POST", f"/stream/{h.user}?direction={direction}", b"[]"), 400)
    json_error(await h.req("POST", f"/stream/{h.user}", b"[]"), 400)


# --- stream uploads whose header lies -------------------------------------------------------


def upstream(items: list[tuple[str, Any]], payload: bytes) -> bytes:
    return json.dumps([list(i) for i in items]).encode() + b"\n" + payload


@pytest.mark.parametrize(
    "size", [-1, 1.5, 1e3, "10", True, None, [1], {"n": 1}], ids=repr,
)
async def test_upload_header_size_of_wrong_type_is_400(h: Hostile, size: Any) -> None:
    body = upstream([("u1", size)], b"x" * 10)
    doc = json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", body), 400)
    assert doc.get("stored", []) == []
    assert await h.get_status("u1") == 404


@pytest.mark.parametrize(
    "header",
    [b"", b"\n", b"{}\n", b"null\n", b"[1]\n", b'[["u1"]]\n', b'[["u1", 1, 2]]\n',
     b'[[1, 1]]\n', b'[["../u1", 1]]\n', b'[["u1", 1], ["u1", 1]]\n', b"[\n",
     b"\xff\xfe\n", b'[["u1", ' + b"1" * 5000 + b"]]\n"],
)
async def test_upload_header_malformed_is_400(h: Hostile, header: bytes) -> None:
    doc = json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", header + b"x"), 400)
    assert doc.get("stored", []) == []


@pytest.mark.parametrize("body", list(DEEP.values()), ids=list(DEEP))
async def test_upload_header_nested_deep_is_400(h: Hostile, body: bytes) -> None:
    json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", body + b"\n"), 400)


async def test_upload_header_over_its_bound_is_413(h: Hostile) -> None:
    # Only a few bytes past the bound, all of which the server reads: closing on unread
    # bytes would reset the connection and could lose the answer.
    body = b"[" + b" " * (1 << 20) + b"]\n"
    json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", body), 413)


async def test_upload_size_of_2_70_without_limits_is_400_cut_short(h: Hostile) -> None:
    body = upstream([("u1", 2**70)], b"x" * 100)
    doc = json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", body), 400)
    assert doc["blob_id"] == "u1" and doc["stored"] == []


@pytest.mark.parametrize("h", ["limited"], indirect=True)
@pytest.mark.parametrize("sizes", [[2**70], [2**63], [(1 << 20) + 1], [1 << 20, 1 << 20, 1]],
                         ids=["2**70", "2**63", "blob-limit+1", "stream-limit+1"])
async def test_upload_sizes_over_limits_are_413_before_the_body(h: Hostile, sizes: list[int]
                                                                ) -> None:
    header = upstream([(f"u{i}", s) for i, s in enumerate(sizes)], b"")
    # The body is declared but never sent: the answer must come from the header alone.
    raw = head("POST", h.srv.url, f"/stream/{h.user}?direction=upload",
               {**h.auth, "Transfer-Encoding": "chunked"})
    r = await h.send(raw + b"%x\r\n" % len(header) + header + b"\r\n")
    json_error(r, 413)
    assert await h.get_status("u0") == 404


async def test_upload_blob_shorter_than_declared_keeps_those_before(h: Hostile) -> None:
    s1 = seal(SECRET, "s1", os.urandom(500))
    s2 = seal(SECRET, "s2", os.urandom(500))
    body = upstream([("s1", len(s1)), ("s2", len(s2) + 10)], s1 + s2 + b"12345")
    doc = json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", body), 400)
    assert (doc["blob_id"], doc["stored"], doc["existing"]) == ("s2", ["s1"], [])
    assert await h.blob("s1") == s1
    assert await h.blob("s2") is None


async def test_upload_size_cutting_into_the_head_is_400(h: Hostile) -> None:
    s1 = seal(SECRET, "s1", os.urandom(500))
    body = upstream([("s1", 100)], s1)
    doc = json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", body), 400)
    assert (doc["blob_id"], doc["stored"]) == ("s1", [])
    assert await h.blob("s1") is None


async def test_upload_trailing_garbage_is_400_keeping_the_blobs(h: Hostile) -> None:
    s1 = seal(SECRET, "s1", os.urandom(500))
    body = upstream([("s1", len(s1))], s1 + b"garbage")
    doc = json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", body), 400)
    assert doc["stored"] == ["s1"]
    assert await h.blob("s1") == s1


async def test_upload_blob_naming_another_id_is_400(h: Hostile) -> None:
    s1 = seal(SECRET, "s1", os.urandom(500))
    other = seal(SECRET, "zz", os.urandom(500))
    body = upstream([("s1", len(s1)), ("s2", len(other))], s1 + other)
    doc = json_error(await h.req("POST", f"/stream/{h.user}?direction=upload", body), 400)
    assert (doc["blob_id"], doc["stored"]) == ("s2", ["s1"])
    assert await h.blob("s2") is None


async def test_upload_over_an_existing_blob_keeps_the_stored_one(h: Hostile) -> None:
    kept = await h.put("s1")
    s1 = seal(SECRET, "s1", os.urandom(500))
    body = upstream([("s1", len(s1))], s1)
    r = await h.req("POST", f"/stream/{h.user}?direction=upload", body)
    assert r.status == 200 and r.json() == {"stored": [], "existing": ["s1"]}
    assert await h.blob("s1") == kept


# --- PUT bodies that lie --------------------------------------------------------------------


async def test_put_body_that_is_not_sealed_is_400_and_not_logged(h: Hostile) -> None:
    marker = "BODY-" + os.urandom(8).hex()
    h.secrets.append(marker)
    for body in (marker.encode(), marker.encode() * 200, b"", b" " + marker.encode()):
        json_error(await h.req("PUT", f"/blobs/{h.user}/b1", body), 400)
    assert await h.get_status("b1") == 404


async def test_put_of_another_ids_blob_is_400(h: Hostile) -> None:
    other = seal(SECRET, "zz", os.urandom(100))
    json_error(await h.req("PUT", f"/blobs/{h.user}/b1", other), 400)
    assert await h.get_status("b1") == 404


@pytest.mark.parametrize("h", ["tiny"], indirect=True)
async def test_put_declared_over_the_limit_is_413_unread(h: Hostile) -> None:
    raw = head("PUT", h.srv.url, f"/blobs/{h.user}/b1", {**h.auth, "Content-Length": str(2**62)})
    json_error(await h.send(raw), 413)


@pytest.mark.parametrize("h", ["tiny"], indirect=True)
async def test_put_chunked_over_the_limit_is_413(h: Hostile) -> None:
    blob = seal(SECRET, "b1", os.urandom(5000))
    raw = head("PUT", h.srv.url, f"/blobs/{h.user}/b1", {**h.auth, "Transfer-Encoding": "chunked"})
    r = await h.send(raw + b"%x\r\n" % len(blob) + blob + b"\r\n0\r\n\r\n")
    json_error(r, 413)
    assert await h.get_status("b1") == 404


# --- dropped connections --------------------------------------------------------------------


async def temp_count(h: Hostile, n: int) -> None:
    """Wait until ``n`` large uploads are in storage's hands (each has its temp file)."""

    async def enough() -> bool:
        return len(h.temp_files()) >= n

    await until(enough, f"{n} uploads never reached storage")


async def handling(h: Hostile, n: int) -> None:
    """Wait until ``n`` requests are in the server's handlers, past their headers.

    Small uploads leave no trace on disk before they commit (the default store buffers
    them for its SQLite tier), so the server's own count of requests in progress tells.
    """
    observer = h.srv.store.observer
    assert isinstance(observer, StoreMetrics)
    registry = observer.metrics.registry

    async def enough() -> bool:
        return (registry.get_sample_value("blobsync_http_requests_in_progress") or 0) >= n

    await until(enough, f"{n} requests never reached their handlers")


async def settled(h: Hostile) -> bool:
    return not h.temp_files()


async def finished(h: Hostile, request_line: str, count: int = 1) -> None:
    """Wait for ``count`` access lines of ``request_line``: those handlers are done."""

    async def logged() -> bool:
        prefix = f"INFO blobsync.access: {request_line} "
        return sum(line.startswith(prefix) for line in h.records.lines) >= count

    await until(logged, f"{request_line} never ended")
    await until(lambda: settled(h), "a cut upload left its temp file")


def let_go(writer: asyncio.StreamWriter, abort: bool) -> None:
    """Drop the connection: RST (abort) or FIN."""
    if abort:
        writer.transport.abort()
    else:
        writer.close()


@pytest.mark.parametrize("abort", [True, False], ids=["rst", "fin"])
@pytest.mark.parametrize("sent", [0, 1, 700, 1000], ids=lambda n: f"{n}B")
async def test_put_dropped_midway_leaves_no_blob(h: Hostile, sent: int, abort: bool) -> None:
    blob = seal(SECRET, "b1", os.urandom(2000))
    _, writer = await open_raw(h.srv.url)
    writer.write(head("PUT", h.srv.url, f"/blobs/{h.user}/b1",
                      {**h.auth, "Content-Length": str(len(blob))}) + blob[:sent])
    await writer.drain()
    await handling(h, 1)
    let_go(writer, abort)
    await finished(h, f"PUT /blobs/{h.user}/b1")
    assert await h.get_status("b1") == 404
    # Nothing half-done blocks the id: the full PUT goes through.
    r = await h.req("PUT", f"/blobs/{h.user}/b1", blob)
    assert r.status == 200, r.body
    assert await h.blob("b1") == blob


@pytest.mark.parametrize("abort", [True, False], ids=["rst", "fin"])
@pytest.mark.parametrize("size", [70_000, 600_000], ids=["batched", "alone"])
async def test_stream_upload_dropped_midway(h: Hostile, abort: bool, size: int) -> None:
    """Small blobs are stored in batches from memory, large ones alone through a temp file
    (blobstore.BATCH_BLOB_MAX lies between the two sizes, and a large one spills to its temp
    file past INLINE_MAX, which half of it passes): a drop mid-blob loses only it."""
    blobs = {f"s{i}": seal(SECRET, f"s{i}", os.urandom(size)) for i in range(3)}
    header = encode_upstream_header([(k, len(v)) for k, v in blobs.items()])
    total = len(header) + sum(len(v) for v in blobs.values())
    _, writer = await open_raw(h.srv.url)
    path = f"/stream/{h.user}?direction=upload"
    writer.write(head("POST", h.srv.url, path, {**h.auth, "Content-Length": str(total)})
                 + header + blobs["s0"])
    await writer.drain()

    async def first_is_in() -> bool:
        return await h.get_status("s0") == 200

    await until(first_is_in, "s0 was never stored")
    writer.write(blobs["s1"][: len(blobs["s1"]) // 2])
    await writer.drain()
    if len(blobs["s1"]) // 2 > INLINE_MAX:
        await temp_count(h, 1)  # s1 is on its way to storage
    let_go(writer, abort)
    await finished(h, f"POST /stream/{h.user}")
    assert await h.blob("s0") == blobs["s0"]
    assert await h.blob("s1") is None and await h.blob("s2") is None
    assert (await h.req("GET", f"/blobs/{h.user}")).json() == ["s0"]


async def test_slowloris_does_not_block_others(h: Hostile) -> None:
    """Connections that never finish their headers or body must not stall anyone else."""
    held = []
    for i in range(20):
        _, writer = await open_raw(h.srv.url)
        raw = head("PUT", h.srv.url, f"/blobs/{h.user}/slow{i}",
                   {**h.auth, "Content-Length": "5000"})
        # Odd ones stop inside their headers, even ones a few bytes into their body.
        writer.write(raw[: 20 + i] if i % 2 else raw + b"\x00" * 10)
        await writer.drain()
        held.append(writer)
    await handling(h, 10)
    await h.put("b1")
    assert (await h.req("GET", "/", auth=False)).status == 200
    for writer in held:
        writer.close()
    for i in range(0, 20, 2):
        await finished(h, f"PUT /blobs/{h.user}/slow{i}")
    assert (await h.req("GET", f"/blobs/{h.user}")).json() == ["b1"]


async def test_slowloris_trickled_body_closed_early(h: Hostile) -> None:
    blob = seal(SECRET, "b1", os.urandom(2000))
    _, writer = await open_raw(h.srv.url)
    writer.write(head("PUT", h.srv.url, f"/blobs/{h.user}/b1",
                      {**h.auth, "Content-Length": str(len(blob))}))
    for i in range(0, 800, 100):
        writer.write(blob[i:i + 100])
        await writer.drain()
        await asyncio.sleep(0)
    await handling(h, 1)
    writer.close()
    await finished(h, f"PUT /blobs/{h.user}/b1")
    assert await h.get_status("b1") == 404


# --- races on one blob ----------------------------------------------------------------------


async def test_racing_puts_store_exactly_one(h: Hostile) -> None:
    blobs = [seal(SECRET, "r1", os.urandom(3000)) for _ in range(8)]
    answers = await asyncio.gather(*(h.req("PUT", f"/blobs/{h.user}/r1", b) for b in blobs))
    assert sorted(r.status for r in answers) == [200] + [409] * 7
    for r in answers:
        if r.status == 409:
            json_error(r, 409)
    winner = next(b for b, r in zip(blobs, answers, strict=True) if r.status == 200)
    assert await h.blob("r1") == winner


async def test_racing_reservations_give_the_blob_once(h: Hostile) -> None:
    await h.put("r1")
    path = f"/blobs/{h.user}/r1"
    assert (await h.req("POST", path, b'["PENDING"]')).status == 200
    answers = await asyncio.gather(
        *(h.req("POST", f"{path}?expect=PENDING", b'["PROCESSING"]') for _ in range(8)))
    assert sorted(r.status for r in answers) == [200] + [412] * 7
    answers = await asyncio.gather(*(h.req("DELETE", path) for _ in range(8)))
    assert sorted(r.status for r in answers) == [200] + [404] * 7
    for r in answers:
        if r.status == 404:
            json_error(r, 404)


# --- deleting while a stream download runs --------------------------------------------------


async def read_body(reader: asyncio.StreamReader, length: int) -> bytes:
    """Up to ``length`` bytes, fewer if the server cuts the connection."""
    out = bytearray()
    async with asyncio.timeout(TIMEOUT):
        while len(out) < length and (chunk := await reader.read(1 << 20)):
            out += chunk
    return bytes(out)


@pytest.mark.parametrize("victim", ["big", "tail"])
async def test_delete_during_stream_download_cuts_or_completes(h: Hostile, victim: str) -> None:
    # The first blob is far larger than the socket buffers, so the server is surely still
    # writing it when the DELETE lands.
    big = seal(SECRET, "big", os.urandom(24 << 20))
    assert (await h.req("PUT", f"/blobs/{h.user}/big", big)).status == 200
    tail = await h.put("tail", 5000)
    expected = encode_frame(big) + encode_frame(tail)
    reader, writer = await open_raw(h.srv.url)
    body = b'["big", "tail"]'
    writer.write(head("POST", h.srv.url, f"/stream/{h.user}?direction=download",
                      {**h.auth, "Content-Length": str(len(body))}) + body)
    await writer.drain()
    async with asyncio.timeout(TIMEOUT):
        head_bytes = await reader.readuntil(b"\r\n\r\n")
        first = await reader.readexactly(1 << 16)
    assert head_bytes.split()[1] == b"200"
    assert f"content-length: {len(expected)}".encode() in head_bytes.lower()
    r = await h.req("DELETE", f"/blobs/{h.user}/{victim}")
    assert r.status == 200, r.body
    got = first + await read_body(reader, len(expected) - len(first))
    writer.close()
    # Cut short or complete, never wrong: the client tells a cut by the Content-Length.
    assert got == expected[: len(got)]
    if victim == "tail":
        assert len(got) < len(expected)  # tail's payload is gone before its frame
    assert await h.get_status(victim) == 404
    assert (await h.req("GET", "/", auth=False)).status == 200
