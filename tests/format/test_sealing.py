"""Sealing and opening (SPEC 2): round trips, bounded memory, tampering, IV and size rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import os
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from blobsync.format import (
    CHUNK_SIZE,
    InvalidBlob,
    Opener,
    Preamble,
    Sealer,
    open_sealed,
    parse_sealed_head,
    rounded_size,
    seal,
    seal_external,
    sealed_size,
)

from .helpers import (
    EXTERNAL,
    EXTERNAL_PAYLOAD,
    EXTERNAL_SEALED,
    SEALED,
    SECRET,
    SealedVector,
    bytewise,
    chunked,
    open_chunks,
    refusal,
    splits,
    whole,
)

Feed = Callable[[bytes], list[bytes]]
SMALL = SEALED[1]  # 11 bytes of plaintext: cheap to tamper with at every position
assert len(SMALL.plaintext) < 100


def seal_in_chunks(blob_id: str, plaintext: bytes, chunk: int = CHUNK_SIZE) -> bytes:
    s = Sealer(SECRET, blob_id, len(plaintext))
    out = [s.start()]
    out += [s.update(piece) for piece in chunked(plaintext, chunk)]
    out.append(s.finish())
    return b"".join(out)


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 2**20 + 3])
def test_round_trip_chunk_by_chunk(size: int) -> None:
    plaintext = os.urandom(size)
    sealed = seal_in_chunks("rt", plaintext)
    assert len(sealed) == sealed_size(size) == size + 753
    head = parse_sealed_head(sealed)
    assert head is not None and head.preamble.content_size == rounded_size(size)
    # Opened in pieces that straddle the head, the blocks and the tag differently.
    for piece in (1000, 4099, CHUNK_SIZE):
        opened, got = open_chunks(SECRET, "rt", chunked(sealed, piece))
        assert got == plaintext
        assert opened.size == size and not opened.external


def test_64_mib_blob_in_bounded_memory() -> None:
    size = 64 * 2**20
    want, got = hashlib.sha256(), hashlib.sha256()
    travelled = 0
    tracemalloc.start()
    try:
        sealer = Sealer(SECRET, "big", size)
        opener = Opener(SECRET, "big")
        head = sealer.start()
        travelled += len(head)
        got.update(opener.feed(head))
        for i in range(size // CHUNK_SIZE):
            # Made on the fly and distinct per chunk: the whole plaintext never exists.
            plain = hashlib.shake_128(i.to_bytes(8, "big")).digest(CHUNK_SIZE)
            want.update(plain)
            cipher = sealer.update(plain)
            travelled += len(cipher)
            got.update(opener.feed(cipher))
        tag = sealer.finish()
        travelled += len(tag)
        got.update(opener.feed(tag))
        opened = opener.finish()
        got.update(opened.rest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.hexdigest() == want.hexdigest()
    assert opened.size == size and travelled == sealed_size(size)
    assert opened.preamble.content_size == 2 * size
    assert peak < 8 * 2**20, f"peak {peak} bytes while streaming 64 MiB"


def test_opener_hands_on_all_but_the_tag_as_it_goes() -> None:
    # Never a whole blob in memory: after every feed all that can be plaintext has been
    # passed on, and only the 16 bytes that may be the tag are held back.
    plaintext = os.urandom(300_000)
    sealed = seal(SECRET, "flow", plaintext)
    received = 0

    def sink(piece: bytes) -> None:
        nonlocal received
        received += len(piece)

    opener = Opener(SECRET, "flow")
    fed = 0
    for piece in chunked(sealed, 4096):
        sink(opener.feed(piece))
        fed += len(piece)
        assert received == max(0, fed - 737 - 16)
    sink(opener.finish().rest)
    assert received == len(plaintext)


@pytest.mark.parametrize("tamper", [None, -1, -17, 800])
def test_opener_that_keeps_nothing_still_checks_the_tag(tamper: int | None) -> None:
    # keep=False (a download kept sealed): no plaintext handed out, the same verdict.
    sealed = bytearray(seal(SECRET, "verify-only", os.urandom(100_000)))
    if tamper is not None:
        sealed[tamper] ^= 0x01
    opener = Opener(SECRET, "verify-only", keep=False)
    out = [opener.feed(piece) for piece in chunked(bytes(sealed), 4096)]
    assert set(out) == {b""}
    if tamper is None:
        opened = opener.finish()
        assert opened.size == 100_000 and opened.rest == b""
    else:
        with pytest.raises(InvalidBlob):
            opener.finish()


# --- readers' three ways of feeding, on the vectors ---------------------------------------

VECTOR_IDS = [v.blob_id[:16] for v in SEALED]


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
@pytest.mark.parametrize("vec", SEALED, ids=VECTOR_IDS)
def test_opener_fed_whole_or_bytewise(vec: SealedVector, feed: Feed) -> None:
    opened, plaintext = open_chunks(SECRET, vec.blob_id, feed(vec.sealed))
    assert plaintext == vec.plaintext and opened.size == len(vec.plaintext)


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
def test_opener_external_fed_whole_or_bytewise(feed: Feed) -> None:
    opened, payload = open_chunks(None, EXTERNAL["blob_id"], feed(EXTERNAL_SEALED))
    assert payload == EXTERNAL_PAYLOAD and opened.external


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_opener_fed_random_splits(data: st.DataObject) -> None:
    vec = data.draw(st.sampled_from(SEALED[:3] + [None]))
    if vec is None:
        pieces = data.draw(splits(EXTERNAL_SEALED))
        opened, payload = open_chunks(None, EXTERNAL["blob_id"], pieces)
        assert payload == EXTERNAL_PAYLOAD and opened.external
        return
    pieces = data.draw(splits(vec.sealed))
    opened, plaintext = open_chunks(SECRET, vec.blob_id, pieces)
    assert plaintext == vec.plaintext and not opened.external


def truncations(n: int, limit: int = 400) -> list[int]:
    """Every cut point of a short blob; of a long one, the head, the tail and a spread."""
    if n <= limit:
        return list(range(n))
    return sorted({*range(760), *range(n - 40, n), *range(0, n, max(1, n // limit))})


CASES = [(v.blob_id, v.sealed, SECRET) for v in SEALED] + [
    (EXTERNAL["blob_id"], EXTERNAL_SEALED, None)
]
CASE_IDS = [*VECTOR_IDS, "external"]


@pytest.mark.parametrize(("blob_id", "sealed", "secret"), CASES, ids=CASE_IDS)
def test_opener_truncated_anywhere_fails_at_the_end(
    blob_id: str, sealed: bytes, secret: bytes | None
) -> None:
    for end in truncations(len(sealed), limit=2000):
        opener = Opener(secret, blob_id)
        opener.feed(sealed[:end])  # a prefix of a good blob: nothing to refuse yet
        with pytest.raises(InvalidBlob):
            opener.finish()


@pytest.mark.parametrize(("blob_id", "sealed", "secret"), CASES, ids=CASE_IDS)
def test_opener_truncated_fed_bytewise_fails_at_the_end(
    blob_id: str, sealed: bytes, secret: bytes | None
) -> None:
    for end in (0, 1, 736, 737, 738, len(sealed) - 17, len(sealed) - 16, len(sealed) - 1):
        opener = Opener(secret, blob_id)
        for piece in bytewise(sealed[:end]):
            opener.feed(piece)
        with pytest.raises(InvalidBlob):
            opener.finish()


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
@pytest.mark.parametrize("garbage", [b"\0", b"x" * 16, bytes(range(100))], ids=["1", "16", "100"])
@pytest.mark.parametrize(("blob_id", "sealed", "secret"), CASES[:2] + CASES[-1:])
def test_opener_trailing_garbage_refused(
    blob_id: str, sealed: bytes, secret: bytes | None, garbage: bytes, feed: Feed
) -> None:
    refusal(secret, blob_id, feed(sealed + garbage))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_opener_random_splits_truncated_or_extended(data: st.DataObject) -> None:
    blob_id, sealed, secret = data.draw(st.sampled_from(CASES[:3] + CASES[-1:]))
    if data.draw(st.booleans()):
        bad = sealed[: data.draw(st.integers(0, len(sealed) - 1))]
    else:
        bad = sealed + data.draw(st.binary(min_size=1, max_size=40))
    opener = Opener(secret, blob_id)
    try:
        for piece in data.draw(splits(bad)):
            opener.feed(piece)
    except InvalidBlob:
        pass
    with pytest.raises(InvalidBlob):
        opener.finish()


# --- tampering ----------------------------------------------------------------------------


def flipped(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def test_every_byte_of_the_encoded_head_matters() -> None:
    sealed = SMALL.sealed
    for offset in range(737):
        for mask in (0x01, 0x20):
            reason = refusal(SECRET, SMALL.blob_id, [flipped(sealed, offset, mask)])
            assert isinstance(reason, InvalidBlob)


def test_every_byte_of_the_raw_preamble_matters() -> None:
    # Rewrite one raw byte and re-encode properly, as a forger would: the preamble is the
    # associated data of the cipher, so even the zero fill and the timestamp are covered.
    head = parse_sealed_head(SMALL.sealed)
    assert head is not None
    body = SMALL.sealed[737:]
    for offset in range(552):
        for mask in (0x01, 0x80):
            raw = flipped(head.raw_preamble, offset, mask)
            forged = base64.urlsafe_b64encode(raw) + b" " + body
            refusal(SECRET, SMALL.blob_id, [forged])


def test_every_byte_of_ciphertext_and_tag_matters() -> None:
    plaintext = os.urandom(1500)
    sealed = seal(SECRET, "ct", plaintext)
    for offset in range(737, len(sealed)):
        refusal(SECRET, "ct", chunked(flipped(sealed, offset), 512))
    for offset in range(len(sealed) - 16, len(sealed)):  # every bit of the tag
        for bit in range(8):
            reason = refusal(SECRET, "ct", [flipped(sealed, offset, 1 << bit)])
            assert "tag" in str(reason)


def test_tampered_plaintext_is_only_provisional() -> None:
    # The sink may see bytes before the tag is checked; finish() is what decides.
    sealed = flipped(SMALL.sealed, 740)
    seen: list[bytes] = []
    refusal(SECRET, SMALL.blob_id, [sealed], sink=seen.append)


def test_opened_under_another_blob_id_refused() -> None:
    reason = refusal(SECRET, "blob_2", [SMALL.sealed])
    assert "blob_id" in str(reason)
    reason = refusal(SECRET, SMALL.blob_id[:-1], bytewise(SMALL.sealed))
    assert "blob_id" in str(reason)


def test_renamed_blob_refused() -> None:
    # A preamble rewritten to name another id: the key is derived from the id, so no.
    head = parse_sealed_head(SMALL.sealed)
    assert head is not None
    p = head.preamble
    renamed = Preamble(p.scheme, p.method, p.timestamp, p.iv, "other", p.rev, p.content_size)
    forged = renamed.encode_b64() + SMALL.sealed[736:]
    assert "tag" in str(refusal(SECRET, "other", [forged]))


def test_wrong_secret_refused() -> None:
    other = bytes(64) + bytes(reversed(SECRET[64:]))
    assert "tag" in str(refusal(other, SMALL.blob_id, [SMALL.sealed]))


def test_symkey_blob_without_secret_never_succeeds() -> None:
    # 3343 bytes seal to exactly 4096 = content_size: an opener that took the refused head
    # as external would have "opened" the raw sealed bytes.
    sealed = seal(SECRET, "ns", b"p" * 3343)
    sink: list[bytes] = []
    reason = refusal(None, "ns", [sealed], sink=sink.append)
    assert "secret" in str(reason)
    assert sink == []


def test_refused_opener_stays_refused() -> None:
    opener = Opener(SECRET, "blob_2")
    with pytest.raises(InvalidBlob):
        opener.feed(SMALL.sealed)
    with pytest.raises(InvalidBlob):
        opener.feed(b"more")
    with pytest.raises(InvalidBlob):
        opener.finish()


def test_finish_reports_once() -> None:
    for blob_id, sealed, secret in (CASES[0], CASES[-1]):
        opener = Opener(secret, blob_id)
        opener.feed(sealed)
        opener.finish()
        with pytest.raises(RuntimeError):
            opener.finish()
        with pytest.raises(RuntimeError):
            opener.feed(b"x")
    opener = Opener(SECRET, SMALL.blob_id)
    opener.feed(flipped(SMALL.sealed, len(SMALL.sealed) - 1))
    with pytest.raises(InvalidBlob):
        opener.finish()
    with pytest.raises(RuntimeError):
        opener.finish()


# --- legacy and external blobs ------------------------------------------------------------


def legacy_sealed(blob_id: str, plaintext: bytes, iv: bytes) -> bytes:
    """A blob as old Soledad sealed it: 542-byte preamble, built without blobsync."""
    raw = struct.pack(
        "<2sbb4xQ16s255p255p", b"\x13\x37", 1, 2, 1_500_000_000, iv, blob_id.encode(),
        b"ImmutableRevision",
    )
    key = hmac.new(SECRET[64:], blob_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(raw) + b" " + AESGCM(key).encrypt(iv, plaintext, raw)


@pytest.mark.parametrize("feed", [whole, bytewise], ids=["whole", "bytewise"])
def test_legacy_blob_opens(feed: Feed) -> None:
    plaintext = b"from an old device" * 20
    sealed = legacy_sealed("old-1", plaintext, bytes(range(16)))
    assert sealed[724:725] == b" "
    opened, got = open_chunks(SECRET, "old-1", feed(sealed))
    assert got == plaintext and opened.preamble.content_size is None
    refusal(SECRET, "old-1", [flipped(sealed, 800)])
    refusal(SECRET, "old-1", [sealed[:-1]])


def test_legacy_external_blob_opens_raw() -> None:
    raw = struct.pack(
        "<2sbb4xQ16s255p255p", b"\x13\x37", 2, 3, 1_500_000_000, bytes(16), b"mx-1", b"0"
    )
    opened, payload = open_chunks(SECRET, "mx-1", [base64.urlsafe_b64encode(raw), b" pgp"])
    assert payload == b"pgp" and opened.external and opened.preamble.content_size is None


def test_external_head() -> None:
    head = seal_external("in-1", 12345, timestamp=7)
    parsed = parse_sealed_head(head)
    assert parsed is not None and parsed.size == len(head) == 737
    pre = parsed.preamble
    assert (pre.content_size, pre.timestamp, pre.iv, pre.rev) == (12345, 7, bytes(16), "0")
    payload = os.urandom(12345)
    assert open_sealed(None, "in-1", head + payload) == payload
    refusal(None, "in-1", [head + payload[:-1]])
    refusal(None, "in-2", [head + payload])


# --- the sealer ---------------------------------------------------------------------------


def test_two_seals_differ() -> None:
    a, b = seal(SECRET, "same", b"same plaintext"), seal(SECRET, "same", b"same plaintext")
    assert a != b
    head_a, head_b = parse_sealed_head(a), parse_sealed_head(b)
    assert head_a is not None and head_b is not None
    assert head_a.preamble.iv != head_b.preamble.iv
    assert a[737:-16] != b[737:-16]
    assert open_sealed(SECRET, "same", a) == open_sealed(SECRET, "same", b) == b"same plaintext"
    ivs = {Sealer(SECRET, "same", 1).preamble.iv for _ in range(50)}
    assert len(ivs) == 50


def test_no_public_way_to_pick_an_iv() -> None:
    with pytest.raises(TypeError):
        Sealer(SECRET, "b", 1, iv=bytes(16))  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        seal(SECRET, "b", b"x", iv=bytes(16))  # type: ignore[call-arg]
    public = [
        name
        for fn in (Sealer, seal)
        for name in inspect.signature(fn).parameters
        if not name.startswith("_")
    ]
    assert not any("iv" in name or "nonce" in name for name in public)


@pytest.mark.parametrize("declared", [0, 10, 5000])
def test_more_than_declared_refused(declared: int) -> None:
    s = Sealer(SECRET, "b", declared)
    s.start()
    s.update(b"x" * declared)
    with pytest.raises(ValueError, match="declared"):
        s.update(b"x")


@pytest.mark.parametrize("declared", [1, 10, 5000])
def test_less_than_declared_refused(declared: int) -> None:
    s = Sealer(SECRET, "b", declared)
    s.start()
    s.update(b"x" * (declared - 1))
    with pytest.raises(ValueError, match="declared"):
        s.finish()


def test_sealer_rules() -> None:
    s = Sealer(SECRET, "b", 3)
    with pytest.raises(RuntimeError):
        s.update(b"abc")
    assert s.sealed_size == 3 + 753
    with pytest.raises(ValueError):
        Sealer(SECRET, "x" * 255, 1)
    with pytest.raises(ValueError):
        Sealer(SECRET, "b", -1)
