"""``GET /`` and ``/blobs/{uuid}[/{blob_id}]`` (SPEC 4): thin handlers over BlobStore."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import BinaryIO

from aiohttp import web

from blobsync import __version__
from blobsync.format.limits import (
    MAX_FRAME_SIZE,
    MAX_ID_LENGTH,
    MAX_JSON_HEADER,
    MAX_META_LENGTH,
    MAX_UPSTREAM_HEADER,
)
from blobsync.format.meta import check_meta_text
from blobsync.format.preamble import b64url_encode
from blobsync.server.auth import authenticate_user
from blobsync.server.errors import ApiError, client_gone, end_cut, write_body
from blobsync.server.expect import before_body, check_room
from blobsync.server.feed import encode_cursor
from blobsync.server.params import (
    CONFIG,
    STORE,
    bool_param,
    flag_param,
    limit_param,
    namespace,
    order_param,
    path_id,
    read_json_body,
)
from blobsync.server.ranges import ByteRange, parse_range
from blobsync.server.sent import add_sendfile
from blobsync.server.storage.base import FLAGS, BlobInfo, BlobNotFound, MetadataIndex, Order

log = logging.getLogger("blobsync.server")

# A flags body is a list of at most four short names; anything much larger is not one.
MAX_FLAGS_BODY = 4096
# Bytes asked of the request body at a time: fewer, larger pieces cost less per byte.
BODY_CHUNK = 256 << 10
# SPEC 11: a blob's sealed meta travels in this header, up with a PUT, down with a GET.
META_HEADER = "Blob-Meta"


async def server_info(request: web.Request) -> web.Response:
    store = request.app[STORE]
    config = request.app[CONFIG]
    # SPEC 1.1: what this server has beyond Soledad.
    extensions = ["changes", "meta"] if config.meta_extension else ["changes"]
    limits = {
        "quota": store.quota,
        "max_blob_size": store.max_blob_size,
        "max_stream_size": config.stream_limit,
        "max_json_body": MAX_JSON_HEADER,
        "max_frame_size": MAX_FRAME_SIZE,
        "max_id_length": MAX_ID_LENGTH,
    }
    if config.meta_extension:
        limits["max_meta_length"] = MAX_META_LENGTH
        limits["max_stream_header"] = MAX_UPSTREAM_HEADER
    return web.json_response(
        {
            "name": "blobsync",
            "version": __version__,
            "protocol": 1,
            "services": ["blobs", "stream", "incoming"],
            "extensions": extensions,
            "limits": limits,
        }
    )


async def list_blobs(request: web.Request) -> web.Response:
    store = request.app[STORE]
    uuid = path_id(request, "uuid")
    ns = namespace(request)
    order = order_param(request)
    flag = flag_param(request, "filter_flag")
    deleted = bool_param(request, "deleted")
    only_count = bool_param(request, "only_count")
    # SPEC 11; ignored with deleted=true (a tombstone has no size nor meta) and with
    # only_count=true (a count is a count), as by a server without the extension.
    with_meta = bool_param(request, "with_meta") and request.app[CONFIG].meta_extension
    limit = limit_param(request)
    if deleted and flag is not None:
        raise ApiError(400, "deleted=true cannot be combined with filter_flag")
    await authenticate_user(request, store.index, uuid)
    if deleted:
        ids = await store.index.list_deleted(uuid, ns)
        if order is Order.NEWEST_FIRST:
            ids.reverse()
        ids = ids[:limit] if limit else ids
        return web.json_response({"count": len(ids)} if only_count else ids)
    if only_count:
        count = await store.index.count_blobs(uuid, ns, filter_flag=flag)
        return web.json_response({"count": min(count, limit) if limit else count})
    # The feed position first: every change after it is either in the listing already or
    # still to come, and a client applying one it has seen does nothing (SPEC 8).
    position = await store.index.feed_position(uuid)
    cursor = {"Changes-Cursor": encode_cursor(store.index.feed_id, position)}
    if with_meta:
        # Its own query: the plain listing (every sync's) reads no size nor meta.
        rows = await store.index.list_blobs_meta(
            uuid, ns, filter_flag=flag, order=order, limit=limit
        )
        return web.json_response(
            [{"blob_id": b, "size": size, "meta": meta} for b, size, meta in rows],
            headers=cursor,
        )
    ids = await store.index.list_blobs(uuid, ns, filter_flag=flag, order=order, limit=limit)
    return web.json_response(ids, headers=cursor)


async def get_blob(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    uuid = path_id(request, "uuid")
    blob_id = path_id(request, "blob_id")
    ns = namespace(request)
    only_flags = bool_param(request, "only_flags")
    await authenticate_user(request, store.index, uuid)
    if only_flags:
        info = await _existing(store.index, uuid, ns, blob_id)
        return web.json_response(sorted(info.flags))
    rng: ByteRange | None = None

    def span(info: BlobInfo) -> tuple[int, int]:
        nonlocal rng
        rng = parse_range(request.headers.get("Range"), info.size)
        return (rng.start, rng.length) if rng else (0, info.size)

    # sendfile(2) cannot encrypt: under TLS asyncio would copy through Python anyway, and
    # past a client that went away it writes on, warning once per write. The store's
    # chunks go through aiohttp's writer instead, which stops at once.
    opened = await store.open_blob(uuid, ns, blob_id, span, as_file=not request.secure)
    info, offset, length, file = opened.info, opened.offset, opened.length, opened.file
    resp = web.StreamResponse(status=206 if rng else 200)
    resp.content_type = "application/octet-stream"
    resp.content_length = length
    resp.headers["Tag"] = b64url_encode(info.tag).decode("ascii")
    resp.headers["Accept-Ranges"] = "bytes"
    if info.meta is not None and request.app[CONFIG].meta_extension:
        resp.headers[META_HEADER] = info.meta
    if rng:
        resp.headers["Content-Range"] = rng.content_range(info.size)
    if file is not None:
        try:
            store.served(await send_file(request, resp, file, offset, length))
        finally:
            file.close()
        return resp
    assert opened.chunks is not None  # open_blob gives a file or chunks
    return await send_chunks(request, resp, opened.chunks, length)


@dataclass(frozen=True, slots=True)
class _PutTarget:
    uuid: str
    ns: str
    blob_id: str
    size: int | None  # as declared; None for a chunked body
    meta: str | None  # SPEC 11, checked


async def put_checks(request: web.Request) -> _PutTarget:
    """What a PUT is refused for before its body is read (and before it is invited)."""
    store = request.app[STORE]
    uuid = path_id(request, "uuid")
    blob_id = path_id(request, "blob_id")
    ns = namespace(request)
    meta = request.headers.get(META_HEADER)
    if not request.app[CONFIG].meta_extension:
        meta = None  # as a server without SPEC 11: an unknown header
    elif meta is not None:
        check_meta_text(meta)  # 400, 413: before the body, and never quoting the meta
    await authenticate_user(request, store.index, uuid)
    size = request.content_length
    if size is not None:
        await check_room(store, uuid, ns, blob_id, size)
    return _PutTarget(uuid, ns, blob_id, size, meta)


async def put_blob(request: web.Request) -> web.Response:
    store = request.app[STORE]
    t = await before_body(request, put_checks)
    info = await store.put(
        t.uuid, t.ns, t.blob_id, request.content.iter_chunked(BODY_CHUNK), size=t.size,
        meta=t.meta,
    )
    return web.json_response({"blob_id": t.blob_id, "size": info.size})


async def set_flags(request: web.Request) -> web.Response:
    store = request.app[STORE]
    uuid = path_id(request, "uuid")
    blob_id = path_id(request, "blob_id")
    ns = namespace(request)
    expect = flag_param(request, "expect")
    await authenticate_user(request, store.index, uuid)
    doc = await read_json_body(request, MAX_FLAGS_BODY)
    if not isinstance(doc, list) or not all(isinstance(f, str) for f in doc):
        raise ApiError(400, "body must be a JSON list of flags")
    unknown = sorted(set(doc) - FLAGS)
    if unknown:
        raise ApiError(406, f"unknown flags {unknown}; flags are {sorted(FLAGS)}")
    flags = frozenset(doc)
    await store.set_flags(uuid, ns, blob_id, flags, expect=expect)
    return web.json_response({"flags": sorted(flags)})


async def delete_blob(request: web.Request) -> web.Response:
    store = request.app[STORE]
    uuid = path_id(request, "uuid")
    blob_id = path_id(request, "blob_id")
    ns = namespace(request)
    await authenticate_user(request, store.index, uuid)
    await store.delete(uuid, ns, blob_id)
    return web.json_response({"deleted": blob_id})


async def _existing(index: MetadataIndex, uuid: str, ns: str, blob_id: str) -> BlobInfo:
    info = await index.get_blob(uuid, ns, blob_id)
    if info is None:
        raise BlobNotFound(f"no blob {blob_id!r} in namespace {ns!r}")
    return info


async def send_file(
    request: web.Request, resp: web.StreamResponse, file: BinaryIO, offset: int, expected: int
) -> int:
    """Send ``expected`` bytes of ``file`` from ``offset`` with sendfile(2): no copy through
    Python, and the loop waits on the socket (back-pressure). Failures end as in
    ``send_chunks``. Returns the bytes sent."""
    await resp.prepare(request)
    if client_gone(request):
        end_cut(request, "before the body", 0, expected)
        return 0
    # asyncio leaves the file's position past what it sent, even when it fails: from
    # ``offset``, the position tells how much went out.
    file.seek(offset)
    failure: BaseException | None = None
    try:
        await asyncio.get_running_loop().sendfile(request.transport, file, offset, expected)
    except Exception as exc:  # noqa: BLE001 - any failure mid-body ends the same way
        failure = exc
    sent = file.tell() - offset
    add_sendfile(request, sent)
    if failure is not None:
        end_cut(request, failure, sent, expected)
        return sent
    await _end_body(request, resp, sent, expected)
    return sent


async def send_chunks(
    request: web.Request,
    resp: web.StreamResponse,
    chunks: AsyncGenerator[bytes, None],
    expected: int,
) -> web.StreamResponse:
    """Stream ``chunks`` as the body; ``write`` waits on the socket (back-pressure).

    Once headers are out, a failure cannot become a JSON error: the connection is cut so the
    client sees a short body against its Content-Length, never a wrong one.
    """
    sent = 0
    try:
        await resp.prepare(request)
        async for chunk in chunks:
            if sent + len(chunk) > expected:
                sent += len(chunk)  # more than the index says: cut below
                break
            await write_body(request, resp, chunk)
            sent += len(chunk)
    except Exception as exc:  # noqa: BLE001 - any failure mid-body ends the same way
        end_cut(request, exc, sent, expected)
        return resp
    finally:
        await chunks.aclose()
    await _end_body(request, resp, sent, expected)
    return resp


async def _end_body(
    request: web.Request, resp: web.StreamResponse, sent: int, expected: int
) -> None:
    """End a body that went out whole; cut one that did not, so that the client sees it
    short against its Content-Length, never a wrong one."""
    if sent != expected:
        end_cut(request, "the store gave another size than its index", sent, expected)
        return
    await resp.write_eof()
