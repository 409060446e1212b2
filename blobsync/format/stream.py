"""Stream formats (SPEC 3): many sealed blobs in one HTTP body, in both directions.

Both readers are sans-IO in the manner of h11: feed bytes with ``receive_data`` (an empty
``bytes`` means end of input) and pull events with ``next_event`` until it returns
``NEED_DATA``. They never hold more than one chunk of a blob.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import LimitExceeded, ProtocolError
from .limits import FRAME_HEADER_SIZE, MAX_FRAME_SIZE, MAX_JSON_HEADER, valid_id
from .meta import check_meta_text
from .preamble import TAG_SIZE, b64url_decode, b64url_encode


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class StreamError(ProtocolError):
    """A garbled, short or long stream. ``blob_id`` names the first blob that was wrong."""

    def __init__(self, message: str, status_hint: int | None = None, blob_id: str | None = None):
        super().__init__(message, status_hint)
        self.blob_id = blob_id


class FrameTagMismatch(StreamError):
    """A frame's tag differs from its blob's last 16 bytes: the stream is fine up to that
    blob, the blob itself is what is wrong (a client counts it against the blob)."""


@dataclass(frozen=True, slots=True)
class BlobStart:
    index: int
    blob_id: str | None  # the downstream reader knows ids only when told them
    size: int
    tag: bytes | None  # downstream frames carry the tag in their header


@dataclass(frozen=True, slots=True)
class BlobData:
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BlobEnd:
    index: int
    blob_id: str | None


@dataclass(frozen=True, slots=True)
class UpstreamHeader:
    items: list[tuple[str, int]]
    # SPEC 11: the metas of the pairs that carry one (the third element), by blob id.
    # Out of repr: a meta never shows in a log.
    metas: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class StreamEnd:
    count: int


Event = BlobStart | BlobData | BlobEnd | UpstreamHeader | StreamEnd


# --- downstream -----------------------------------------------------------------------


def encode_frame_header(sealed_size: int, tag: bytes) -> bytes:
    """The 33-byte header of a download frame: hex length, base64url tag, space."""
    if not 0 <= sealed_size <= MAX_FRAME_SIZE:
        raise ValueError(f"a sealed blob of {sealed_size} bytes cannot travel in a stream")
    if len(tag) != TAG_SIZE:
        raise ValueError("tag must be 16 bytes")
    return b"%08x" % sealed_size + b64url_encode(tag) + b" "


def encode_frame(sealed: bytes) -> bytes:
    return encode_frame_header(len(sealed), sealed[-TAG_SIZE:].rjust(TAG_SIZE, b"\0")) + sealed


class _Reader:
    """Shared buffering for both readers."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False
        self._done = False
        self._index = 0  # blob being read or next to be read
        self._remaining = -1  # bytes left of the current blob body; -1: not in a body
        # As in h11, an error is final: the state it left behind is not a state to go on
        # from (a frame whose tag failed would be skipped and the next read as the same blob).
        self._error: ProtocolError | None = None

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA; raises StreamError (or LimitExceeded) for bad input."""
        if self._error is not None:
            raise self._error
        if self._done:
            raise RuntimeError("next_event() after StreamEnd")
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> Event | _NeedData:
        raise NotImplementedError

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise RuntimeError("receive_data() after end of input")
        if data:
            self._buf += data
        else:
            self._eof = True

    def _body_event(self) -> Event | _NeedData:
        """While in a body: the next piece, the end, or NEED_DATA."""
        if self._remaining == 0:
            self._remaining = -1
            ev = self._end_blob()
            self._index += 1
            return ev
        if not self._buf:
            if self._eof:
                raise self._short()
            return NEED_DATA
        n = min(self._remaining, len(self._buf))
        piece = bytes(self._buf[:n])
        del self._buf[:n]
        self._remaining -= n
        self._on_body(piece)
        return BlobData(self._index, piece)

    def _on_body(self, piece: bytes) -> None:
        pass

    def _end_blob(self) -> Event:
        raise NotImplementedError

    def _short(self) -> StreamError:
        raise NotImplementedError

    def _finish(self) -> Event | _NeedData:
        if self._buf:
            raise StreamError(f"{len(self._buf)} bytes of trailing garbage after the last blob")
        if not self._eof:
            return NEED_DATA
        self._done = True
        return StreamEnd(self._index)


class DownstreamReader(_Reader):
    """Read a download stream of frames, for the blob ids asked, in the order asked."""

    def __init__(self, blob_ids: list[str] | int) -> None:
        super().__init__()
        self._ids = list(blob_ids) if not isinstance(blob_ids, int) else None
        self._count = blob_ids if isinstance(blob_ids, int) else len(blob_ids)
        self._tag = b""
        self._tail = bytearray()

    def _id(self) -> str | None:
        return self._ids[self._index] if self._ids is not None else None

    def _next_event(self) -> Event | _NeedData:
        if self._remaining >= 0:
            return self._body_event()
        if self._index == self._count:
            return self._finish()
        if len(self._buf) < FRAME_HEADER_SIZE:
            if self._eof:
                raise self._short()
            return NEED_DATA
        header = bytes(self._buf[:FRAME_HEADER_SIZE])
        try:
            size = int(header[:8], 16)
            if not all(c in b"0123456789abcdefABCDEF" for c in header[:8]):
                raise ValueError
            tag = b64url_decode(header[8:32])
        except (ValueError, binascii.Error):
            raise StreamError(f"garbled frame header {header!r}", blob_id=self._id()) from None
        if header[32:33] != b" " or len(tag) != TAG_SIZE:
            raise StreamError(f"garbled frame header {header!r}", blob_id=self._id())
        del self._buf[:FRAME_HEADER_SIZE]
        self._remaining = size
        self._tag = tag
        self._tail.clear()
        return BlobStart(self._index, self._id(), size, tag)

    def _on_body(self, piece: bytes) -> None:
        self._tail += piece[-TAG_SIZE:]
        if len(self._tail) > TAG_SIZE:
            del self._tail[:-TAG_SIZE]

    def _end_blob(self) -> Event:
        if bytes(self._tail) != self._tag:
            raise FrameTagMismatch(
                "frame tag does not match its blob's last bytes", blob_id=self._id()
            )
        return BlobEnd(self._index, self._id())

    def _short(self) -> StreamError:
        return StreamError(
            f"stream ended after {self._index} of {self._count} blobs", blob_id=self._id()
        )


# --- upstream -------------------------------------------------------------------------


def encode_upstream_header(items: list[tuple[str, int]] | list[tuple[Any, ...]]) -> bytes:
    """The first line of an upload stream: JSON ``[[id, size], ...]`` and a newline; an
    item ``(id, size, meta)`` carries the blob's meta as a third element (SPEC 11)."""
    # Tuples are JSON arrays as lists are: no list built per blob.
    return json.dumps(items).encode() + b"\n"


