"""Byte ranges (RFC 9110 section 14) for GET of one blob: pure code, no I/O.

One range only. SPEC 4 makes the end inclusive, as RFC 9110 does (Soledad treated it as
exclusive). A header that is not of the ``bytes`` unit is ignored, as RFC 9110 requires;
a ``bytes`` header that is malformed, lists several ranges, or cannot be satisfied is
refused with 416 (RFC 9110 allows rejecting invalid ranges; one clear answer beats a
silent full download the client did not ask for).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from blobsync.format.errors import ProtocolError

_BYTES_UNIT = re.compile(r"\s*bytes\s*=(.*)", re.IGNORECASE | re.DOTALL)
# RFC 9110 positions are ASCII digits; \d would also take other scripts' digits.
_SPEC = re.compile(r"\s*([0-9]*)\s*-\s*([0-9]*)\s*")
# Digits beyond this cannot name an offset in any blob; refusing them keeps int() cheap.
_MAX_DIGITS = 20


class RangeNotSatisfiable(ProtocolError):
    status_hint = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range asked for in a blob of ``size`` bytes, or None for the whole blob.

    Raises RangeNotSatisfiable (416) for a malformed, multiple or unsatisfiable range.
    """
    if header is None:
        return None
    unit = _BYTES_UNIT.fullmatch(header)
    if unit is None:
        return None  # another unit, or no unit at all: RFC 9110 says ignore the header
    spec = unit.group(1)
    if "," in spec:
        raise RangeNotSatisfiable("only one byte range is supported", size)
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise RangeNotSatisfiable(f"malformed range {header!r}", size)
    first, last = m.group(1), m.group(2)
    if len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS:
        raise RangeNotSatisfiable("range bounds too large", size)
    if not first:
        if not last:
            raise RangeNotSatisfiable(f"malformed range {header!r}", size)
        suffix = int(last)  # bytes=-n: the last n bytes
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range", size)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last:
        end = int(last)
        if end < start:
            raise RangeNotSatisfiable(f"range end before its start in {header!r}", size)
    else:
        end = size - 1
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at {start}, blob has {size} bytes", size)
    return ByteRange(start, min(end, size - 1))
