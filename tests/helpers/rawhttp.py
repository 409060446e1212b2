"""Hand-written HTTP/1.1 for the cases a client library would tidy up or not allow:
raw paths with ``..``, a Content-Length the body never reaches, a body sent in pieces."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from yarl import URL

TIMEOUT = 10


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    u = URL(url)
    return await asyncio.open_connection(u.host, u.port)


def head(method: str, url: str, raw_path: str, headers: dict[str, str]) -> bytes:
    u = URL(url)
    lines = [f"{method} {raw_path} HTTP/1.1", f"Host: {u.host}:{u.port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    async with asyncio.timeout(TIMEOUT):
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length)
    return RawResponse(status, headers, body)


async def raw_request(
    method: str, url: str, raw_path: str, headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """One request on its own connection; ``headers`` go out as given (no Content-Length
    is added)."""
    reader, writer = await open_raw(url)
    try:
        writer.write(head(method, url, raw_path, headers or {}) + body)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()
