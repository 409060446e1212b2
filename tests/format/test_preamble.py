"""The 552-byte preamble and the sealed head that carries it (SPEC 2)."""

from __future__ import annotations

import base64
import platform
import struct
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from blobsync.format import (
    ENCODED_PREAMBLE_SIZE,
    PREAMBLE_SIZE,
    InvalidBlob,
    Method,
    Preamble,
    Scheme,
    b64url_decode,
    b64url_encode,
    parse_sealed_head,
)

# Written out here rather than imported, so the tests hold the code to SPEC's layout.
LAYOUT = "<2sbb4xQ16s255p255p2xQ"
LEGACY_LAYOUT = "<2sbb4xQ16s255p255p"
IV = bytes(range(16))


def symkey(blob_id: str = "blob-1", content_size: int | None = 4096) -> Preamble:
    return Preamble(
        Scheme.SYMKEY, Method.AES_256_GCM, 1_700_000_000, IV, blob_id, "ImmutableRevision",
        content_size,
    )


def external(blob_id: str = "in-1", size: int = 77) -> Preamble:
    return Preamble(Scheme.EXTERNAL, Method.PGP, 1_600_000_000, bytes(16), blob_id, "0", size)


def raw_fields(
    magic: bytes = b"\x13\x37",
    scheme: int = 1,
    method: int = 2,
    timestamp: int = 1_700_000_000,
    iv: bytes = IV,
    blob_id: bytes = b"blob-1",
    rev: bytes = b"ImmutableRevision",
) -> tuple[object, ...]:
    return (magic, scheme, method, timestamp, iv, blob_id, rev)


def raw(content_size: int = 4096, **fields: object) -> bytes:
    return struct.pack(LAYOUT, *raw_fields(**fields), content_size)  # type: ignore[arg-type]


def legacy_raw(**fields: object) -> bytes:
    return struct.pack(LEGACY_LAYOUT, *raw_fields(**fields))  # type: ignore[arg-type]


# --- layout and round trips ---------------------------------------------------------------


def test_sizes() -> None:
    assert PREAMBLE_SIZE == 552 == struct.calcsize(LAYOUT)
    assert struct.calcsize(LEGACY_LAYOUT) == 542
    assert ENCODED_PREAMBLE_SIZE == 736 == len(base64.urlsafe_b64encode(bytes(552)))


def test_encode_matches_spec_layout() -> None:
    assert symkey().encode() == raw()
    assert symkey().encode_b64() == base64.urlsafe_b64encode(raw())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="native x86_64")
def test_encode_matches_native_struct_on_x86_64() -> None:
    # SPEC 2: Soledad packed with the native format; on x86_64 the bytes are the same.
    assert symkey().encode() == struct.pack("2sbbQ16s255p255pQ", *raw_fields(), 4096)


@pytest.mark.parametrize("pre", [symkey(), symkey("Z" * 254, 2**41), external()])
def test_round_trip(pre: Preamble) -> None:
    data = pre.encode()
    assert len(data) == 552
    assert Preamble.decode(data) == pre
    encoded = pre.encode_b64()
    assert len(encoded) == 736
    head = parse_sealed_head(encoded + b" trailing bytes do not matter")
    assert head is not None
    assert (head.preamble, head.raw_preamble, head.size) == (pre, data, 737)


ids = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=254)


@settings(max_examples=60, deadline=None)
@given(
    scheme=st.sampled_from([(Scheme.SYMKEY, Method.AES_256_GCM), (Scheme.EXTERNAL, Method.PGP)]),
    timestamp=st.integers(0, 2**64 - 1),
    iv=st.binary(min_size=16, max_size=16),
    blob_id=ids,
    rev=st.text(max_size=60),
    content_size=st.integers(0, 2**64 - 1),
)
def test_round_trip_any(
    scheme: tuple[Scheme, Method],
    timestamp: int,
    iv: bytes,
    blob_id: str,
    rev: str,
    content_size: int,
) -> None:
    assume(len(rev.encode()) <= 254)
    pre = Preamble(scheme[0], scheme[1], timestamp, iv, blob_id, rev, content_size)
    assert Preamble.decode(pre.encode()) == pre
    head = parse_sealed_head(pre.encode_b64() + b" ")
    assert head is not None and head.preamble == pre


