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

from blobsync.server.errors import client_gone
from blobsync.server.storage.base import Change, CursorGone, MetadataIndex

log = logging.getLogger("blobsync.server.feed")

# Longest cursor accepted: a 16-hex-digit feed id, a dot and a 64-bit position, with room.
MAX_CURSOR = 64
# Positions are SQL BIGINTs: a larger one was never given out (and would not bind).
MAX_POSITION = (1 << 63) - 1
# How soon a waiter whose client went away is freed (one task scans them all).
REAP_INTERVAL = 1.0
# Stopping the hub's tasks: cancel, wait this long, cancel again, at most this many times.
STOP_WAIT = 1.0
STOP_TRIES = 5


def encode_cursor(feed_id: str, position: int) -> str:
    return f"{feed_id}.{position}"


def decode_cursor(feed_id: str, cursor: str) -> int:
    """The position in ``cursor``; CursorGone (410) when it is not one of this feed's."""
    fid, dot, pos = cursor.rpartition(".")
    if (
        len(cursor) > MAX_CURSOR
        or not dot
        or not fid
        or not (pos.isascii() and pos.isdigit())
        or int(pos) > MAX_POSITION
    ):
        # Said apart from another feed's cursor: "does not belong to this server's feed"
        # sent whoever typed a wrong one looking for a second server.
        raise CursorGone("not a cursor (one is FEED.POSITION, as an answer or a listing's "
                         "Changes-Cursor gave it): list in full")
    if fid != feed_id:
        raise CursorGone("this cursor is of another feed (another database, or a restored "
                         "one): list in full")
    return int(pos)


def change_json(change: Change, with_meta: bool = True) -> dict[str, Any]:
    """A change as SPEC 8 writes it; a put's ``meta`` when it has one (SPEC 11) and
    ``with_meta`` (the server has the extension)."""
    out: dict[str, Any] = {
        "namespace": change.namespace,
        "blob_id": change.blob_id,
        "op": change.op,
    }
    if change.op == "put":
        out["size"] = change.size
        out["tag"] = base64.urlsafe_b64encode(change.tag or b"").decode("ascii")
        if change.meta is not None and with_meta:
            out["meta"] = change.meta
    if change.flags is not None:
        out["flags"] = sorted(change.flags)
    return out


class Waiter:
    """One request waiting on a user's feed, registered for as long as it may wait: a
    commit between two of its waits is remembered (``woken``), so it re-reads the feed
    only when something may have changed, never merely because a heartbeat came due."""

    __slots__ = ("user", "request", "woken", "_fut")

    def __init__(self, user: str, request: web.BaseRequest | None) -> None:
        self.user = user
        self.request = request
        self.woken = False
        self._fut: asyncio.Future[bool] | None = None

    def wake(self) -> None:
        self.woken = True
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(True)

    async def wait(self, timeout: float) -> bool:
        """True when woken (now or since the last wait), False after ``timeout`` seconds
        of nothing. One future and one timer while it waits; no task."""
        if not self.woken:
            fut = self._fut = asyncio.get_running_loop().create_future()
            timer = fut.get_loop().call_later(timeout, _expire, fut)
            try:
                await fut
            finally:
                timer.cancel()
                self._fut = None
        woken, self.woken = self.woken, False
        return woken


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class ChangeHub:
    """Per process: who waits on which user's feed, and what wakes them."""

    def __init__(self, index: MetadataIndex, *, follow: bool = True) -> None:
        """``follow``: also wake waiters on other processes' commits (the index's
        ``follow_commits``); False when this process is the index's only writer."""
        self._index = index
        self._follow_others = follow
        self._waiters: dict[str, set[Waiter]] = {}
        self._count = 0
        self._follower: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.closed = False  # the server is stopping: waits end, streams close

    @property
    def waiting(self) -> int:
        return self._count

    @property
    def following(self) -> bool:
        """Whether other processes' commits are followed (a task runs for it)."""
        return self._follower is not None

    async def start(self) -> None:
        self.closed = False
        if self._follow_others:
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        """End every wait now: long polls answer, event streams end. aiohttp runs this
        before it gives requests their shutdown timeout, so that none waits it out."""
        self.closed = True
        self.wake(None)
        for name in ("_follower", "_reaper"):
            task = getattr(self, name)
            setattr(self, name, None)
            if task is not None:
                await _cancel(task)

    async def _follow(self) -> None:
        try:
            await self._index.follow_commits(self.wake, lambda: self._count > 0)
        except asyncio.CancelledError:
            raise
        except Exception:  # the feed still works in this process; others wake by timeout
            log.exception("following other processes' commits stopped")

    async def _reap(self) -> None:
        # A client that went away frees its waiter within REAP_INTERVAL, not at the end
        # of its wait (up to 300 s): one task for all waiters, only while there are some.
        try:
            while self._count:
                await asyncio.sleep(REAP_INTERVAL)
                for waiters in list(self._waiters.values()):
                    for waiter in waiters:
                        if waiter.request is not None and client_gone(waiter.request):
                            waiter.wake()
        finally:
            self._reaper = None

    def register(self, user: str, request: web.BaseRequest | None = None) -> Waiter:
        """A waiter that every later commit for ``user`` wakes: register before reading
        the feed, so that a commit between the read and the wait is not missed, and
        ``release`` it when done. With ``request``, it also wakes soon after that
        request's client goes away (the caller sees ``client_gone``)."""
        waiter = Waiter(user, request)
        self._waiters.setdefault(user, set()).add(waiter)
        self._count += 1
        if self.closed:
            waiter.wake()
        elif request is not None and self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return waiter

    def release(self, waiter: Waiter) -> None:
        waiters = self._waiters.get(waiter.user)
        if waiters is not None and waiter in waiters:
            waiters.discard(waiter)
            self._count -= 1
            if not waiters:
                del self._waiters[waiter.user]
        waiter.wake()  # a wait still under way (another task's) ends

    def wake(self, users: set[str] | None) -> None:
        """Wake the waiters of ``users`` (None: everyone's)."""
        for user in list(self._waiters) if users is None else users:
            for waiter in self._waiters.get(user, ()):
                waiter.wake()

    def notify(self, user: str) -> None:
        self.wake({user})


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end; cancel again while it has not: a library
    that swallows one cancellation (a connect under way, say) must not hang shutdown."""
    for _ in range(STOP_TRIES):
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=STOP_WAIT)
        if done:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
            return
    log.warning("%s did not stop when cancelled; left behind", task.get_name())


HUB: web.AppKey[ChangeHub] = web.AppKey("blobsync.hub", ChangeHub)
