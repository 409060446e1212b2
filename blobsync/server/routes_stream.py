"""``POST /stream/{uuid}`` (SPEC 3): many blobs in one request, in either direction.

Neither direction holds a blob in memory: downloads write each payload chunk as storage
yields it, uploads feed each chunk of the body through the sans-IO UpstreamReader straight
into BlobStore.put.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import StreamReader, web

from blobsync.format.errors import LimitExceeded, ProtocolError
from blobsync.format.limits import (
    CHUNK_SIZE,
    FRAME_HEADER_SIZE,
    MAX_FRAME_SIZE,
    MAX_JSON_HEADER,
    valid_id,
)
from blobsync.format.stream import (
    NEED_DATA,
    BlobData,
    BlobEnd,
    BlobStart,
    Event,
    StreamEnd,
    StreamError,
    UpstreamHeader,
    UpstreamReader,
    encode_frame_header,
)
from blobsync.server.auth import authenticate_user
from blobsync.server.errors import ApiError, cut_connection
from blobsync.server.params import CONFIG, STORE, namespace, path_id, query_one, read_json_body
from blobsync.server.storage.base import BlobExists, QuotaExceeded, StorageError

log = logging.getLogger("blobsync.server")

DIRECTIONS = ("download", "upload")


async def stream(request: web.Request) -> web.StreamResponse:
    uuid = path_id(request, "uuid")
    ns = namespace(request)
    direction = query_one(request, "direction")
    if direction not in DIRECTIONS:
        raise ApiError(400, "direction must be download or upload")
    await authenticate_user(request, request.app[STORE].index, uuid)
    if direction == "download":
        return await download(request, uuid, ns)
    return await upload(request, uuid, ns)


async def download(request: web.Request, uuid: str, ns: str) -> web.StreamResponse:
    store = request.app[STORE]
    ids = await read_json_body(request, MAX_JSON_HEADER)
    if not isinstance(ids, list) or not all(isinstance(i, str) and valid_id(i) for i in ids):
        raise ApiError(400, "body must be a JSON list of valid blob ids")
    infos = {info.blob_id: info for info in await store.index.get_blobs(uuid, ns, ids)}
    missing = [i for i in dict.fromkeys(ids) if i not in infos]
    if missing:
        raise ApiError(404, f"{len(missing)} blob(s) not found", missing=missing)
    too_big = [i for i in infos.values() if i.size > MAX_FRAME_SIZE]
    if too_big:
        raise LimitExceeded(f"blob {too_big[0].blob_id!r} is too large for a stream")
    resp = web.StreamResponse(status=200)
    resp.content_type = "application/octet-stream"
    # A known length lets the client tell a cut stream from a complete one.
    resp.content_length = sum(FRAME_HEADER_SIZE + infos[i].size for i in ids)
    blob_id = None
    try:
        await resp.prepare(request)
        for blob_id in ids:
            info = infos[blob_id]
            await resp.write(encode_frame_header(info.size, info.tag))
            # Straight from the payload store: the rows are in hand, and a payload deleted
            # since then raises or comes up short, which cuts the stream below.
            chunks = store.payloads.read(info.location, 0, info.size)
            try:
                sent = 0
                async for chunk in chunks:
                    sent += len(chunk)
                    await resp.write(chunk)
                if sent != info.size:
                    raise StorageError(f"{sent} bytes read, {info.size} indexed")
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
    except Exception as exc:  # noqa: BLE001 - headers are out: cutting is the only answer
        log.warning("cutting stream of %s at blob %r: %s", uuid, blob_id, exc)
        cut_connection(request)
        return resp
    await resp.write_eof()
    return resp


class _Pump:
    """Pulls events from an UpstreamReader, feeding it the request body on NEED_DATA."""

    def __init__(self, reader: UpstreamReader, content: StreamReader) -> None:
        self._reader = reader
        self._content = content
        self.in_blob = False

    async def next(self) -> Event:
        while True:
            event = self._reader.next_event()
            if event is NEED_DATA:
                # b"" at the end of the body tells the reader so.
                self._reader.receive_data(await self._content.read(CHUNK_SIZE))
                continue
            if isinstance(event, BlobStart):
                self.in_blob = True
            elif isinstance(event, BlobEnd):
                self.in_blob = False
            return event  # type: ignore[return-value]

    async def blob_body(self) -> AsyncIterator[bytes]:
        """The current blob's bytes, up to its end."""
        while self.in_blob:
            event = await self.next()
            if isinstance(event, BlobData):
                yield event.data

    async def skip_blob(self) -> None:
        """Consume what storage did not read of the current blob (one already stored)."""
        while self.in_blob:
            await self.next()


async def upload(request: web.Request, uuid: str, ns: str) -> web.Response:
    store = request.app[STORE]
    limit = request.app[CONFIG].stream_limit
    declared = request.content_length
    if declared is not None and limit and declared > limit:
        raise LimitExceeded(f"stream of {declared} bytes is over the {limit}-byte limit")
    reader = UpstreamReader(MAX_JSON_HEADER, store.max_blob_size, limit)
    pump = _Pump(reader, request.content)
    stored: list[str] = []
    existing: list[str] = []
    current: str | None = None
    try:
        header = await pump.next()
        assert isinstance(header, UpstreamHeader)
        await _check_quota(request, uuid, ns, header.items)
        while not isinstance(event := await pump.next(), StreamEnd):
            assert isinstance(event, BlobStart) and event.blob_id is not None
            current = event.blob_id
            body = pump.blob_body()
            try:
                await store.put(uuid, ns, current, body, size=event.size)
                stored.append(current)
            except BlobExists:
                existing.append(current)
            finally:
                await body.aclose()  # type: ignore[attr-defined]
            await pump.skip_blob()
            current = None
    except (ProtocolError, StorageError) as exc:
        wrong = exc.blob_id if isinstance(exc, StreamError) and exc.blob_id else current
        status = int(getattr(exc, "status_hint", 400))
        message = f"blob {wrong!r}: {exc}" if wrong else str(exc)
        if status >= 500 and status != 507:
            log.error("stream upload of %s failed at %r: %s", uuid, wrong, exc)
            message = "internal storage error"
        raise ApiError(status, message, blob_id=wrong, stored=stored, existing=existing) from exc
    return web.json_response({"stored": stored, "existing": existing})


async def _check_quota(
    request: web.Request, uuid: str, ns: str, items: list[tuple[str, int]]
) -> None:
    """507 from the sizes the header declares, before any body byte is read (SPEC 5)."""
    store = request.app[STORE]
    if not store.quota or not items:
        return
    present = {i.blob_id for i in await store.index.get_blobs(uuid, ns, [b for b, _ in items])}
    needed = sum(size for blob_id, size in items if blob_id not in present)
    usage = await store.index.usage(uuid)
    if usage + needed > store.quota:
        raise QuotaExceeded(
            f"storing {needed} bytes would pass the quota of {store.quota} bytes "
            f"({usage} used)"
        )
