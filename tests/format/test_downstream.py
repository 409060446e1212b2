"""DownstreamReader and download frames (SPEC 3), fed the ways h11's test_io feeds."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobsync.format import (
    NEED_DATA,
    BlobData,
    BlobEnd,
    BlobStart,
    DownstreamReader,
    FrameTagMismatch,
    StreamEnd,
    StreamError,
    encode_frame,
    encode_frame_header,
    seal,
)

from .helpers import (
    DOWNSTREAM_BODY,
    DOWNSTREAM_IDS,
    SEALED_BY_ID,
    SECRET,
    bytewise,
    chunked,
    drive,
    merged,
    pull,
    splits,
    whole,
)

Feed = Callable[[bytes], list[bytes]]
SEALED = [SEALED_BY_ID[i].sealed for i in DOWNSTREAM_IDS]
FRAME_ENDS = [sum(33 + len(s) for s in SEALED[: i + 1]) for i in range(len(SEALED))]
assert FRAME_ENDS[-1] == len(DOWNSTREAM_BODY)


def expected_events(ids: list[str | None]) -> list[object]:
    out: list[object] = []
    for index, (blob_id, sealed) in enumerate(zip(ids, SEALED, strict=True)):
        out += [
            BlobStart(index, blob_id, len(sealed), sealed[-16:]),
            BlobData(index, sealed),
            BlobEnd(index, blob_id),
        ]
    return [*out, StreamEnd(len(ids))]


def blob_at(offset: int) -> str:
    """The id of the frame a stream cut at ``offset`` was reading."""
    return next(DOWNSTREAM_IDS[i] for i, end in enumerate(FRAME_ENDS) if offset < end)


def run_to_error(reader: DownstreamReader, chunks: list[bytes]) -> tuple[StreamError, bool]:
    """Drive a reader that must fail; returns the error and whether it came at end of input."""
    events: list[object] = []
    at_eof = False
    try:
        for chunk in chunks:
            reader.receive_data(chunk)
            events += pull(reader)
        at_eof = True
        drive(reader, [])
    except StreamError as exc:
        assert not any(isinstance(ev, StreamEnd) for ev in events)
        return exc, at_eof
    raise AssertionError("a bad stream was read without error")


# --- good streams -------------------------------------------------------------------------


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
def test_fed_whole_or_bytewise(feed: Feed) -> None:
    events = drive(DownstreamReader(DOWNSTREAM_IDS), feed(DOWNSTREAM_BODY))
    assert merged(events) == expected_events(list(DOWNSTREAM_IDS))


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_fed_random_splits(data: st.DataObject) -> None:
    chunks = data.draw(splits(DOWNSTREAM_BODY))
    events = drive(DownstreamReader(DOWNSTREAM_IDS), chunks)
    assert merged(events) == expected_events(list(DOWNSTREAM_IDS))
    # No event carries more than arrived in one chunk, nor spans two blobs.
    assert all(len(ev.data) <= max(map(len, chunks)) for ev in events if isinstance(ev, BlobData))


def test_count_instead_of_ids() -> None:
    events = drive(DownstreamReader(len(DOWNSTREAM_IDS)), [DOWNSTREAM_BODY])
    assert merged(events) == expected_events([None] * len(DOWNSTREAM_IDS))


def test_empty_stream() -> None:
    assert drive(DownstreamReader([]), []) == [StreamEnd(0)]


def test_large_frame_streams_without_buffering() -> None:
    sealed = seal(SECRET, "big", os.urandom(3 * 2**20))
    body = encode_frame(sealed)
    reader = DownstreamReader(["big"])
    fed = 0
    handed_out = 0
    for chunk in chunked(body, 65536):
        reader.receive_data(chunk)
        fed += len(chunk)
        for ev in pull(reader):
            assert not isinstance(ev, BlobEnd | StreamEnd) or fed == len(body)
            if isinstance(ev, BlobData):
                assert len(ev.data) <= 65536
                handed_out += len(ev.data)
        # Everything of the blob that has arrived has been handed on.
        assert handed_out == fed - 33
    assert drive(reader, []) == [StreamEnd(1)]


def test_reader_api_misuse() -> None:
    reader = DownstreamReader(DOWNSTREAM_IDS)
    drive(reader, [DOWNSTREAM_BODY])
    with pytest.raises(RuntimeError):
        reader.receive_data(b"x")
    with pytest.raises(RuntimeError):
        reader.next_event()


# --- bad streams --------------------------------------------------------------------------


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
@pytest.mark.parametrize("garbage", [b"\n", b"0" * 33, encode_frame(SEALED[0])])
def test_trailing_garbage(feed: Feed, garbage: bytes) -> None:
    exc, _ = run_to_error(DownstreamReader(DOWNSTREAM_IDS), feed(DOWNSTREAM_BODY + garbage))
    assert exc.status_hint == 400 and "trailing" in str(exc)


def test_truncated_anywhere_fails_at_end_of_input() -> None:
    for end in range(len(DOWNSTREAM_BODY)):
        exc, at_eof = run_to_error(DownstreamReader(DOWNSTREAM_IDS), whole(DOWNSTREAM_BODY[:end]))
        assert at_eof, f"a good prefix of {end} bytes was refused early"
        assert exc.blob_id == blob_at(end) and exc.status_hint == 400


def test_truncated_fed_bytewise_fails_at_end_of_input() -> None:
    ends = {0, 1, 32, 33, 34, *FRAME_ENDS[:-1], FRAME_ENDS[0] + 33, len(DOWNSTREAM_BODY) - 1}
    ends |= set(range(0, len(DOWNSTREAM_BODY), 97))
    for end in sorted(ends):
        exc, at_eof = run_to_error(
            DownstreamReader(DOWNSTREAM_IDS), bytewise(DOWNSTREAM_BODY[:end])
        )
        assert at_eof and exc.blob_id == blob_at(end)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_random_splits_truncated_or_extended(data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        end = data.draw(st.integers(0, len(DOWNSTREAM_BODY) - 1))
        exc, at_eof = run_to_error(
            DownstreamReader(DOWNSTREAM_IDS), data.draw(splits(DOWNSTREAM_BODY[:end]))
        )
        assert at_eof and exc.blob_id == blob_at(end)
    else:
        body = DOWNSTREAM_BODY + data.draw(st.binary(min_size=1, max_size=50))
        run_to_error(DownstreamReader(DOWNSTREAM_IDS), data.draw(splits(body)))


def frame_with_header(header: bytes, sealed: bytes = SEALED[0]) -> bytes:
    assert len(header) == 33
    return header + sealed


GOOD_HEADER = encode_frame_header(len(SEALED[0]), SEALED[0][-16:])


def test_upper_case_hex_accepted() -> None:
    header = GOOD_HEADER[:8].upper() + GOOD_HEADER[8:]
    assert header != GOOD_HEADER  # the length of this vector has a hex letter in it
    events = drive(DownstreamReader(["a1b2c3d4e5f6"]), [frame_with_header(header)])
    assert merged(events)[1] == BlobData(0, SEALED[0])


@pytest.mark.parametrize(
    "size_field",
    [b"000002g1", b"+00002f1", b"0x0002f1", b" 00002f1", b"000002f ", b"0000_2f1", b"-00002f1",
     b"\xff\xff\xff\xff\xff\xff\xff\xff", b"\xd9\xa0" * 4],
)
def test_non_hex_size_refused(size_field: bytes) -> None:
    exc, _ = run_to_error(
        DownstreamReader(["a1b2c3d4e5f6"]), [frame_with_header(size_field + GOOD_HEADER[8:])]
    )
    assert exc.status_hint == 400 and exc.blob_id == "a1b2c3d4e5f6"
    assert "frame header" in str(exc)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h[:8] + h[8:32].replace(b"=", b"A") + h[32:],  # no padding
        lambda h: h[:8] + b"+" + h[9:],  # base64, not base64url
        lambda h: h[:8] + b"!" + h[9:],
        lambda h: h[:32] + b"x",  # no space
        lambda h: h[:8] + b"A" * 21 + b"B==" + h[32:],  # non-canonical padding bits
    ],
)
def test_garbled_tag_or_separator_refused(mutate: Callable[[bytes], bytes]) -> None:
    header = mutate(GOOD_HEADER)
    assert len(header) == 33 and header != GOOD_HEADER
    exc, _ = run_to_error(DownstreamReader(["a1b2c3d4e5f6"]), [frame_with_header(header)])
    assert exc.status_hint == 400 and exc.blob_id == "a1b2c3d4e5f6"


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
def test_header_tag_must_be_the_blobs_last_bytes(feed: Feed) -> None:
    other_tag = bytes(16)
    header = encode_frame_header(len(SEALED[1]), other_tag)
    body = encode_frame(SEALED[0]) + header + SEALED[1]
    reader = DownstreamReader(DOWNSTREAM_IDS)
    exc, _ = run_to_error(reader, feed(body))
    assert exc.blob_id == DOWNSTREAM_IDS[1] and "tag" in str(exc)
    # Its own type: a client tells "this blob is wrong" from "the stream is garbled" by it.
    assert isinstance(exc, FrameTagMismatch)
    # The error is final: the reader does not go on as if the frame had been fine.
    with pytest.raises(StreamError):
        reader.next_event()


def test_error_is_final() -> None:
    body = encode_frame_header(len(SEALED[0]), bytes(16)) + SEALED[0] + encode_frame(SEALED[1])
    reader = DownstreamReader(DOWNSTREAM_IDS)
    reader.receive_data(body)
    events = []
    with pytest.raises(StreamError):
        while (ev := reader.next_event()) is not NEED_DATA:
            events.append(ev)
    for _ in range(3):
        with pytest.raises(StreamError):
            reader.next_event()


def test_encode_frame_header_limits() -> None:
    tag = bytes(range(16))
    assert encode_frame_header(0xFFFFFFFF, tag)[:8] == b"ffffffff"
    assert len(encode_frame_header(0, tag)) == 33
    with pytest.raises(ValueError):
        encode_frame_header(0x100000000, tag)
    with pytest.raises(ValueError):
        encode_frame_header(-1, tag)
    with pytest.raises(ValueError):
        encode_frame_header(10, tag[:15])
