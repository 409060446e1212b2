"""Errors the client library raises on purpose.

``str(e)`` is always one line meant for a person: the CLI prints it as is. Errors that
stem from a passing condition (the server down, a dropped connection, a 5xx) derive from
``TransientError`` so the sync engine can tell what to retry without string matching.
"""

from __future__ import annotations

import errno
from typing import Any

from blobsync.format.errors import BlobsyncError


class ClientError(BlobsyncError):
    """Base of every client error."""


class WrongPassphrase(ClientError):
    def __init__(self, message: str = "wrong passphrase") -> None:
        super().__init__(message)


class NotInitialized(ClientError):
    """No profile at the home directory."""


class BlobNotFound(ClientError):
    """The blob is neither in the local store nor on the server."""


class BlobExists(ClientError):
    """A put named a blob id the local store already holds (blobs are immutable)."""


class TransientError(ClientError):
    """A passing failure: worth retrying later on the SPEC 7 schedule."""


class ServerUnreachable(TransientError):
    """Connection refused, name resolution or TLS failure."""


class ConnectionLost(TransientError):
    """The connection dropped or timed out in the middle of an exchange."""


class AuthFailed(ClientError):
    """401 or 403: the token is wrong or belongs to another user."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RemoteError(ClientError):
    """The server refused a request; ``status`` is its HTTP status, ``detail`` the JSON
    error body when there was one (a refused stream upload lists what it kept)."""

    def __init__(self, message: str, status: int, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or {}


class ServerError(RemoteError, TransientError):
    """A 5xx other than 507: the server failed for now."""


class AlreadyOnServer(RemoteError):
    """409: the blob already exists on the server."""


class PreconditionFailed(RemoteError):
    """412: an ``expect`` flag condition did not hold."""


class TooLarge(RemoteError):
    """413: over the server's blob or stream size limit."""


class QuotaExceeded(RemoteError):
    """507: the user's quota would be exceeded."""


class MissingBlobs(RemoteError):
    """404 on a stream download: ``missing`` lists the ids the server does not hold."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message, 404)
        self.missing = missing


class CursorGone(RemoteError):
    """410 on the change feed: the server can no longer serve this cursor (older than
    what it keeps, or made by another database). The client lists in full (SPEC 8)."""


class NoFeed(RemoteError):
    """404 on the change feed: a server without one (Soledad, or a v1 server); the
    client syncs by listing (SPEC 7)."""


class NoSpace(ClientError):
    """The local disk is full (ENOSPC, or SQLite's "database or disk is full")."""


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full: an OSError ENOSPC (or EDQUOT, a full quota
    reads the same to a person), or SQLite's SQLITE_FULL, whose only trace in Python is
    its message."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "database or disk is full" in str(exc)


def no_space(exc: BaseException, where: str) -> NoSpace:
    """The one-line NoSpace for a disk-full ``exc`` met while writing ``where``."""
    return NoSpace(f"no space left on device ({where})")


class ProfileBusy(ClientError):
    """Another process holds the profile's writer lock."""


class IdTaken(ClientError):
    """The server holds a different blob under the id this device tried to upload."""


class StaleRange(ClientError):
    """A partial download no longer matches the blob on the server; start over."""
