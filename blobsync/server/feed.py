"""The change feed's server side (SPEC 8): cursors, the JSON of a change, and the hub
that wakes the requests waiting on a user's feed.

A cursor is ``<feed id>.<position>``: the index's random feed id, so that a cursor made by
another database is refused (410) rather than misread, and the position the index gave.
Clients treat it as opaque.

Wake-ups are hints. A waiter registers before it reads the feed, so a commit that lands
between its read and its wait still wakes it; whatever wakes it, it reads the feed again.
Commits in this process wake their user's waiters at once (``BlobStore.on_change``); the
index's ``follow_commits`` brings other processes' commits (PostgreSQL NOTIFY, SQLite
polling).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any

from aiohttp import web

from blobsync.server.storage.base import Change, CursorGone, MetadataIndex

log = logging.getLogger("blobsync.server.feed")

# Longest cursor accepted: a 16-hex-digit feed id, a dot and a 64-bit position, with room.
MAX_CURSOR = 64


def encode_cursor(feed_id: str, position: int) -> str:
    return f"{feed_id}.{position}"


def decode_cursor(feed_id: str, cursor: str) -> int:
    """The position in ``cursor``; CursorGone (410) when it is not one of this feed's."""
    fid, dot, pos = cursor.rpartition(".")
    if (
        len(cursor) > MAX_CURSOR
        or not dot
        or fid != feed_id
        or not (pos.isascii() and pos.isdigit())
    ):
        raise CursorGone("this cursor does not belong to this server's feed: list in full")
    return int(pos)


def change_json(change: Change) -> dict[str, Any]:
    out: dict[str, Any] = {
        "namespace": change.namespace,
        "blob_id": change.blob_id,
        "op": change.op,
    }
    if change.op == "put":
        out["size"] = change.size
        out["tag"] = base64.urlsafe_b64encode(change.tag or b"").decode("ascii")
    if change.flags is not None:
        out["flags"] = sorted(change.flags)
    return out


class ChangeHub:
    """Per process: who waits on which user's feed, and what wakes them."""

    def __init__(self, index: MetadataIndex) -> None:
        self._index = index
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._count = 0
        self._follower: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return self._count

    async def start(self) -> None:
        self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        task, self._follower = self._follower, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.wake(None)

    async def _follow(self) -> None:
        try:
            await self._index.follow_commits(self.wake, lambda: self._count > 0)
        except asyncio.CancelledError:
            raise
        except Exception:  # the feed still works in this process; others wake by timeout
            log.exception("following other processes' commits stopped")

    def register(self, user: str) -> asyncio.Future[None]:
        """A future that a commit for ``user`` resolves; register before reading the feed,
        and ``release`` it when done with it, resolved or not."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(user, set()).add(fut)
        self._count += 1
        return fut

    def release(self, user: str, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(user)
        if waiters is not None and fut in waiters:
            waiters.discard(fut)
            self._count -= 1
            if not waiters:
                del self._waiters[user]
        if not fut.done():
            fut.cancel()

    def wake(self, users: set[str] | None) -> None:
        """Resolve the waiters of ``users`` (None: everyone's)."""
        for user in list(self._waiters) if users is None else users:
            for fut in self._waiters.pop(user, ()):
                self._count -= 1
                if not fut.done():
                    fut.set_result(None)

    def notify(self, user: str) -> None:
        self.wake({user})


HUB: web.AppKey[ChangeHub] = web.AppKey("blobsync.hub", ChangeHub)
