"""The change feed (SPEC 8) over real HTTP, for tests: a page or long poll, an event stream
read event by event, and a follower that checks it sees every change once and in order."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from blobsync.server.feed import ChangeHub
from tests.helpers.servers import RunningServer


def hub_of(server: RunningServer) -> ChangeHub:
    """The hub of an in-process server: the store calls its ``notify`` on every write."""
    hub = server.store.on_change.__self__  # type: ignore[attr-defined]
    assert isinstance(hub, ChangeHub)
    return hub


async def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what} never held"
        await asyncio.sleep(0.02)


async def get_changes(session: aiohttp.ClientSession, url: str, user: str,
                      auth: dict[str, str], **params: Any) -> tuple[int, Any]:
    """GET /changes/{user} with ``params`` (None values left out): (status, JSON)."""
    query = {k: str(v) for k, v in params.items() if v is not None}
    async with session.get(f"{url}/changes/{user}", params=query, headers=auth) as r:
        assert r.content_type == "application/json", await r.text()
        return r.status, await r.json()


@dataclass
class Event:
    kind: str  # "change" (an event) or "comment"
    id: str = ""
    data: Any = None
    text: str = ""


@dataclass
class EventStream:
    """An open ``Accept: text/event-stream`` response, read one event at a time."""

    response: aiohttp.ClientResponse
    lines: list[str] = field(default_factory=list)  # every line read, for framing checks

    async def next(self, timeout: float = 10.0) -> Event | None:
        """The next event or comment; None when the stream ended."""
        fields: dict[str, str] = {}
        comment = None
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(), timeout)
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if line == "":
                if comment is not None and not fields:
                    return Event("comment", text=comment)
                if fields:
                    data = json.loads(fields["data"]) if "data" in fields else None
                    return Event(fields.get("event", "message"), fields.get("id", ""), data)
                continue
            if line.startswith(":"):
                comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")

    async def next_change(self, timeout: float = 10.0) -> Event:
        while True:
            event = await self.next(timeout)
            assert event is not None, "the stream ended"
            if event.kind == "change":
                return event

    def close(self) -> None:
        self.response.close()


async def open_events(session: aiohttp.ClientSession, url: str, user: str,
                      auth: dict[str, str], last_event_id: str | None = None,
                      **params: Any) -> EventStream:
    headers = {**auth, "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    query = {k: str(v) for k, v in params.items() if v is not None}
    r = await session.get(f"{url}/changes/{user}", params=query, headers=headers,
                          timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("text/event-stream")
    return EventStream(r)


def key(change: dict[str, Any]) -> tuple[str, str, str]:
    return change["namespace"], change["blob_id"], change["op"]


# Every backend of tests/server/conftest.py: each index has the feed.
FEED_BACKENDS = ["sqlite-files", "memory", "postgres-s3"]
