"""``POST /stream/{uuid}`` (SPEC 3): many blobs in one request, in either direction.

Memory stays bounded whatever the stream's size. This module keeps to HTTP. Uploads: the
body goes through the sans-IO UpstreamReader, whose events ``storage.stream_upload``
stores: blobs up to BATCH_BLOB_MAX are gathered (about a megabyte at most) and stored as a
batch, one pass of file writes and fsyncs and one index transaction for the run, each
blob still atomic; larger ones go to BlobStore.put chunk by chunk. Downloads read runs of
small payloads in one go (BlobStore.read_run) and send them in one write; larger payloads
go out chunk by chunk as storage yields them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import StreamReader, web

from blobsync.format.errors import LimitExceeded, ProtocolError
from blobsync.format.limits import (
    FRAME_HEADER_SIZE,
    MAX_FRAME_SIZE,
    MAX_JSON_HEADER,
    MAX_UPSTREAM_HEADER,
    valid_id,
)
from blobsync.format.stream import (
    NEED_DATA,
    BlobData,
    BlobEnd,
    BlobStart,
    Event,
    StreamError,
    UpstreamHeader,
    UpstreamReader,
    encode_frame_header,
)
from blobsync.server.auth import authenticate_user
from blobsync.server.errors import ApiError, end_cut, write_body
from blobsync.server.expect import before_body
from blobsync.server.params import CONFIG, STORE, namespace, path_id, query_one, read_json_body
from blobsync.server.storage.base import BlobInfo, StorageError
from blobsync.server.storage.blobstore import BATCH_BYTES, BATCH_COUNT, BlobStore, StreamBatch
from blobsync.server.storage.stream_upload import StreamUpload

log = logging.getLogger("blobsync.server")

DIRECTIONS = ("download", "upload")


async def stream_checks(request: web.Request) -> tuple[str, str, str]:
    """What a stream is refused for before its body is read (and before it is invited):
    (uuid, namespace, direction). An upload's quota is checked once its header, in the
    body, has told the sizes of its blobs."""
    uuid = path_id(request, "uuid")
    ns = namespace(request)
    direction = query_one(request, "direction")
    if direction not in DIRECTIONS:
        raise ApiError(400, "direction must be download or upload")
    await authenticate_user(request, request.app[STORE].index, uuid)
    declared = request.content_length
    if direction == "download":
        if declared is not None and declared > MAX_JSON_HEADER:
            raise LimitExceeded(
                f"JSON body of {declared} bytes is over the {MAX_JSON_HEADER}-byte limit"
            )
    else:
        limit = request.app[CONFIG].stream_limit
        if declared is not None and limit and declared > limit:
            raise LimitExceeded(f"stream of {declared} bytes is over the {limit}-byte limit")
    return uuid, ns, direction


async def stream(request: web.Request) -> web.StreamResponse:
    uuid, ns, direction = await before_body(request, stream_checks)
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
    total = sum(FRAME_HEADER_SIZE + infos[i].size for i in ids)
    resp.content_length = total
    batched = store.payloads.batched_reads
    blob_id = None
    out = _Body(request, resp)
    try:
        await resp.prepare(request)
        i = 0
        while i < len(ids):
            if batched and StreamBatch.fits(infos[ids[i]].size):
                # A run of small blobs: read in one thread hop, sent in one write.
                group = _small_run(ids, i, infos)
                i += len(group)
                blob_id = group[0].blob_id
                payloads = await store.read_run(group)
                frames: list[bytes] = []
                for info, data in zip(group, payloads, strict=True):
                    frames += (encode_frame_header(info.size, info.tag), data)
                await out.write(b"".join(frames))
                continue
            blob_id = ids[i]
            i += 1
            await _send_alone(out, store, infos[blob_id])
    except Exception as exc:  # noqa: BLE001 - headers are out: cutting is the only answer
        end_cut(request, exc, out.sent, total, f" (stream of {uuid} at blob "
                f"{blob_id!r})")
        return resp
    await resp.write_eof()
    return resp


class _Body:
    """A download's body as it goes out, counted."""

    def __init__(self, request: web.Request, resp: web.StreamResponse) -> None:
        self.request = request
        self.resp = resp
        self.sent = 0

    async def write(self, data: bytes) -> None:
        await write_body(self.request, self.resp, data)
        self.sent += len(data)


