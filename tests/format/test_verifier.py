"""SealedVerifier, the one place the rules of a sealed blob live: fed whole, one byte at a
time and in random splits, with truncation and trailing garbage, as h11 tests its readers."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobsync.format import InvalidBlob, seal
from blobsync.format.preamble import TAG_SIZE, SealedHead
from blobsync.format.verifier import SealedVerifier, Verified

from .helpers import EXTERNAL, EXTERNAL_SEALED, SEALED, SECRET, bytewise, splits, whole

# A legacy (542-byte, Soledad 0.x) preamble: a shorter head, then the body.
LEGACY = struct.pack(
    "<2sbb4xQ16s255p255p", b"\x13\x37", 1, 2, 1_700_000_000, bytes(16), b"legacy",
    b"ImmutableRevision",
)
LEGACY_SEALED = base64.urlsafe_b64encode(LEGACY) + b" " + bytes(range(40))


def verify(blob_id: str, chunks: list[bytes]) -> tuple[Verified, bytes, list[SealedHead]]:
    body = bytearray()
    heads: list[SealedHead] = []

    def on_body(piece: memoryview) -> None:
        assert heads, "body handed on before the head checked out"
        body.extend(piece)

    verifier = SealedVerifier(blob_id, on_head=heads.append, on_body=on_body)
    for chunk in chunks:
        verifier.feed(chunk)
    return verifier.finish(), bytes(body), heads


def refused(blob_id: str, chunks: list[bytes]) -> InvalidBlob:
    verifier = SealedVerifier(blob_id)
    with pytest.raises(InvalidBlob) as exc:
        for chunk in chunks:
            verifier.feed(chunk)
        verifier.finish()
    return exc.value


FEEDS = [whole, bytewise, lambda data: [data[i : i + 7] for i in range(0, len(data), 7)]]


@pytest.mark.parametrize("feed", FEEDS, ids=["whole", "bytewise", "sevens"])
@pytest.mark.parametrize("vector", SEALED, ids=lambda v: v.blob_id)
def test_vectors_verify_and_hand_on_the_body_less_the_tag(vector, feed) -> None:
    verified, body, heads = verify(vector.blob_id, feed(vector.sealed))
    assert len(heads) == 1 and heads[0] == verified.head and not verified.external
    assert body == vector.sealed[verified.head.size : -TAG_SIZE]
    assert verified.tail == vector.sealed[-TAG_SIZE:]
    assert base64.urlsafe_b64encode(verified.tail).rstrip(b"=").decode() == (
        vector.tag_b64url.rstrip("=")
    )
    assert verified.body_size == len(vector.plaintext)


@pytest.mark.parametrize("feed", FEEDS, ids=["whole", "bytewise", "sevens"])
def test_external_blob_hands_on_all_but_its_tail(feed) -> None:
    verified, body, _ = verify(EXTERNAL["blob_id"], feed(EXTERNAL_SEALED))
    assert verified.external
    assert body + verified.tail == EXTERNAL_SEALED[verified.head.size :]


@pytest.mark.parametrize("feed", FEEDS, ids=["whole", "bytewise", "sevens"])
def test_legacy_head_is_followed_by_body_in_the_same_chunk(feed) -> None:
    verified, body, _ = verify("legacy", feed(LEGACY_SEALED))
    assert verified.head.size == 725
    assert body + verified.tail == bytes(range(40)) and verified.tail == bytes(range(24, 40))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), index=st.integers(0, len(SEALED) - 1))
def test_random_splits_agree_with_whole(data: st.DataObject, index: int) -> None:
    vector = SEALED[index]
    chunks = data.draw(splits(vector.sealed))
    assert verify(vector.blob_id, chunks)[:2] == verify(vector.blob_id, whole(vector.sealed))[:2]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_random_splits_of_a_legacy_head(data: st.DataObject) -> None:
    chunks = data.draw(splits(LEGACY_SEALED))
    assert verify("legacy", chunks)[:2] == verify("legacy", [LEGACY_SEALED])[:2]


@pytest.mark.parametrize("feed", FEEDS, ids=["whole", "bytewise", "sevens"])
def test_truncation_is_refused(feed) -> None:
    sealed = seal(SECRET, "blob-a", b"")
    head = verify("blob-a", [sealed])[0].head.size
    for end in (0, 1, head - 1):
        assert "inside its head" in str(refused("blob-a", feed(sealed[:end])))
    for end in (head, head + 1, len(sealed) - 1):
        assert "before its tag" in str(refused("blob-a", feed(sealed[:end])))


def test_trailing_garbage_on_an_external_blob_is_refused() -> None:
    blob_id = EXTERNAL["blob_id"]
    assert "preamble says" in str(refused(blob_id, [EXTERNAL_SEALED + b"x"]))
    assert "preamble says" in str(refused(blob_id, [EXTERNAL_SEALED[:-1]]))


def test_trailing_garbage_on_a_symkey_blob_moves_the_tag() -> None:
    # Structure alone cannot tell: the last 16 bytes are taken as the tag, so the key's
    # check (Opener, check_sealed) is what refuses it.
    sealed = seal(SECRET, "blob-a", b"hello")
    verified, body, _ = verify("blob-a", [sealed + b"garbage"])
    assert verified.tail == (sealed + b"garbage")[-TAG_SIZE:]
    assert len(body) == len(sealed) + len(b"garbage") - verified.head.size - TAG_SIZE


def test_another_id_or_garbled_head_is_refused_before_any_body() -> None:
    sealed = seal(SECRET, "blob-a", b"hello")
    handed: list[bytes] = []
    verifier = SealedVerifier("blob-b", on_body=lambda p: handed.append(bytes(p)))
    with pytest.raises(InvalidBlob):
        verifier.feed(sealed)
    assert handed == [] and verifier.head is None
    assert refused("blob-a", [b"!" * len(sealed)])


def test_a_refusing_on_head_keeps_the_head_unset() -> None:
    def no(_head: SealedHead) -> None:
        raise InvalidBlob("not today")

    verifier = SealedVerifier("blob-a", on_head=no)
    with pytest.raises(InvalidBlob, match="not today"):
        verifier.feed(seal(SECRET, "blob-a", b"hello"))
    assert verifier.head is None
