"""The Range parser (RFC 9110, one range, inclusive end): pure unit tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blobsync.server.ranges import ByteRange, RangeNotSatisfiable, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=0-9", 10, ByteRange(0, 9)),
        ("bytes=2-5", 10, ByteRange(2, 5)),  # inclusive end: 4 bytes
        ("bytes=2-", 10, ByteRange(2, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=-30", 10, ByteRange(0, 9)),  # a suffix longer than the blob is all of it
        ("bytes=5-100", 10, ByteRange(5, 9)),  # the end is clipped
        ("bytes=9-9", 10, ByteRange(9, 9)),
        ("BYTES = 1 - 2", 10, ByteRange(1, 2)),
        ("items=0-5", 10, None),  # another unit: ignored (RFC 9110)
        ("0-5", 10, None),
    ],
)
def test_satisfiable(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),  # starts past the end
        ("bytes=10-20", 10),
        ("bytes=5-4", 10),  # end before start
        ("bytes=-0", 10),
        ("bytes=-", 10),
        ("bytes=", 10),
        ("bytes=a-b", 10),
        ("bytes=1-2,4-5", 10),  # one range only
        ("bytes=0-", 0),
        ("bytes=-5", 0),
        ("bytes=" + "9" * 30 + "-", 10),
        ("bytes=--1", 10),
        ("bytes=+1-2", 10),
    ],
)
def test_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    assert info.value.status_hint == 416
    assert info.value.size == size


def test_content_range() -> None:
    assert ByteRange(2, 5).content_range(10) == "bytes 2-5/10"
    assert ByteRange(2, 5).length == 4


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 1000))
def test_slice_agrees_with_python(first: int, last: int, size: int) -> None:
    data = bytes(range(256)) * 4
    data = data[:size]
    header = f"bytes={first}-{last}"
    if first > last or first >= size:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    rng = parse_range(header, size)
    assert rng is not None
    assert data[rng.start : rng.end + 1] == data[first : last + 1]
    assert rng.length == len(data[first : last + 1])
