"""The one place where errors become HTTP responses: a JSON body ``{"error": ...}``.

Storage and format errors carry ``status_hint``; aiohttp's own HTTP exceptions (unknown
route, wrong method) carry their status. Anything else is a bug: it is logged with its
traceback on the server and answered with a bare 500, never with the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from blobsync.format.errors import BlobsyncError, ProtocolError
from blobsync.server.sent import drop_unsent

log = logging.getLogger("blobsync.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Percent-encoded separators and dot segments in a raw path: refused before routing so that
# no handler ever sees a name that could walk out of its directory.
_UNSAFE_ENCODED = ("%2f", "%5c", "%00")


class ApiError(ProtocolError):
    """An error a handler raises with its status and optional extra JSON fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message, status)
        self.extra = extra


def json_error(
    status: int, message: str, extra: dict[str, Any] | None = None, **headers: str
) -> web.Response:
    body = {"error": message, **(extra or {})}
    resp = web.json_response(body, status=status)
    resp.headers.update(headers)
    return resp


def check_raw_path(request: web.Request) -> None:
    """400 for dot segments or encoded separators, whatever route they would reach."""
    raw = request.raw_path.split("?", 1)[0]
    lowered = raw.lower()
    if any(bad in lowered for bad in _UNSAFE_ENCODED):
        raise ApiError(400, "encoded separators are not allowed in paths")
    segments = lowered.replace("%2e", ".").split("/")
    if any(seg in (".", "..") for seg in segments):
        raise ApiError(400, "dot segments are not allowed in paths")


def cut_connection(request: web.Request) -> None:
    """Drop the connection: the only honest answer once a response has started."""
    transport = request.transport
    if transport is not None:
        drop_unsent(request)  # dropped with the transport: the count must not hold it
        transport.abort()
    if request.protocol is not None:
        request.protocol.force_close()


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def log_client_gone(request: web.Request, detail: str = "") -> None:
    """The one line a client that went away is worth: INFO, never a traceback."""
    log.info("client went away: %s %s%s", request.method, request.rel_url.raw_path, detail)


def end_cut(
    request: web.Request, cause: BaseException | str, sent: int, expected: int, where: str = ""
) -> None:
    """Cut a response whose body could not go out whole, and say so in one line: INFO when
    the client went away (nothing to fix on the server), WARNING when the server failed."""
    if isinstance(cause, ConnectionError) or client_gone(request):
        log_client_gone(request, f" after {sent} of {expected} body bytes")
    else:
        log.warning("cutting %s %s after %d of %d body bytes%s: %s", request.method,
                    request.rel_url.raw_path, sent, expected, where, cause)
    cut_connection(request)


async def write_body(request: web.Request, resp: web.StreamResponse, data: bytes) -> None:
    """``resp.write``, refused up front once the client has gone: aiohttp would count the
    bytes as sent before finding the transport closed."""
    if client_gone(request):
        raise ConnectionResetError("the client went away")
    await resp.write(data)


def _close_if_body_unread(request: web.Request, resp: web.StreamResponse) -> None:
    # An error sent before the body was read: close instead of draining a large body.
    if request.body_exists and not request.content.is_eof():
        resp.force_close()


def _status_error(exc: BaseException) -> tuple[int, str]:
    status = int(getattr(exc, "status_hint", 500))
    if status >= 500 and status != 507:
        # A storage failure: its message may name server paths, which callers need not see.
        log.error("storage error: %s", exc)
        return status, "internal storage error"
    return status, str(exc) or HTTPStatus(status).phrase


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        check_raw_path(request)
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        resp = json_error(exc.status, _http_message(exc), **headers)
    except BlobsyncError as exc:
        status, message = _status_error(exc)
        resp = json_error(status, message, getattr(exc, "extra", None), **_extra_headers(exc))
        if status == 401:
            resp.headers["WWW-Authenticate"] = "Token"
    except HttpProcessingError as exc:
        # A body that breaks HTTP framing (bad chunking, short Content-Length).
        resp = json_error(400, f"malformed request body: {exc.message}")
    except ConnectionError:
        # The client went away; nobody reads this answer, but the access log gets a line.
        log_client_gone(request)
        resp = json_error(400, "connection lost")
        resp.force_close()
        return resp
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.rel_url.raw_path)
        resp = json_error(500, "internal server error")
    _close_if_body_unread(request, resp)
    return resp


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "no such resource"
    if exc.status == 405:
        return f"method {exc.method} not allowed"  # type: ignore[attr-defined]
    return exc.reason


def _extra_headers(exc: BaseException) -> dict[str, str]:
    size = getattr(exc, "size", None)
    if getattr(exc, "status_hint", None) == 416 and isinstance(size, int):
        return {"Content-Range": f"bytes */{size}"}
    return {}
