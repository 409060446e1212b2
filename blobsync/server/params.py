"""Reading names, query parameters and small JSON bodies off a request, checked.

Every check here runs before storage is touched: a bad name is 400 (SPEC 1), a flag outside
the four is 406 (SPEC 4), a JSON body over its bound is 413 without being buffered (SPEC 5).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from blobsync.format.errors import LimitExceeded
from blobsync.format.limits import CHUNK_SIZE, valid_id
from blobsync.server.errors import ApiError
from blobsync.server.storage.base import FLAGS, Order

if TYPE_CHECKING:
    from blobsync.server.config import ServerConfig
    from blobsync.server.storage.blobstore import BlobStore

STORE: web.AppKey[BlobStore] = web.AppKey("blobsync.store")
CONFIG: web.AppKey[ServerConfig] = web.AppKey("blobsync.config")

DEFAULT_NAMESPACE = "default"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}
_ORDERS = {
    "date": Order.OLDEST_FIRST,
    "+date": Order.OLDEST_FIRST,
    # An unencoded '+' in a query string decodes to a space; accept what such clients mean.
    " date": Order.OLDEST_FIRST,
    "-date": Order.NEWEST_FIRST,
}


def path_id(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    if not valid_id(value):
        raise ApiError(400, f"invalid {key}: must match [A-Za-z0-9_-]{{1,254}}")
    return value


def query_one(request: web.Request, key: str) -> str | None:
    values = request.query.getall(key, [])
    if len(values) > 1:
        raise ApiError(400, f"query parameter {key!r} given more than once")
    return values[0] if values else None


def namespace(request: web.Request) -> str:
    value = query_one(request, "namespace")
    if value is None:
        return DEFAULT_NAMESPACE
    if not valid_id(value):
        raise ApiError(400, "invalid namespace: must match [A-Za-z0-9_-]{1,254}")
    return value


def flag_param(request: web.Request, key: str) -> str | None:
    value = query_one(request, key)
    if value is not None and value not in FLAGS:
        raise ApiError(406, f"{key}: unknown flag {value!r}; flags are {sorted(FLAGS)}")
    return value


def bool_param(request: web.Request, key: str) -> bool:
    value = query_one(request, key)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ApiError(400, f"{key}: expected true or false, got {value!r}")


def order_param(request: web.Request) -> Order:
    value = query_one(request, "order_by")
    if value is None:
        return Order.NONE
    try:
        return _ORDERS[value]
    except KeyError:
        raise ApiError(400, "order_by: one of date, +date, -date") from None


def limit_param(request: web.Request) -> int | None:
    value = query_one(request, "limit")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 12 or int(value) < 1:
        raise ApiError(400, "limit: expected a positive integer")
    return int(value)


async def read_json_body(request: web.Request, limit: int) -> Any:
    """The body parsed as JSON, refusing (413) past ``limit`` bytes before buffering them."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise LimitExceeded(f"JSON body of {declared} bytes is over the {limit}-byte limit")
    buf = bytearray()
    while chunk := await request.content.read(CHUNK_SIZE):
        buf += chunk
        if len(buf) > limit:
            raise LimitExceeded(f"JSON body is over the {limit}-byte limit")
    try:
        return json.loads(buf)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "body is not valid JSON") from None
