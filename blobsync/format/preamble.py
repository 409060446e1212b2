"""The preamble that opens every sealed blob (SPEC 2), and the sealed head that carries it.

The preamble is 552 raw bytes laid out as Python's native struct ``2sbbQ16s255p255pQ`` on
x86_64. We pack it with the explicit little-endian form so the bytes never depend on the
host. Soledad's legacy 542-byte preamble, which lacks ``content_size``, is still decoded.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import InvalidBlob
from .limits import MAX_ID_LENGTH

MAGIC = b"\x13\x37"
PREAMBLE_FORMAT = struct.Struct("<2sbb4xQ16s255p255p2xQ")
LEGACY_PREAMBLE_FORMAT = struct.Struct("<2sbb4xQ16s255p255p")
PREAMBLE_SIZE = PREAMBLE_FORMAT.size  # 552
LEGACY_PREAMBLE_SIZE = LEGACY_PREAMBLE_FORMAT.size  # 542
ENCODED_PREAMBLE_SIZE = 736  # base64 of 552 bytes, padding kept
LEGACY_ENCODED_PREAMBLE_SIZE = 724  # base64 of 542 bytes
# The sealed head is the encoded preamble and one space; this many bytes always decide it.
MAX_HEAD_SIZE = ENCODED_PREAMBLE_SIZE + 1

IMMUTABLE_REVISION = "ImmutableRevision"
EXTERNAL_REVISION = "0"
IV_SIZE = 16
TAG_SIZE = 16

assert PREAMBLE_SIZE == 552 and LEGACY_PREAMBLE_SIZE == 542


class Scheme(IntEnum):
    SYMKEY = 1  # sealed by a client with a key derived from its storage secret
    EXTERNAL = 2  # delivered already encrypted by a trusted service


class Method(IntEnum):
    AES_256_CTR = 1  # legacy, refused
    AES_256_GCM = 2
    PGP = 3


@dataclass(frozen=True, slots=True)
class Preamble:
    scheme: Scheme
    method: Method
    timestamp: int
    iv: bytes
    blob_id: str
    rev: str
    content_size: int | None  # None only for a legacy preamble

    def encode(self) -> bytes:
        """The 552 raw bytes. Raises ValueError for a preamble that cannot be encoded."""
        bid = self.blob_id.encode("utf-8")
        rev = self.rev.encode("utf-8")
        if len(bid) > MAX_ID_LENGTH:
            raise ValueError(f"blob_id: longer than {MAX_ID_LENGTH} bytes")
        if len(rev) > MAX_ID_LENGTH:
            raise ValueError(f"rev: longer than {MAX_ID_LENGTH} bytes")
        if len(self.iv) != IV_SIZE:
            raise ValueError(f"iv: must be {IV_SIZE} bytes")
        if self.content_size is None:
            raise ValueError("content_size: required")
        return PREAMBLE_FORMAT.pack(
            MAGIC, int(self.scheme), int(self.method), self.timestamp, self.iv, bid, rev,
            self.content_size,
        )

    def encode_b64(self) -> bytes:
        """The 736 base64url characters that open a sealed blob."""
        return binascii.b2a_base64(self.encode(), newline=False).translate(_TO_URLSAFE)

    @classmethod
    def decode(cls, raw: bytes) -> Preamble:
        """Decode 552 (or legacy 542) raw bytes; InvalidBlob names the field that is wrong."""
        if len(raw) == PREAMBLE_SIZE:
            fmt = PREAMBLE_FORMAT
        elif len(raw) == LEGACY_PREAMBLE_SIZE:
            fmt = LEGACY_PREAMBLE_FORMAT
        else:
            raise InvalidBlob(f"preamble: {len(raw)} bytes, expected {PREAMBLE_SIZE}")
        values = fmt.unpack(raw)
        magic, scheme, method, timestamp, iv, bid, rev = values[:7]
        content_size = values[7] if fmt is PREAMBLE_FORMAT else None
        if magic != MAGIC:
            raise InvalidBlob("preamble magic: not 0x1337")
        if raw[4:8] != b"\0\0\0\0" or (fmt is PREAMBLE_FORMAT and raw[542:544] != b"\0\0"):
            raise InvalidBlob("preamble padding: not zero")
        for name, offset in (("blob_id", 32), ("rev", 287)):
            if raw[offset] > MAX_ID_LENGTH:
                raise InvalidBlob(f"preamble {name}: length byte {raw[offset]} over 254")
        # Dict lookups, not Scheme(scheme): an enum call costs a microsecond, and the
        # server decodes a preamble per blob stored.
        scheme_v = _SCHEMES.get(scheme)
        if scheme_v is None:
            raise InvalidBlob(f"preamble scheme: unknown value {scheme}")
        method_v = _METHODS.get(method)
        if method_v is None:
            raise InvalidBlob(f"preamble method: unknown value {method}")
        if method_v is Method.AES_256_CTR:
            raise InvalidBlob("preamble method: aes_256_ctr is legacy and refused")
        if scheme_v is Scheme.SYMKEY and method_v is not Method.AES_256_GCM:
            raise InvalidBlob("preamble method: symkey blobs must use aes_256_gcm")
        try:
            blob_id = bid.decode("utf-8")
            rev_s = rev.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidBlob("preamble blob_id or rev: not UTF-8") from None
        return cls(scheme_v, method_v, timestamp, iv, blob_id, rev_s, content_size)

    def check(self, blob_id: str) -> None:
        """Check what opening demands beyond the layout: the id asked for, and the rev."""
        if self.blob_id != blob_id:
            raise InvalidBlob(f"preamble blob_id: {self.blob_id!r}, expected {blob_id!r}")
        expected_rev = IMMUTABLE_REVISION if self.scheme is Scheme.SYMKEY else EXTERNAL_REVISION
        if self.rev != expected_rev:
            raise InvalidBlob(f"preamble rev: {self.rev!r}, expected {expected_rev!r}")


_SCHEMES = {int(v): v for v in Scheme}
_METHODS = {int(v): v for v in Method}

_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def b64url_encode(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE)


def b64url_decode(data: bytes) -> bytes:
    """Strict, canonical base64url with padding: anything else is binascii.Error.

    Canonical matters: a2b_base64 ignores the unused low bits of a padded last group, so
    without the check two different heads (a legacy 724-char one, say) decode alike and
    sealed bytes could be altered without any check noticing.
    """
    if b"+" in data or b"/" in data:
        raise binascii.Error("not base64url")
    raw = binascii.a2b_base64(data.translate(_FROM_URLSAFE), strict_mode=True)
    # Without padding every character's six bits are used (strict mode refuses anything
    # outside the alphabet): only a padded text can be non-canonical. A current preamble
    # (552 bytes) has no padding, so the usual case skips the round trip.
    if b"=" in data and b64url_encode(raw) != data:
        raise binascii.Error("not canonical base64url")
    return raw


@dataclass(frozen=True, slots=True)
class SealedHead:
    preamble: Preamble
    raw_preamble: bytes  # the exact raw bytes, the associated data of the cipher
    size: int  # bytes of the head in the sealed blob: encoded preamble plus the space


def parse_sealed_head(buf: bytes | bytearray | memoryview) -> SealedHead | None:
    """Parse the head of a sealed blob from its first bytes.

    Returns None while fewer bytes than needed have arrived. ``buf`` may hold more than the
    head. Raises InvalidBlob when the head is garbled.
    """
    view = bytes(buf[:MAX_HEAD_SIZE])
    if len(view) > LEGACY_ENCODED_PREAMBLE_SIZE and view[LEGACY_ENCODED_PREAMBLE_SIZE] == 0x20:
        encoded = view[:LEGACY_ENCODED_PREAMBLE_SIZE]
    elif len(view) == MAX_HEAD_SIZE:
        if view[ENCODED_PREAMBLE_SIZE] != 0x20:
            raise InvalidBlob("sealed head: no space after the encoded preamble")
        encoded = view[:ENCODED_PREAMBLE_SIZE]
    else:
        return None
    try:
        raw = b64url_decode(encoded)
    except (binascii.Error, ValueError):
        raise InvalidBlob("sealed head: preamble is not base64url") from None
    return SealedHead(Preamble.decode(raw), raw, len(encoded) + 1)
