"""Shared material of the format tests: the vectors, and h11-style ways to feed bytes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from blobsync.format import (
    NEED_DATA,
    BlobData,
    DownstreamReader,
    InvalidBlob,
    Opened,
    Opener,
    StreamEnd,
    UpstreamReader,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors-format-v1.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
SECRET = bytes.fromhex(VECTORS["secret_hex"])


@dataclass(frozen=True)
class SealedVector:
    blob_id: str
    plaintext: bytes
    iv: bytes
    timestamp: int
    content_size: int
    sealed: bytes
    sealed_size: int
    tag_b64url: str


SEALED: list[SealedVector] = [
    SealedVector(
        blob_id=case["blob_id"],
        plaintext=base64.b64decode(case["plaintext_b64"]),
        iv=bytes.fromhex(case["iv_hex"]),
        timestamp=case["timestamp"],
        content_size=case["content_size"],
        sealed=base64.b64decode(case["sealed_b64"]),
        sealed_size=case["sealed_size"],
        tag_b64url=case["tag_b64url"],
    )
    for case in VECTORS["sealed"]
]
SEALED_BY_ID = {v.blob_id: v for v in SEALED}
EXTERNAL = VECTORS["external"]
EXTERNAL_PAYLOAD = base64.b64decode(EXTERNAL["payload_b64"])
EXTERNAL_SEALED = base64.b64decode(EXTERNAL["sealed_b64"])
DOWNSTREAM_IDS: list[str] = json.loads(VECTORS["downstream"]["request_json"])
DOWNSTREAM_BODY = base64.b64decode(VECTORS["downstream"]["body_b64"])
UPSTREAM_BODY = base64.b64decode(VECTORS["upstream"]["body_b64"])
UPSTREAM_FIRST_LINE: str = VECTORS["upstream"]["first_line"]


# --- feeding ------------------------------------------------------------------------------


def whole(data: bytes) -> list[bytes]:
    return [data] if data else []


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Split at the given offsets. Never yields an empty piece: to a reader b"" means EOF."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@st.composite
def splits(draw: st.DrawFn, data: bytes, max_cuts: int = 40) -> list[bytes]:
    """A random split of ``data`` into non-empty pieces."""
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=max_cuts))
    return split_at(data, cuts)


# --- driving readers ----------------------------------------------------------------------

Reader = DownstreamReader | UpstreamReader
MAX_EVENTS_PER_PULL = 10_000


def pull(reader: Reader) -> list[Any]:
    """Every event available now, up to NEED_DATA or StreamEnd."""
    events: list[Any] = []
    while True:
        # A reader stuck handing out events without consuming input fails, not hangs.
        assert len(events) < MAX_EVENTS_PER_PULL, f"runaway reader: {events[-3:]!r}"
        ev = reader.next_event()
        if ev is NEED_DATA:
            return events
        events.append(ev)
        if isinstance(ev, StreamEnd):
            return events


def drive(reader: Reader, chunks: Iterable[bytes], *, eof: bool = True) -> list[Any]:
    """Feed ``chunks`` one at a time, pulling events after each, then end input."""
    events: list[Any] = []
    for chunk in chunks:
        assert chunk, "an empty chunk would mean end of input"
        reader.receive_data(chunk)
        events.extend(pull(reader))
    if eof:
        reader.receive_data(b"")
        events.extend(pull(reader))
    return events


def merged(events: list[Any]) -> list[Any]:
    """Events with consecutive BlobData of one blob joined, so any split compares equal."""
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, BlobData) and out and isinstance(out[-1], BlobData):
            if out[-1].index == ev.index:
                out[-1] = BlobData(ev.index, out[-1].data + ev.data)
                continue
        out.append(ev)
    return out


def chunks_of(events: list[Any], index: int) -> Iterator[bytes]:
    return (ev.data for ev in events if isinstance(ev, BlobData) and ev.index == index)


# --- opening ------------------------------------------------------------------------------


def open_chunks(
    secret: bytes | None, blob_id: str, chunks: Iterable[bytes]
) -> tuple[Opened, bytes]:
    """Open a sealed blob fed piece by piece; returns the report and the plaintext."""
    parts: list[bytes] = []
    opener = Opener(secret, blob_id)
    for chunk in chunks:
        parts.append(opener.feed(chunk))
    opened = opener.finish()
    parts.append(opened.rest)
    return opened, b"".join(parts)


def refusal(
    secret: bytes | None,
    blob_id: str,
    chunks: Iterable[bytes],
    sink: Callable[[bytes], object] | None = None,
) -> Exception:
    """Feed a blob that must be refused; returns the InvalidBlob it was refused with.

    Whether feed() or finish() notices first, finish() must never report success.
    """
    opener = Opener(secret, blob_id)
    first: Exception | None = None
    try:
        for chunk in chunks:
            out = opener.feed(chunk)
            if out and sink is not None:
                sink(out)
    except InvalidBlob as exc:
        first = exc
    try:
        opened = opener.finish()
    except InvalidBlob as exc:
        return first or exc
    raise AssertionError(f"a blob that must be refused was opened: {opened!r}")
