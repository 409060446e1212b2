"""The one count of the bytes a response sent: the access log and /metrics both read it.

aiohttp's writer counts what goes through it, headers included. Three things pass it by,
and each is corrected here and nowhere else: bytes sendfile(2) sent straight to the socket
(``add_sendfile``), bytes a cut connection dropped from the transport's buffer unsent
(``drop_unsent``), and the interim ``100 Continue``, which is not part of the response
(``forget_interim``). A response's ``body_length`` would miss the first two, and stays 0
for a response cut short.
"""

from __future__ import annotations

from aiohttp.web import BaseRequest


def sent_bytes(request: BaseRequest) -> int:
    """The bytes of the answer handed to the operating system, headers included."""
    writer = request.writer
    return writer.output_size if writer is not None else 0


def add_sendfile(request: BaseRequest, nbytes: int) -> None:
    """``nbytes`` went out with sendfile(2), past aiohttp's writer."""
    request.writer.output_size += nbytes


def drop_unsent(request: BaseRequest) -> None:
    """The connection is about to be aborted: what waits in the transport's buffer was
    never sent."""
    transport = request.transport
    if transport is not None and request.writer is not None:
        request.writer.output_size -= transport.get_write_buffer_size()


def forget_interim(request: BaseRequest) -> None:
    """The interim ``100 Continue`` just written does not count as the response's."""
    request.writer.output_size = 0
