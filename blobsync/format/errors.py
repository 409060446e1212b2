"""Errors raised by the format layer.

Each protocol error carries ``status_hint``, the HTTP status a server should answer
with; the server turns hints into responses in exactly one place.
"""

from __future__ import annotations


class BlobsyncError(Exception):
    """Base class of every error blobsync raises on purpose."""


class ProtocolError(BlobsyncError):
    """Input that breaks the protocol. ``status_hint`` is the HTTP status to answer."""

    status_hint: int = 400

    def __init__(self, message: str, status_hint: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_hint is not None:
            self.status_hint = status_hint

    def __str__(self) -> str:
        return self.message


class LimitExceeded(ProtocolError):
    """Input larger than a configured or protocol limit."""

    status_hint = 413


class InvalidBlob(ProtocolError):
    """A sealed blob that cannot be opened: bad preamble, wrong id, or a failed tag.

    Every failure on untrusted sealed input is this one error, with a reason.
    """

    status_hint = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
