"""check_structure (issue 13): SealedVerifier's rules on a whole blob in one call, for the
server's stream batches. It must accept and refuse exactly what a verifier fed the same
bytes accepts and refuses, with the same message."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobsync.format import InvalidBlob, seal
from blobsync.format.verifier import SealedVerifier, check_structure

from .helpers import EXTERNAL, EXTERNAL_SEALED, SEALED, SECRET

# A legacy (542-byte, Soledad 0.x) preamble: a shorter head, then the body.
LEGACY = struct.pack(
    "<2sbb4xQ16s255p255p", b"\x13\x37", 1, 2, 1_700_000_000, bytes(16), b"legacy",
    b"ImmutableRevision",
)
LEGACY_SEALED = base64.urlsafe_b64encode(LEGACY) + b" " + bytes(range(40))


def by_verifier(blob_id: str, blob: bytes) -> str | None:
    """None when a verifier fed ``blob`` accepts it, else its refusal's message."""
    verifier = SealedVerifier(blob_id)
    try:
        verifier.feed(blob)
        verifier.finish()
    except InvalidBlob as exc:
        return str(exc)
    return None


def by_check(blob_id: str, blob: bytes) -> str | None:
    try:
        check_structure(blob_id, blob)
    except InvalidBlob as exc:
        return str(exc)
    return None


def cases() -> list[tuple[str, bytes]]:
    good = seal(SECRET, "b", b"hello" * 100)
    external_id = EXTERNAL["blob_id"]
    out = [(v.blob_id, v.sealed) for v in SEALED]
    out += [(external_id, EXTERNAL_SEALED), ("legacy", LEGACY_SEALED), ("b", good)]
    out += [
        ("other", good),  # the preamble names another blob
        ("b", good[:10]),  # cut inside the head
        ("b", good[:737]),  # the head and nothing else: no tag
        ("b", good[:737 + 15]),  # one byte short of a tag
        ("b", good[:737 + 16]),  # a tag and no ciphertext: structurally fine
        (external_id, EXTERNAL_SEALED[:-1]),  # an external payload one byte short
        (external_id, EXTERNAL_SEALED + b"x"),  # and one byte long
        ("b", b"X" * 3000),  # not base64url
        ("b", good[:736] + b"!" + good[737:]),  # no space after the head
        ("legacy", LEGACY_SEALED[:724]),  # a legacy head cut before its space
    ]
    return out


@pytest.mark.parametrize("blob_id, blob", cases())
def test_agrees_with_a_fed_verifier(blob_id: str, blob: bytes) -> None:
    assert by_check(blob_id, blob) == by_verifier(blob_id, blob)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_agrees_on_damaged_blobs(data: st.DataObject) -> None:
    blob = bytearray(seal(SECRET, "d", b"p" * data.draw(st.integers(0, 300))))
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    assert by_check("d", bytes(blob[:cut])) == by_verifier("d", bytes(blob[:cut]))
