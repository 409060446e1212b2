"""``Expect: 100-continue``: a body is invited only once the request could succeed with it.

aiohttp answers ``100 Continue`` to every such request by default, so a client without
credentials, over its quota, or declaring a body over the size limit would be invited to
send gigabytes only to be refused at the end. Each upload route instead gives its checks
that need no body (names, credentials, declared size, quota) as one function, run by the
route's expect handler before inviting the body, and by the route itself otherwise.

The expect handler runs before aiohttp's middlewares, so it does not answer a failure
itself: it keeps the error and invites nothing, and the route raises that error, which
``error_middleware`` (the one place that turns errors into responses) answers and the
metrics count. The response closes the connection, since the body was never read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import HttpVersion11, hdrs, web

from blobsync.format.errors import BlobsyncError, LimitExceeded
from blobsync.server.errors import ApiError
from blobsync.server.sent import forget_interim
from blobsync.server.storage.base import BlobExists, QuotaExceeded
from blobsync.server.storage.blobstore import BlobStore

T = TypeVar("T")

Check = Callable[[web.Request], Awaitable[T]]
ExpectHandler = Callable[[web.Request], Awaitable[None]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: Any = None
    error: BaseException | None = None


_OUTCOME = web.RequestKey("blobsync.before_body", _Outcome)


def expect_handler(check: Check[Any]) -> ExpectHandler:
    """The route's expect handler: run ``check``, and send ``100 Continue`` only if it
    passed. Give the route's handler the same ``check`` through ``before_body``."""

    async def handle(request: web.Request) -> None:
        if request.version != HttpVersion11:
            return  # HTTP/1.0 has no interim responses (as aiohttp's own handler)
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() != "100-continue":
            request[_OUTCOME] = _Outcome(
                error=ApiError(417, "the only expectation supported is 100-continue")
            )
            return
        try:
            value = await check(request)
        except Exception as exc:  # noqa: BLE001 - the route raises it, in the middlewares
            request[_OUTCOME] = _Outcome(error=exc)
            return
        try:
            await request.writer.write(_CONTINUE)
        except ConnectionError as exc:
            # Gone already: escaping from here, aiohttp would log it with a traceback.
            request[_OUTCOME] = _Outcome(error=exc)
            return
        request[_OUTCOME] = _Outcome(value=value)
        forget_interim(request)

    return handle


async def before_body(request: web.Request, check: Check[T]) -> T:
    """What ``check`` gave, run by the expect handler or now; its error if it failed."""
    outcome = request.get(_OUTCOME)
    if outcome is None:
        return await check(request)
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[no-any-return]


async def check_room(store: BlobStore, user: str, ns: str, blob_id: str, size: int) -> None:
    """413 for a blob over the size limit, 507 for one the user's quota has no room for.

    The store checks both again as the blob comes in; this refuses a declared size early,
    and reports the refusal to the store's observer as the store reports its own.
    """
    exc = await _no_room(store, user, ns, blob_id, size)
    if exc is not None:
        store.observer.on_refused(exc)
        raise exc


async def _no_room(
    store: BlobStore, user: str, ns: str, blob_id: str, size: int
) -> BlobsyncError | None:
    if store.max_blob_size and size > store.max_blob_size:
        return LimitExceeded(f"blob of {size} bytes is over the {store.max_blob_size}-byte limit")
    if store.quota <= 0:
        return None
    usage = await store.index.usage(user)
    if usage + size <= store.quota:
        return None
    # The store answers a blob already there with 409 before looking at the quota: a
    # client re-sending it learns that it is stored, whatever the room left.
    if await store.index.get_blob(user, ns, blob_id) is not None:
        return BlobExists(f"blob {blob_id} exists")
    return QuotaExceeded(
        f"storing {size} bytes would pass the quota of {store.quota} bytes ({usage} used)"
    )