@pytest.mark.parametrize(
    ("pre", "field"),
    [
        (symkey("x" * 255), "blob_id"),
        (Preamble(Scheme.SYMKEY, Method.AES_256_GCM, 0, IV, "b", "r" * 255, 1), "rev"),
        (Preamble(Scheme.SYMKEY, Method.AES_256_GCM, 0, IV[:12], "b", "r", 1), "iv"),
        (symkey(content_size=None), "content_size"),
    ],
)
def test_encode_refuses(pre: Preamble, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        pre.encode()


# --- legacy -------------------------------------------------------------------------------


def test_decode_legacy_preamble() -> None:
    data = legacy_raw()
    assert len(data) == 542
    pre = Preamble.decode(data)
    assert pre.content_size is None
    assert (pre.scheme, pre.method, pre.timestamp, pre.iv) == (
        Scheme.SYMKEY, Method.AES_256_GCM, 1_700_000_000, IV,
    )
    assert (pre.blob_id, pre.rev) == ("blob-1", "ImmutableRevision")


def test_parse_legacy_sealed_head() -> None:
    data = legacy_raw(blob_id=b"legacy")
    encoded = base64.urlsafe_b64encode(data)
    assert len(encoded) == 724
    sealed = encoded + b" " + b"ciphertext and tag follow"
    for end in range(725, len(sealed) + 1):  # decided as soon as the space is there
        head = parse_sealed_head(sealed[:end])
        assert head is not None
        assert head.size == 725 and head.raw_preamble == data
        assert head.preamble.blob_id == "legacy" and head.preamble.content_size is None
    for end in range(725):
        assert parse_sealed_head(sealed[:end]) is None


def test_parse_head_waits_for_whole_head() -> None:
    encoded = symkey().encode_b64() + b" "
    for end in range(len(encoded)):
        assert parse_sealed_head(encoded[:end]) is None
    assert parse_sealed_head(encoded) is not None
    assert parse_sealed_head(memoryview(encoded)) is not None
    assert parse_sealed_head(bytearray(encoded)) is not None


# --- refusals -----------------------------------------------------------------------------


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
@pytest.mark.parametrize(
    ("data_of", "field"),
    [
        (lambda mk: mk(magic=b"\x13\x38"), "magic"),
        (lambda mk: mk(magic=b"\x00\x00"), "magic"),
        (lambda mk: patched(mk(), 4, b"\x01"), "padding"),
        (lambda mk: patched(mk(), 7, b"\x80"), "padding"),
        (lambda mk: mk(scheme=0), "scheme"),
        (lambda mk: mk(scheme=3), "scheme"),
        (lambda mk: mk(scheme=-1), "scheme"),
        (lambda mk: mk(method=0), "method"),
        (lambda mk: mk(method=4), "method"),
        (lambda mk: mk(method=1), "aes_256_ctr"),
        (lambda mk: mk(scheme=2, method=1), "aes_256_ctr"),
        (lambda mk: mk(method=3), "method"),  # symkey must be aes_256_gcm
        (lambda mk: patched(mk(), 32, b"\xff"), "blob_id"),
        (lambda mk: patched(mk(), 287, b"\xff"), "rev"),
        (lambda mk: mk(blob_id=b"\xff\xfe"), "blob_id"),
    ],
)
def test_decode_names_the_bad_field(
    data_of: Callable[..., bytes], field: str, legacy: bool
) -> None:
    data = data_of(legacy_raw if legacy else raw)
    with pytest.raises(InvalidBlob, match=field) as info:
        Preamble.decode(data)
    assert info.value.status_hint == 400
    # The same refusal comes through the sealed head.
    with pytest.raises(InvalidBlob, match=field):
        parse_sealed_head(base64.urlsafe_b64encode(data) + b" ")


def test_decode_refuses_padding_before_content_size() -> None:
    with pytest.raises(InvalidBlob, match="padding"):
        Preamble.decode(patched(raw(), 543, b"\x01"))


def test_length_byte_254_is_the_limit() -> None:
    pre = Preamble.decode(raw(blob_id=b"q" * 254))
    assert pre.blob_id == "q" * 254


@pytest.mark.parametrize("length", [0, 1, 541, 543, 551, 553, 736])
def test_decode_refuses_other_lengths(length: int) -> None:
    with pytest.raises(InvalidBlob, match="preamble"):
        Preamble.decode(bytes(length))


def test_external_accepts_its_own_method() -> None:
    assert Preamble.decode(raw(scheme=2, method=3, rev=b"0")).method is Method.PGP


def test_check_refuses_other_blob_id_and_wrong_rev() -> None:
    symkey().check("blob-1")
    external().check("in-1")
    with pytest.raises(InvalidBlob, match="blob_id"):
        symkey().check("blob-2")
    with pytest.raises(InvalidBlob, match="blob_id"):
        symkey().check("blob-")
    wrong_rev = Preamble(Scheme.SYMKEY, Method.AES_256_GCM, 0, IV, "b", "0", 4096)
    with pytest.raises(InvalidBlob, match="rev"):
        wrong_rev.check("b")
    ext_wrong_rev = Preamble(Scheme.EXTERNAL, Method.PGP, 0, bytes(16), "b", "ImmutableRevision", 1)
    with pytest.raises(InvalidBlob, match="rev"):
        ext_wrong_rev.check("b")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.replace(b"A", b"+", 1),  # base64, but not base64url
        lambda e: e.replace(b"A", b"/", 1),
        lambda e: b"!" + e[1:],
        lambda e: e[:-1] + b"=",  # padding where none belongs
        lambda e: e[:100] + b"\n" + e[101:],
    ],
)
def test_head_not_base64url_refused(mutate: Callable[[bytes], bytes]) -> None:
    encoded = symkey().encode_b64()
    bad = mutate(encoded)
    assert bad != encoded and len(bad) == 736
    with pytest.raises(InvalidBlob):
        parse_sealed_head(bad + b" ")


def test_head_without_space_refused() -> None:
    with pytest.raises(InvalidBlob, match="space"):
        parse_sealed_head(symkey().encode_b64() + b"x")


def test_legacy_head_must_be_canonical() -> None:
    # 542 bytes leave two unused bits in the last base64 group; setting them must not give
    # a second spelling of the same head.
    encoded = base64.urlsafe_b64encode(legacy_raw())
    assert encoded.endswith(b"=")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(encoded[-2:-1])
    assert last & 3 == 0
    variant = encoded[:-2] + alphabet[last | 1 : (last | 1) + 1] + b"="
    assert base64.urlsafe_b64decode(variant) == legacy_raw()  # what a lax decoder would do
    with pytest.raises(InvalidBlob):
        parse_sealed_head(variant + b" ")


def test_b64url_helpers() -> None:
    for n in range(40):
        data = bytes(range(256))[n : n + n]
        assert b64url_encode(data) == base64.urlsafe_b64encode(data)
        assert b64url_decode(b64url_encode(data)) == data
    with pytest.raises(ValueError):
        b64url_decode(b"ab+/")
    with pytest.raises(ValueError):
        b64url_decode(b"AAB=")  # non-canonical spelling of b"\0\0"