class UpstreamReader(_Reader):
    """Read an upload stream: a JSON header line, then the blobs it lists, back to back.

    Limits: the header line (413 past ``max_header``), one blob (``max_blob_size``), the
    whole stream (``max_stream_size``). Sizes are checked from the header, before bodies.
    """

    def __init__(
        self,
        max_header: int = MAX_JSON_HEADER,
        max_blob_size: int | None = None,
        max_stream_size: int | None = None,
        *,
        meta_room: int | None = 0,
    ) -> None:
        """``meta_room``: bytes the header line may have past ``max_header`` for the metas
        it carries (SPEC 11); what is not meta stays within ``max_header``. None: pairs
        with a meta are refused (400), as by a server without SPEC 11."""
        super().__init__()
        self._max_header = max_header
        self._meta_room = meta_room
        self._max_line = max_header + (meta_room or 0)
        self._max_blob = max_blob_size
        self._max_stream = max_stream_size
        self._items: list[tuple[str, int]] | None = None
        self._scanned = 0  # header bytes already searched for the newline

    @property
    def items(self) -> list[tuple[str, int]] | None:
        return self._items

    def _next_event(self) -> Event | _NeedData:
        if self._items is None:
            return self._header()
        if self._remaining >= 0:
            return self._body_event()
        if self._index == len(self._items):
            return self._finish()
        blob_id, size = self._items[self._index]
        self._remaining = size
        return BlobStart(self._index, blob_id, size, None)

    def _header(self) -> Event | _NeedData:
        # Resume the search where the last one stopped: a header trickling in must not be
        # scanned again from its start on every read (quadratic in its length).
        limit = self._max_line + 1
        end = self._buf.find(b"\n", self._scanned, limit)
        if end < 0:
            self._scanned = min(len(self._buf), limit)
            if len(self._buf) > self._max_line:
                raise StreamError(
                    f"stream header longer than {self._max_line} bytes", status_hint=413
                )
            if self._eof:
                raise StreamError("stream ended inside its header")
            return NEED_DATA
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        items, metas = parse_header(
            line, self._max_blob, self._max_stream, metas=self._meta_room is not None
        )
        if len(line) > self._max_header and (
            len(line) - sum(map(len, metas.values())) > self._max_header
        ):
            # The room past max_header is the metas' only.
            raise StreamError(
                f"stream header longer than {self._max_header} bytes besides its metas",
                status_hint=413,
            )
        self._items = items
        return UpstreamHeader(list(items), metas)

    def take_whole(self, max_size: int) -> list[tuple[str, bytes]] | None:
        """The blobs from the next one on whose bytes are all buffered, each of at most
        ``max_size`` bytes, taken out of the stream at once instead of as events: one
        copy each, and none of the three events per blob (which cost a small blob more
        than the rest of its parsing).

        ``[]`` when the next blob is one of those but not all here yet (feed more, then
        ask again); None when the next thing is not one (a larger blob, one begun through
        events, the end, the header, an error): ``next_event`` goes on from there.
        """
        items = self._items
        if items is None or self._remaining >= 0 or self._error is not None or self._done:
            return None
        index = self._index
        if index == len(items) or items[index][1] > max_size:
            return None
        buf = self._buf
        have = len(buf)
        if items[index][1] > have:
            return None if self._eof else []
        taken: list[tuple[str, bytes]] = []
        pos = 0
        with memoryview(buf) as view:
            for blob_id, size in items[index:]:
                if size > max_size or pos + size > have:
                    break
                taken.append((blob_id, bytes(view[pos : pos + size])))
                pos += size
        del buf[:pos]
        self._index = index + len(taken)
        return taken

    def _end_blob(self) -> Event:
        return BlobEnd(self._index, self._items[self._index][0])  # type: ignore[index]

    def _short(self) -> StreamError:
        blob_id = self._items[self._index][0] if self._items else None
        return StreamError(f"stream cut short inside blob {blob_id!r}", blob_id=blob_id)


