"""A loopback TCP relay in front of the real server, to watch and break connections.

It forwards real bytes both ways (nothing is faked) and lets a
test:
- see every request (first bytes, time) and how many connections were open at once,
- cut a connection whose request matches after some bytes of the server's answer (a
  download dropped in the middle), and count the bytes each connection received,
- hold the answer to (or the body of) a matching request after some bytes, until released
  or until the client is killed: a deterministic "in the middle of a transfer",
- hand the answers over in small pieces, as a real network does, and take the requests'
  bodies slowly (``up_pause``), as a slow uplink does,
- drop matching requests without answering (a passing failure the client must retry),
- answer matching requests itself (a 503, say) instead of the server,
- keep every byte the client sent, to search it for secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

METHODS = (b"GET ", b"POST", b"PUT ", b"DELE", b"HEAD")


@dataclass
class Seen:
    conn: int
    head: bytes  # first bytes of the request (request line, headers, start of the body)
    at: float  # time.monotonic() when it arrived

    @property
    def line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    def header(self, name: str) -> str | None:
        for raw in self.head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            k, _, v = raw.decode("latin-1").partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None


@dataclass
class Hold:
    """Stop forwarding one direction of a connection whose request contains ``match``,
    once ``after`` bytes of that direction went through, until ``release`` is set."""

    match: bytes
    after: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)  # the hold is in effect
    once: bool = True
    skip: int = 0  # let this many matching requests through first
    used: bool = False


@dataclass
class Relay:
    upstream_host: str
    upstream_port: int
    requests: list[Seen] = field(default_factory=list)
    open_now: int = 0
    max_open: int = 0
    fragment: int = 0  # >0: forward the server's bytes in pieces of this size, with a pause
    fragment_pause: float = 0.002
    up_pause: float = 0.0  # >0: a pause after each piece (up to 64 KiB) the client sends
    hold_down: list[Hold] = field(default_factory=list)
    hold_up: list[Hold] = field(default_factory=list)
    drop: Callable[[bytes], bool] | None = None  # close at once a request whose head matches
    # Cut each of the next len(cuts) connections whose request contains ``cut_match`` after
    # that many bytes of the server's answers on that connection (counted from its start).
    cuts: list[int] = field(default_factory=list)
    cut_match: bytes = b""
    downstream_bytes: list[int] = field(default_factory=list)  # per connection, in order
    # Raw HTTP bytes to answer a request with instead of the server (None: forward it).
    answer: Callable[[bytes], bytes | None] | None = None
    capture: bool = False
    upstream_data: bytearray = field(default_factory=bytearray)
    conn_data: dict[int, bytearray] = field(default_factory=dict)  # upstream, per connection
    up_bytes: int = 0
    down_bytes: int = 0
    url: str = ""
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _conns: int = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for h in [*self.hold_down, *self.hold_up]:
            h.release.set()
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def lines(self) -> list[str]:
        """The request line of every request seen."""
        return [r.line for r in self.requests]

    def matching(self, text: str) -> list[Seen]:
        return [r for r in self.requests if text in r.line]

    def parsed(self) -> list[Request]:
        """Every complete request the client sent (needs ``capture``)."""
        out: list[Request] = []
        for data in self.conn_data.values():
            out += parse_requests(bytes(data))
        return out


    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            ur, uw = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            cw.close()
            self._tasks.discard(task)
            return
        self._conns += 1
        conn = self._conns
        index = len(self.downstream_bytes)
        self.downstream_bytes.append(0)
        # A connection counts as open from its first request until either side closes,
        # changed synchronously in the reading tasks: a client that closes a connection and
        # opens another must never be seen holding both.
        live = {"counted": False}

        def opened() -> None:
            if not live["counted"]:
                live["counted"] = True
                self.open_now += 1
                self.max_open = max(self.max_open, self.open_now)

        def closed() -> None:
            if live["counted"]:
                live["counted"] = False
                self.open_now -= 1
                live["done"] = True
        # Holds chosen by the latest request on this connection.
        state: dict[str, Hold | None] = {"down": None, "up": None}
        counts = {"down": 0, "up": 0}
        cut: dict[str, int | None] = {"at": None}  # chosen once per connection

        def pick(holds: list[Hold], head: bytes) -> Hold | None:
            for h in holds:
                if h.match in head and not (h.once and h.used):
                    if h.skip:
                        h.skip -= 1
                        continue
                    h.used = True
                    return h
            return None

        async def up() -> None:
            while data := await cr.read(65536):
                if data[:4] in METHODS:
                    head = data[:4096]
                    if "done" not in live:
                        opened()
                    self.requests.append(Seen(conn, head, time.monotonic()))
                    if self.drop is not None and self.drop(head):
                        cw.transport.abort()  # type: ignore[union-attr]
                        uw.transport.abort()  # type: ignore[union-attr]
                        return
                    if cut["at"] is None and self.cuts and self.cut_match in head:
                        cut["at"] = self.cuts.pop(0)
                    own = self.answer(head) if self.answer is not None else None
                    if own is not None:
                        cw.write(own)
                        await cw.drain()
                        cw.close()
                        uw.transport.abort()  # type: ignore[union-attr]
                        return
                    state["down"] = pick(self.hold_down, head)
                    state["up"] = pick(self.hold_up, head)
                    counts["down"] = counts["up"] = 0
                if self.capture:
                    self.upstream_data += data
                    self.conn_data.setdefault(conn, bytearray()).extend(data)
                hold = state["up"]
                if hold is not None and not hold.release.is_set():
                    room = max(0, hold.after - counts["up"])
                    if len(data) > room:
                        uw.write(data[:room])
                        counts["up"] += room
                        self.up_bytes += room
                        await uw.drain()
                        hold.reached.set()
                        await hold.release.wait()
                        data = data[room:]
                counts["up"] += len(data)
                self.up_bytes += len(data)
                uw.write(data)
                await uw.drain()
                if self.up_pause:
                    await asyncio.sleep(self.up_pause)
            with contextlib.suppress(OSError):
                uw.write_eof()

        async def send(data: bytes) -> None:
            if not data:
                return
            step = self.fragment or len(data)
            for i in range(0, len(data), step):
                cw.write(data[i : i + step])
                await cw.drain()
                if self.fragment:
                    await asyncio.sleep(self.fragment_pause)
            self.down_bytes += len(data)
            self.downstream_bytes[index] += len(data)
            counts["down"] += len(data)

        async def down() -> None:
            while data := await ur.read(65536):
                limit = cut["at"]
                sent = self.downstream_bytes[index]
                if limit is not None and sent + len(data) >= limit:
                    with contextlib.suppress(OSError):
                        await send(data[: max(0, limit - sent)])
                    cw.transport.abort()  # type: ignore[union-attr]
                    uw.transport.abort()  # type: ignore[union-attr]
                    return
                hold = state["down"]
                if hold is not None and not hold.release.is_set():
                    room = max(0, hold.after - counts["down"])
                    if len(data) > room:
                        await send(data[:room])
                        hold.reached.set()
                        await hold.release.wait()
                        data = data[room:]
                await send(data)
            cw.close()

        async def guarded(side: Callable[[], Awaitable[None]]) -> None:
            try:
                await side()
            finally:
                closed()

        tasks = [asyncio.create_task(guarded(up)), asyncio.create_task(guarded(down))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.wait(tasks, timeout=30)
        except asyncio.CancelledError:
            pass
        finally:
            closed()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            cw.close()
            uw.close()
            self._tasks.discard(task)


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes


def parse_requests(data: bytes) -> list[Request]:
    """Split what a client sent on one connection into requests. The client under test
    always states Content-Length (or sends no body); a cut-off last request is left out."""
    out: list[Request] = []
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return out
        lines = data[pos:end].decode("latin-1").split("\r\n")
        headers = {}
        for raw in lines[1:]:
            k, _, v = raw.partition(":")
            headers[k.strip().lower()] = v.strip()
        size = int(headers.get("content-length", "0"))
        body = data[end + 4 : end + 4 + size]
        if len(body) < size:
            return out
        out.append(Request(lines[0], headers, body))
        pos = end + 4 + size


@contextlib.asynccontextmanager
async def relay_to(url: str, **kwargs: object) -> AsyncIterator[Relay]:
    parts = urlsplit(url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 80, **kwargs)  # type: ignore[arg-type]
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
