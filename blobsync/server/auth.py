"""Tokens and the ``Authorization: Token base64(name:token)`` header (SPEC 4 and 6).

Tokens are stored only as their SHA-256 hex digest: a leaked index does not let anyone in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from aiohttp import web

from blobsync.format.errors import ProtocolError
from blobsync.format.limits import valid_id
from blobsync.server.storage.base import MetadataIndex, Principal

# A header longer than this cannot hold a valid id and a token we issued: refuse it unread.
_MAX_HEADER = 1024


# Who made the request, once known: the access log names them.
USER = web.RequestKey("blobsync.user", str)


class Unauthorized(ProtocolError):
    status_hint = 401


class Forbidden(ProtocolError):
    status_hint = 403


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A random token that never starts with ``-``, so no command line takes it for an option."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def parse_token_header(header: str | None) -> tuple[str, str]:
    """(name, token) from ``Token base64(name:token)``; Unauthorized (401) if malformed."""
    if not header:
        raise Unauthorized("credentials required")
    if len(header) > _MAX_HEADER:
        raise Unauthorized("malformed Authorization header")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "token" or not value:
        raise Unauthorized("expected 'Authorization: Token base64(uuid:token)'")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Unauthorized("malformed Authorization header") from None
    name, sep, token = decoded.partition(":")
    if not sep or not valid_id(name) or not token:
        raise Unauthorized("malformed Authorization header")
    return name, token


def token_matches(principal: Principal | None, token: str) -> bool:
    # Hash even when there is no principal so timing does not tell which names exist.
    digest = hash_token(token)
    expected = principal.token_hash if principal is not None else "0" * 64
    return hmac.compare_digest(digest, expected) and principal is not None


async def authenticate_user(request: web.Request, index: MetadataIndex, uuid: str) -> str:
    """Check the credentials for a request under ``/blobs/{uuid}`` or ``/stream/{uuid}``.

    401 when absent or wrong, 403 when they are another user's. Returns the uuid.
    """
    name, token = parse_token_header(request.headers.get("Authorization"))
    if not token_matches(await index.get_user(name), token):
        raise Unauthorized("invalid credentials")
    request[USER] = name  # for the access log
    if name != uuid:
        raise Forbidden("these credentials belong to another user")
    return uuid


async def authenticate_service(
    request: web.Request, index: MetadataIndex, allowed: str
) -> str:
    """Check a local service's credentials; only the service ``allowed`` may go on (403)."""
    name, token = parse_token_header(request.headers.get("Authorization"))
    if not token_matches(await index.get_service(name), token):
        raise Unauthorized("invalid service credentials")
    request[USER] = f"service:{name}"
    if name != allowed:
        raise Forbidden(f"service {name!r} may not use this endpoint")
    return name
