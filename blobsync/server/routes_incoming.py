"""``PUT /incoming/{uuid}/{blob_id}`` on the local port (SPEC 6): a trusted service delivers.

The body is already encrypted by the service; the server prepends an external head (scheme
2, method 3, rev ``0``, exact size) so the result is a sealed blob like any other. The head
states the payload size, so Content-Length is required: a chunked body is refused with 411
(Length Required) rather than buffered to learn its size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from blobsync.format.limits import CHUNK_SIZE
from blobsync.format.sealing import seal_external
from blobsync.server.auth import authenticate_service
from blobsync.server.errors import ApiError
from blobsync.server.expect import before_body, check_room
from blobsync.server.params import STORE, path_id
from blobsync.server.storage.base import UserNotFound

INCOMING_SERVICE = "incoming"
# Every service name some endpoint accepts: `blobsync service add` refuses any other.
SERVICES = (INCOMING_SERVICE,)
INCOMING_NAMESPACE = "MX"
INCOMING_FLAGS = frozenset({"PENDING"})


@dataclass(frozen=True, slots=True)
class _Delivery:
    uuid: str
    blob_id: str
    head: bytes
    payload_size: int


async def deliver_checks(request: web.Request) -> _Delivery:
    """What a delivery is refused for before its body is read (and before it is invited)."""
    store = request.app[STORE]
    uuid = path_id(request, "uuid")
    blob_id = path_id(request, "blob_id")
    await authenticate_service(request, store.index, INCOMING_SERVICE)
    if await store.index.get_user(uuid) is None:
        raise UserNotFound(f"no user {uuid!r}")
    payload_size = request.content_length
    if payload_size is None:
        raise ApiError(411, "Content-Length is required: the head states the payload size")
    head = seal_external(blob_id, payload_size)
    await check_room(store, uuid, INCOMING_NAMESPACE, blob_id, len(head) + payload_size)
    return _Delivery(uuid, blob_id, head, payload_size)


async def deliver(request: web.Request) -> web.Response:
    store = request.app[STORE]
    d = await before_body(request, deliver_checks)

    async def sealed() -> AsyncIterator[bytes]:
        yield d.head
        async for chunk in request.content.iter_chunked(CHUNK_SIZE):
            yield chunk

    info = await store.put(
        d.uuid, INCOMING_NAMESPACE, d.blob_id, sealed(), size=len(d.head) + d.payload_size,
        flags=INCOMING_FLAGS,
    )
    return web.json_response({"blob_id": d.blob_id, "namespace": INCOMING_NAMESPACE,
                              "size": info.size})
