"""A loopback TCP proxy in front of the real server, to cut connections on purpose.

It forwards real bytes both ways (no HTTP is faked); tests use it to drop a download after
some bytes, and to see what the client asked for (Range headers, how many stream requests).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Proxy:
    upstream_host: str
    upstream_port: int
    # Cut each of the next len(cuts) connections whose request matches ``cut_match`` after
    # that many bytes of the server's answer.
    cuts: list[int] = field(default_factory=list)
    cut_match: bytes = b""
    requests: list[bytes] = field(default_factory=list)  # first bytes of each request
    downstream_bytes: list[int] = field(default_factory=list)  # per connection
    url: str = ""
    _server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def request_lines(self) -> list[str]:
        """The request line of every request seen (one per connection's first request)."""
        return [r.split(b"\r\n", 1)[0].decode("latin-1") for r in self.requests]

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            cw.close()
            return
        index = len(self.downstream_bytes)
        self.downstream_bytes.append(0)
        state: dict[str, int | None] = {"cut": None}

        async def up() -> None:
            while data := await cr.read(65536):
                # Requests on a kept-alive connection show up in later reads: record every
                # chunk that starts like a request line.
                if data[:4] in (b"GET ", b"POST", b"PUT ", b"DELE"):
                    self.requests.append(data[:4096])
                    if state["cut"] is None and self.cuts and self.cut_match in data[:4096]:
                        state["cut"] = self.cuts.pop(0)
                uw.write(data)
                await uw.drain()
            with contextlib.suppress(OSError):
                uw.write_eof()

        async def down() -> None:
            sent = 0
            while data := await ur.read(65536):
                limit = state["cut"]
                if limit is not None and sent + len(data) >= limit:
                    cw.write(data[: max(0, limit - sent)])
                    with contextlib.suppress(OSError):
                        await cw.drain()
                    self.downstream_bytes[index] += max(0, limit - sent)
                    cw.transport.abort()  # type: ignore[union-attr]
                    uw.transport.abort()  # type: ignore[union-attr]
                    return
                sent += len(data)
                self.downstream_bytes[index] += len(data)
                cw.write(data)
                await cw.drain()
            cw.close()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for t in tasks:
                t.cancel()
            cw.close()
            uw.close()


@contextlib.asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 80)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
