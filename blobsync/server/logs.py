"""Server logging: one access line per request, never a body, a token or a query string."""

from __future__ import annotations

import logging
import sys

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

from blobsync.server.auth import USER
from blobsync.server.sent import sent_bytes

ACCESS_LOGGER = logging.getLogger("blobsync.access")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class AccessLogger(AbstractAccessLogger):
    """``METHOD /raw/path STATUS BYTES TIMEms USER``.

    The path is logged percent-encoded, so a crafted path cannot forge log lines; the query
    string and headers (Authorization among them) are never logged.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %d %d %.1fms %s",
            request.method,
            request.rel_url.raw_path,
            response.status,
            sent_bytes(request),
            time * 1000,
            request.get(USER, "-"),
        )


class _RedactParserErrors(logging.Filter):
    """aiohttp logs a request its parser refused with the raw bytes, headers included:
    that would put an Authorization value in the log. Keep only the error's class."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "refused a malformed HTTP request: %s"
            record.args = (type(exc).__name__,)
            record.exc_info = None
            record.exc_text = None
        return True


# Installed at import, so that every server (tests' included) has it.
logging.getLogger("aiohttp.server").addFilter(_RedactParserErrors())


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
