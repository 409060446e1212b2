"""UpstreamReader and the upload header (SPEC 3): events, limits and their status hints."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobsync.format import (
    MAX_JSON_HEADER,
    NEED_DATA,
    BlobData,
    BlobEnd,
    BlobStart,
    LimitExceeded,
    ProtocolError,
    StreamEnd,
    StreamError,
    UpstreamHeader,
    UpstreamReader,
    encode_upstream_header,
    parse_upstream_header,
)

from .helpers import (
    DOWNSTREAM_IDS,
    SEALED_BY_ID,
    UPSTREAM_BODY,
    bytewise,
    chunked,
    drive,
    merged,
    pull,
    splits,
    whole,
)

Feed = Callable[[bytes], list[bytes]]
ITEMS = [(i, SEALED_BY_ID[i].sealed_size) for i in DOWNSTREAM_IDS]
BLOBS = [SEALED_BY_ID[i].sealed for i in DOWNSTREAM_IDS]
HEADER_SIZE = UPSTREAM_BODY.index(b"\n") + 1
BLOB_ENDS = [HEADER_SIZE + sum(size for _, size in ITEMS[: i + 1]) for i in range(len(ITEMS))]
assert BLOB_ENDS[-1] == len(UPSTREAM_BODY)


def expected_events(items: list[tuple[str, int]], blobs: list[bytes]) -> list[object]:
    out: list[object] = [UpstreamHeader(items)]
    for index, ((blob_id, size), blob) in enumerate(zip(items, blobs, strict=True)):
        out.append(BlobStart(index, blob_id, size, None))
        if blob:
            out.append(BlobData(index, blob))
        out.append(BlobEnd(index, blob_id))
    return [*out, StreamEnd(len(items))]


def blob_at(offset: int) -> str | None:
    """The id of the blob a stream cut at ``offset`` was reading; None inside the header."""
    if offset < HEADER_SIZE:
        return None
    return next(ITEMS[i][0] for i, end in enumerate(BLOB_ENDS) if offset < end)


def run_to_error(reader: UpstreamReader, chunks: list[bytes]) -> tuple[ProtocolError, bool]:
    """Drive a reader that must fail; returns the error and whether it came at end of input."""
    events: list[object] = []
    at_eof = False
    try:
        for chunk in chunks:
            reader.receive_data(chunk)
            events += pull(reader)
        at_eof = True
        reader.receive_data(b"")
        events += pull(reader)
    except ProtocolError as exc:
        assert not any(isinstance(ev, StreamEnd) for ev in events)
        return exc, at_eof
    raise AssertionError(f"a bad stream was read without error: {events[-3:]!r}")


def refused(body: bytes, **limits: int) -> ProtocolError:
    exc, _ = run_to_error(UpstreamReader(**limits), whole(body))
    # The same body trickling in gets the same answer.
    exc2, _ = run_to_error(UpstreamReader(**limits), chunked(body, 7))
    assert type(exc2) is type(exc) and exc2.status_hint == exc.status_hint
    return exc


# --- good streams -------------------------------------------------------------------------


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
def test_fed_whole_or_bytewise(feed: Feed) -> None:
    reader = UpstreamReader()
    events = drive(reader, feed(UPSTREAM_BODY))
    assert merged(events) == expected_events(ITEMS, BLOBS)
    assert reader.items == ITEMS


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_fed_random_splits(data: st.DataObject) -> None:
    chunks = data.draw(splits(UPSTREAM_BODY))
    events = drive(UpstreamReader(), chunks)
    assert merged(events) == expected_events(ITEMS, BLOBS)


def test_empty_and_zero_sized_blobs() -> None:
    assert drive(UpstreamReader(), [b"[]\n"]) == [UpstreamHeader([]), StreamEnd(0)]
    items = [("a", 0), ("b", 3), ("c", 0)]
    body = encode_upstream_header(items) + b"xyz"
    for feed in (whole, bytewise):
        events = merged(drive(UpstreamReader(), feed(body)))
        assert events == expected_events(items, [b"", b"xyz", b""])


def test_large_blob_streams_without_buffering() -> None:
    blob = os.urandom(3 * 2**20)
    header = encode_upstream_header([("big", len(blob))])
    reader = UpstreamReader()
    reader.receive_data(header)
    start = BlobStart(0, "big", len(blob), None)
    assert pull(reader) == [UpstreamHeader([("big", len(blob))]), start]
    handed_out = 0
    for fed, chunk in enumerate(chunked(blob, 65536), start=1):
        reader.receive_data(chunk)
        events = pull(reader)
        if fed * 65536 < len(blob):
            assert events == [BlobData(0, chunk)]  # handed on at once, not held
        handed_out += sum(len(ev.data) for ev in events if isinstance(ev, BlobData))
        assert handed_out == min(fed * 65536, len(blob))
    assert drive(reader, []) == [StreamEnd(1)]


def test_header_round_trip() -> None:
    items = [("a", 1), ("B-_9", 2**40), ("z" * 254, 0)]
    line = encode_upstream_header(items)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == [list(item) for item in items]
    assert parse_upstream_header(line[:-1]) == items


def test_header_exactly_at_the_limit() -> None:
    line = encode_upstream_header([("a" * 40, 0)])
    limit = len(line) - 1  # the newline is not part of the line
    assert drive(UpstreamReader(max_header=limit), bytewise(line))[-1] == StreamEnd(1)
    exc = refused(line, max_header=limit - 1)
    assert isinstance(exc, StreamError) and exc.status_hint == 413


def test_long_header_trickling_in() -> None:
    items = [(f"blob-{i}", i) for i in range(20_000)]
    body = encode_upstream_header(items) + b"".join(b"x" * i for i in range(5))
    assert len(body) > 300_000
    reader = UpstreamReader()
    events = []
    for chunk in chunked(body[: body.index(b"\n") + 1], 1000):
        reader.receive_data(chunk)
        events += pull(reader)
    assert events[0] == UpstreamHeader(items)


def test_reader_api_misuse() -> None:
    reader = UpstreamReader()
    drive(reader, [UPSTREAM_BODY])
    with pytest.raises(RuntimeError):
        reader.receive_data(b"x")
    with pytest.raises(RuntimeError):
        reader.next_event()


# --- truncated and extended streams -------------------------------------------------------


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
@pytest.mark.parametrize("garbage", [b"\n", b"x", BLOBS[0]])
def test_trailing_garbage(feed: Feed, garbage: bytes) -> None:
    exc, _ = run_to_error(UpstreamReader(), feed(UPSTREAM_BODY + garbage))
    assert isinstance(exc, StreamError) and exc.status_hint == 400
    assert "trailing" in str(exc)


def test_truncated_anywhere_fails_at_end_of_input() -> None:
    for end in range(len(UPSTREAM_BODY)):
        exc, at_eof = run_to_error(UpstreamReader(), whole(UPSTREAM_BODY[:end]))
        assert at_eof, f"a good prefix of {end} bytes was refused early"
        assert isinstance(exc, StreamError) and exc.status_hint == 400
        assert exc.blob_id == blob_at(end)


def test_truncated_fed_bytewise_fails_at_end_of_input() -> None:
    ends = {0, 1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, *BLOB_ENDS[:-1]}
    ends |= set(range(0, len(UPSTREAM_BODY), 89)) | {len(UPSTREAM_BODY) - 1}
    for end in sorted(ends):
        exc, at_eof = run_to_error(UpstreamReader(), bytewise(UPSTREAM_BODY[:end]))
        assert at_eof and isinstance(exc, StreamError) and exc.blob_id == blob_at(end)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_random_splits_truncated_or_extended(data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        end = data.draw(st.integers(0, len(UPSTREAM_BODY) - 1))
        exc, at_eof = run_to_error(UpstreamReader(), data.draw(splits(UPSTREAM_BODY[:end])))
        assert at_eof and isinstance(exc, StreamError) and exc.blob_id == blob_at(end)
    else:
        body = UPSTREAM_BODY + data.draw(st.binary(min_size=1, max_size=50))
        run_to_error(UpstreamReader(), data.draw(splits(body)))


# --- malformed headers and limits ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "blob_id"),
    [
        (b'[["a", 1]', None),  # garbled
        (b"\xff\xfe[]", None),  # not UTF-8
        (b"", None),
        (b"not json", None),
        (b'{"a": 1}', None),  # not a list
        (b'"a"', None),
        (b"3", None),
        (b"null", None),
        (b'[["a"]]', None),  # not pairs
        (b'[["a", 1, 2]]', None),
        (b'[[1, "a"]]', None),
        (b'["a", 1]', None),
        (b'[["a", "1"]]', None),
        (b'[["a", 1.0]]', None),
        (b'[["a", true]]', None),
        (b'[["a", null]]', None),
        (b'[["", 1]]', ""),  # bad ids
        (b'[["a/b", 1]]', "a/b"),
        (b'[["..", 1]]', ".."),
        (b'[["a b", 1]]', "a b"),
        (b'[["\\u00e9", 1]]', "\u00e9"),
        (b'[["a\\n", 1]]', "a\n"),
        (b'[["' + b"x" * 255 + b'", 1]]', "x" * 255),
        (b'[["a", -1]]', "a"),  # negative size
        (b'[["ok", 1], ["b", -5]]', "b"),
        (b'[["a", 1], ["b", 2], ["a", 3]]', "a"),  # duplicate
    ],
)
def test_malformed_header_is_400(line: bytes, blob_id: str | None) -> None:
    exc = refused(line + b"\n" + b"x" * 10)
    assert isinstance(exc, StreamError) and not isinstance(exc, LimitExceeded)
    assert exc.status_hint == 400 and exc.blob_id == blob_id
    with pytest.raises(StreamError):
        parse_upstream_header(line)


def test_header_without_newline_is_400() -> None:
    exc, at_eof = run_to_error(UpstreamReader(), [b'[["a", 1]]'])
    assert at_eof and exc.status_hint == 400 and "header" in str(exc)


@pytest.mark.parametrize("newline", [True, False], ids=["line", "no-newline"])
@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
def test_header_over_max_header_is_413(newline: bool, feed: Feed) -> None:
    line = encode_upstream_header([(f"b{i}", i) for i in range(30)])[:-1]
    body = line + (b"\n" if newline else b" " * 50)
    exc, at_eof = run_to_error(UpstreamReader(max_header=len(line) - 1), feed(body))
    assert exc.status_hint == 413 and not at_eof  # refused before the whole body came


def test_header_limit_default() -> None:
    assert MAX_JSON_HEADER == 1 << 20
    exc = refused(b"[" + b" " * MAX_JSON_HEADER + b"]\n")
    assert exc.status_hint == 413


def test_blob_over_max_blob_size_is_413() -> None:
    line = encode_upstream_header([("a", 100), ("b", 101)])
    assert drive(UpstreamReader(max_blob_size=101), [line + b"x" * 201])[-1] == StreamEnd(2)
    exc = refused(line + b"x" * 201, max_blob_size=100)
    assert isinstance(exc, LimitExceeded) and exc.status_hint == 413 and "b" in str(exc)
    # Refused from the header alone, before a byte of any body arrives.
    reader = UpstreamReader(max_blob_size=100)
    reader.receive_data(line)
    with pytest.raises(LimitExceeded):
        pull(reader)


def test_stream_over_max_stream_size_is_413() -> None:
    line = encode_upstream_header([("a", 100), ("b", 101)])
    assert drive(UpstreamReader(max_stream_size=201), [line + b"x" * 201])[-1] == StreamEnd(2)
    exc = refused(line + b"x" * 201, max_stream_size=200)
    assert isinstance(exc, LimitExceeded) and exc.status_hint == 413


def test_error_is_final() -> None:
    reader = UpstreamReader(max_blob_size=1)
    reader.receive_data(encode_upstream_header([("a", 5)]) + b"12345")
    for _ in range(3):
        with pytest.raises(LimitExceeded):
            reader.next_event()


# --- take_whole: small blobs without events --------------------------------------------


def drive_taking(reader: UpstreamReader, chunks: list[bytes], max_size: int) -> list[object]:
    """As drive, but taking whole blobs of at most ``max_size`` whenever the reader offers
    them (recorded as the events they stand for), events otherwise."""
    out: list[object] = []
    pending = list(chunks)
    while True:
        taken = reader.take_whole(max_size)
        if taken:
            for blob_id, data in taken:
                index = next(i for i, (b, _) in enumerate(reader.items or []) if b == blob_id)
                out.append(BlobStart(index, blob_id, len(data), None))
                if data:
                    out.append(BlobData(index, data))
                out.append(BlobEnd(index, blob_id))
            continue
        if taken is not None:  # the next blob is one to take but not all in yet
            reader.receive_data(pending.pop(0) if pending else b"")
            continue
        ev = reader.next_event()
        if ev is NEED_DATA:
            reader.receive_data(pending.pop(0) if pending else b"")
            continue
        out.append(ev)
        if isinstance(ev, StreamEnd):
            return out


@settings(max_examples=50, deadline=None)
@given(st.data(), st.sampled_from([0, 900, 1 << 20]))
def test_take_whole_gives_the_same_blobs(data: st.DataObject, max_size: int) -> None:
    chunks = data.draw(splits(UPSTREAM_BODY))
    events = drive_taking(UpstreamReader(), chunks, max_size)
    assert merged(events) == expected_events(ITEMS, BLOBS)


def test_take_whole_leaves_larger_blobs_and_errors_to_events() -> None:
    items = [("a", 3), ("big", 10), ("c", 2)]
    reader = UpstreamReader()
    assert reader.take_whole(5) is None  # no header yet
    reader.receive_data(encode_upstream_header(items) + b"xyz" + b"0123456789" + b"q")
    assert reader.next_event() == UpstreamHeader(items)
    assert reader.take_whole(5) == [("a", b"xyz")]
    assert reader.take_whole(5) is None  # "big" goes through events
    events = [reader.next_event() for _ in range(3)]
    assert events == [BlobStart(1, "big", 10, None), BlobData(1, b"0123456789"),
                      BlobEnd(1, "big")]
    assert reader.take_whole(5) == []  # "c" is not all here
    reader.receive_data(b"")
    assert reader.take_whole(5) is None  # cut short: the events say so
    with pytest.raises(StreamError, match="cut short inside blob 'c'"):
        pull(reader)
    assert reader.take_whole(5) is None