def _small_run(ids: list[str], start: int, infos: dict[str, BlobInfo]) -> list[BlobInfo]:
    """The blobs from ``start`` on that fit a batch, up to a batch's count and bytes."""
    group: list[BlobInfo] = []
    total = 0
    for blob_id in ids[start : start + BATCH_COUNT]:
        info = infos[blob_id]
        if not StreamBatch.fits(info.size) or (group and total + info.size > BATCH_BYTES):
            break
        group.append(info)
        total += info.size
    return group


async def _send_alone(out: _Body, store: BlobStore, info: BlobInfo) -> None:
    await out.write(encode_frame_header(info.size, info.tag))
    # The rows are in hand: a payload deleted since then raises or comes up short, which
    # cuts the stream.
    chunks = store.read_located(info)
    try:
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            await out.write(chunk)
        if sent != info.size:
            raise StorageError(f"{sent} bytes read, {info.size} indexed")
    finally:
        await chunks.aclose()


# What the pump takes of an upload's body at a time: up to a whole socket read (asyncio
# reads 256 KiB at most), handed over without a copy, and a run of small blobs taken whole
# per read instead of one 64 KiB piece at a time.
BODY_READ = 1 << 18


class _Pump:
    """Pulls events from an UpstreamReader, feeding it the request body on NEED_DATA.

    ``on_idle`` runs whenever the body has nothing more to give yet: a batch of blobs
    waiting in memory is stored then instead of waiting for a slow sender.
    """

    def __init__(
        self,
        reader: UpstreamReader,
        content: StreamReader,
        on_idle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._reader = reader
        self._content = content
        self.on_idle = on_idle
        self.in_blob = False

    async def _more(self) -> bytes:
        content = self._content
        data = content.read_nowait(BODY_READ)
        if not data and not content.at_eof():
            if self.on_idle is not None:
                await self.on_idle()
            # b"" at the end of the body tells the reader so.
            data = await content.read(BODY_READ)
        return data

    async def next(self) -> Event:
        while True:
            event = self._reader.next_event()
            if event is NEED_DATA:
                self._reader.receive_data(await self._more())
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

    async def whole_blob(self) -> bytes:
        """The current blob's bytes, up to its end, in one piece: call it for small blobs
        only (a batch holds them in memory anyway)."""
        pieces: list[bytes] = []
        while self.in_blob:
            event = await self.next()
            if isinstance(event, BlobData):
                pieces.append(event.data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def whole_blobs(self, max_size: int) -> list[tuple[str, bytes]]:
        """The next blobs of at most ``max_size`` bytes, each in one piece and without
        events (``UpstreamReader.take_whole``), reading more of the body while the next
        one is such a blob but not all in; [] when the next thing is not one."""
        reader = self._reader
        while True:
            taken = reader.take_whole(max_size)
            if taken is None:
                return []
            if taken:
                return taken
            reader.receive_data(await self._more())

    async def skip_blob(self) -> None:
        """Consume what storage did not read of the current blob (one already stored)."""
        while self.in_blob:
            await self.next()


async def upload(request: web.Request, uuid: str, ns: str) -> web.Response:
    store = request.app[STORE]
    limit = request.app[CONFIG].stream_limit  # a declared size over it: see stream_checks
    # SPEC 11: room for a full stream's metas past MAX_JSON_HEADER (limits.py); none, and
    # pairs with a meta refused, on a server without the extension.
    room = MAX_UPSTREAM_HEADER - MAX_JSON_HEADER if request.app[CONFIG].meta_extension else None
    reader = UpstreamReader(MAX_JSON_HEADER, store.max_blob_size, limit, meta_room=room)
    up = StreamUpload(store, uuid, ns)
    pump = _Pump(reader, request.content, on_idle=up.flush)
    failure: BaseException | None = None
    try:
        header = await pump.next()
        assert isinstance(header, UpstreamHeader)
        await up.receive(pump, header)
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after keeping what came
        failure = exc
    if failure is not None:
        # The complete blobs before the failure are kept (SPEC 3). They all precede the
        # failing blob, so a failure to store them is the one to report.
        try:
            await up.flush()
        except BaseException as exc:  # noqa: BLE001 - replaces the later failure
            failure = exc
        if not isinstance(failure, ProtocolError | StorageError):
            raise failure
        exc = failure
        wrong = exc.blob_id if isinstance(exc, StreamError) and exc.blob_id else up.current
        status = exc.status_hint
        # A storage failure's message is masked by error_middleware, like any other.
        message = f"blob {wrong!r}: {exc}" if wrong else str(exc)
        raise ApiError(
            status, message, blob_id=wrong, stored=up.stored, existing=up.existing
        ) from exc
    return web.json_response({"stored": up.stored, "existing": up.existing})
