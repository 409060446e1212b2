"""``GET /changes/{uuid}`` (SPEC 8): the change feed, as a page, a long poll, or Server-Sent
Events. The index reads the feed (``MetadataIndex.read_changes``); the hub (feed.py) says
when to read it again."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from blobsync.format.limits import valid_id
from blobsync.server.auth import authenticate_user
from blobsync.server.config import DEFAULT_FEED_HEARTBEAT
from blobsync.server.errors import ApiError, client_gone, log_client_gone, write_body
from blobsync.server.feed import HUB, Waiter, change_json, decode_cursor, encode_cursor
from blobsync.server.params import CONFIG, STORE, path_id, query_one
from blobsync.server.storage.base import ChangePage

# A page's default and largest size (SPEC 8): big enough that catching up after a day
# away is a few requests, small enough that one answer stays well under a megabyte.
DEFAULT_CHANGES_LIMIT = 1000
MAX_CHANGES_LIMIT = 10_000
# The longest long poll (SPEC 8); proxies in front must allow at least this long.
MAX_CHANGES_TIMEOUT = 300.0


def _limit(request: web.Request) -> int:
    value = query_one(request, "limit")
    if value is None:
        return DEFAULT_CHANGES_LIMIT
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise ApiError(400, "limit: expected a positive integer")
    n = int(value)
    if not 1 <= n <= MAX_CHANGES_LIMIT:
        raise ApiError(400, f"limit: from 1 to {MAX_CHANGES_LIMIT}")
    return n


def _timeout(request: web.Request) -> float:
    value = query_one(request, "timeout")
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise ApiError(400, "timeout: expected a number of seconds") from None
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_CHANGES_TIMEOUT):
        raise ApiError(400, f"timeout: from 0 to {MAX_CHANGES_TIMEOUT:g} seconds")
    return seconds


def _namespace(request: web.Request) -> str | None:
    value = query_one(request, "namespace")
    if value is not None and not valid_id(value):
        raise ApiError(400, "invalid namespace: must match [A-Za-z0-9_-]{1,254}")
    return value


def _wants_events(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


async def changes(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    uuid = path_id(request, "uuid")
    ns = _namespace(request)
    limit = _limit(request)
    timeout = _timeout(request)
    events = _wants_events(request)
    cursor = query_one(request, "since")
    if events and "Last-Event-ID" in request.headers:
        cursor = request.headers["Last-Event-ID"]  # a reconnecting EventSource's
    await authenticate_user(request, store.index, uuid)
    index = store.index
    since = None if cursor is None else decode_cursor(index.feed_id, cursor)

    async def read(position: int | None) -> ChangePage:
        return await index.read_changes(uuid, position, limit, ns)

    if events:
        return await _events(request, uuid, since, read)
    page = await _long_poll(request, uuid, await read(since), timeout, read)
    return web.json_response({
        "changes": [change_json(c, request.app[CONFIG].meta_extension) for c in page.changes],
        "cursor": encode_cursor(index.feed_id, page.position),
        "done": page.done,
    })


Read = Callable[[int | None], Awaitable[ChangePage]]


async def _long_poll(
    request: web.Request, uuid: str, page: ChangePage, timeout: float, read: Read
) -> ChangePage:
    """``page``, or when it is empty, the first page with changes within ``timeout``: the
    same position (or a later one, when only other namespaces moved) if none came."""
    if page.changes or timeout <= 0:
        return page
    hub = request.app[HUB]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    since = page.position
    waiter = hub.register(uuid, request)
    try:
        # Read again once registered: a commit just before it is not missed.
        page = await read(since)
        while not page.changes and not hub.closed:
            left = deadline - loop.time()
            if left <= 0 or not await waiter.wait(left):
                break
            if client_gone(request):
                raise ConnectionResetError("the client went away during a long poll")
            page = await read(since)
    finally:
        hub.release(waiter)
    return page


async def _events(
    request: web.Request, uuid: str, since: int | None, read: Read
) -> web.StreamResponse:
    hub = request.app[HUB]
    waiter = hub.register(uuid, request)  # before the first read: no commit is missed
    try:
        page = await read(since)  # a bad cursor is a plain 410 before the stream starts
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        })
        await resp.prepare(request)
        try:
            await _stream_events(request, resp, waiter, page, read)
        except ConnectionError:
            log_client_gone(request, " (event stream)")
        return resp
    finally:
        hub.release(waiter)


async def _stream_events(
    request: web.Request, resp: web.StreamResponse, waiter: Waiter, page: ChangePage,
    read: Read,
) -> None:
    """Events until the client goes or the server stops; a comment line whenever
    ``feed_heartbeat`` seconds pass with nothing to send."""
    hub = request.app[HUB]
    heartbeat = request.app[CONFIG].feed_heartbeat or DEFAULT_FEED_HEARTBEAT
    feed_id = request.app[STORE].index.feed_id
    with_meta = request.app[CONFIG].meta_extension
    while not hub.closed:
        if page.changes:
            await write_body(request, resp, "".join(
                f"event: change\nid: {encode_cursor(feed_id, change.seq)}\n"
                f"data: {json.dumps(change_json(change, with_meta), separators=(',', ':'))}\n\n"
                for change in page.changes
            ).encode())
        if page.done and not await waiter.wait(heartbeat):
            await write_body(request, resp, b": keep-alive\n\n")
            page = ChangePage([], page.position, True)
            continue
        if client_gone(request):
            raise ConnectionResetError("the client went away")
        page = await read(page.position)