def parse_upstream_header(
    line: bytes, max_blob_size: int | None = None, max_stream_size: int | None = None
) -> list[tuple[str, int]]:
    """The [blob_id, size] pairs of an upload header line (metas checked, not returned)."""
    return parse_header(line, max_blob_size, max_stream_size)[0]


def parse_header(
    line: bytes,
    max_blob_size: int | None = None,
    max_stream_size: int | None = None,
    *,
    metas: bool = True,
) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The pairs of an upload header line, and the metas of those that carry one (SPEC
    11: ``[blob_id, size, meta]``, meta a string or null); ``metas=False`` refuses a third
    element. A refusal never quotes a meta: metas stay out of every log."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StreamError("stream header is not JSON") from None
    if not isinstance(doc, list):
        raise StreamError("stream header is not a list of [blob_id, size] pairs")
    items: list[tuple[str, int]] = []
    found: dict[str, str] = {}
    seen: set[str] = set()
    total = 0
    for entry in doc:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], int)
            or isinstance(entry[1], bool)
        ):
            # The usual pair costs one test more than before: a third element is rare.
            if not (metas and _with_meta(entry)):
                shown = "[...]" if isinstance(entry, list) and len(entry) > 2 else repr(entry)
                raise StreamError(f"stream header entry {shown[:300]} is not a "
                                  "[blob_id, size] pair")
            meta = entry.pop()
            if meta is not None:
                _check_meta(entry[0], meta)
                found[entry[0]] = meta
        blob_id, size = entry
        if not valid_id(blob_id):
            raise StreamError(f"invalid blob_id {blob_id!r} in stream header", blob_id=blob_id)
        if size < 0:
            raise StreamError(f"negative size for blob {blob_id!r}", blob_id=blob_id)
        if blob_id in seen:
            raise StreamError(f"blob {blob_id!r} listed twice in stream header", blob_id=blob_id)
        if max_blob_size is not None and size > max_blob_size:
            raise LimitExceeded(f"blob {blob_id!r} is over the {max_blob_size}-byte limit")
        seen.add(blob_id)
        total += size
        items.append((blob_id, size))
    if max_stream_size is not None and total > max_stream_size:
        raise LimitExceeded(f"stream of {total} bytes is over the {max_stream_size}-byte limit")
    return items, found


def _with_meta(entry: object) -> bool:
    """``[blob_id, size, meta]`` with an id, a size and a string or null."""
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and type(entry[1]) is int
        and (entry[2] is None or isinstance(entry[2], str))
    )


def _check_meta(blob_id: str, meta: str) -> None:
    try:
        check_meta_text(meta)
    except ProtocolError as exc:
        # The same status (400, 413 past the length), naming the blob, never the meta.
        raise StreamError(f"meta of blob {blob_id[:300]!r}: {exc}",
                          status_hint=exc.status_hint, blob_id=blob_id) from None
