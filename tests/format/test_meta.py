"""The encrypted meta of SPEC 11: its key, its layout, what the server checks and what a
device refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from blobsync.format import LimitExceeded, ProtocolError
from blobsync.format.meta import (
    MAX_META_LENGTH,
    MAX_META_PLAINTEXT,
    MIN_META_BYTES,
    InvalidMeta,
    Meta,
    _seal,
    check_meta_text,
    meta_bytes,
    meta_key,
    open_meta,
    seal_meta,
    valid_name,
)

SECRET = bytes(range(128))
BLOB = "0123456789abcdef0123456789abcdef"


def test_the_key_is_hmac_of_the_prefix_and_the_id_under_the_remote_half() -> None:
    expected = hmac.new(bytes(range(64, 128)), b"blobsync-meta:" + BLOB.encode(),
                        hashlib.sha256).digest()
    assert meta_key(SECRET, BLOB) == expected
    # Not the blob's own key for the same id.
    assert meta_key(SECRET, BLOB) != hmac.new(bytes(range(64, 128)), BLOB.encode(),
                                              hashlib.sha256).digest()


def test_layout_is_base64url_of_iv_ciphertext_and_tag_with_the_id_as_aad() -> None:
    """Built here from the SPEC's words with the primitives alone, then compared."""
    iv = bytes(12)
    meta = Meta("photos/a.jpg", 1234, 1700000000.5, mode=0o644, type="image/jpeg")
    text = _seal(SECRET, BLOB, meta.to_json(), iv)
    key = hmac.new(SECRET[64:], b"blobsync-meta:" + BLOB.encode(), hashlib.sha256).digest()
    plaintext = json.dumps({"name": "photos/a.jpg", "size": 1234, "mtime": 1700000000.5,
                            "mode": 0o644, "type": "image/jpeg"}, separators=(",", ":")).encode()
    expected = base64.urlsafe_b64encode(iv + AESGCM(key).encrypt(iv, plaintext, BLOB.encode()))
    assert text == expected.decode()
    assert len(text) % 4 == 0  # padded, as SPEC 11 keeps it


def test_round_trip_with_and_without_padding() -> None:
    meta = Meta("notes/ü ñ.txt", 0, 1, type="text/plain")
    text = seal_meta(SECRET, BLOB, meta)
    assert open_meta(SECRET, BLOB, text) == meta
    assert open_meta(SECRET, BLOB, text.rstrip("=")) == meta


def test_each_seal_draws_its_own_iv() -> None:
    meta = Meta("a", 1, 2)
    assert seal_meta(SECRET, BLOB, meta) != seal_meta(SECRET, BLOB, meta)


def test_unknown_keys_are_kept_and_ignored() -> None:
    doc = {"name": "a/b", "size": 3, "mtime": 4, "colour": "blue", "tags": [1, 2]}
    text = _seal(SECRET, BLOB, json.dumps(doc).encode(), bytes(12))
    meta = open_meta(SECRET, BLOB, text)
    assert (meta.name, meta.size, meta.mtime, meta.mode, meta.type) == ("a/b", 3, 4, None, None)
    assert meta.extra == {"colour": "blue", "tags": [1, 2]}


def test_another_blobs_meta_does_not_open() -> None:
    text = seal_meta(SECRET, BLOB, Meta("a", 1, 2))
    with pytest.raises(InvalidMeta, match="does not verify"):
        open_meta(SECRET, "f" * 32, text)


def test_a_wrong_secret_does_not_open() -> None:
    text = seal_meta(SECRET, BLOB, Meta("a", 1, 2))
    with pytest.raises(InvalidMeta):
        open_meta(bytes(128), BLOB, text)


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_altered_bit_is_refused(index: int, bit: int) -> None:
    raw = bytearray(meta_bytes(seal_meta(SECRET, BLOB, Meta("a/b.txt", 10, 20))))
    raw[index % len(raw)] ^= 1 << bit
    with pytest.raises(InvalidMeta):
        open_meta(SECRET, BLOB, base64.urlsafe_b64encode(bytes(raw)).decode())


@pytest.mark.parametrize("doc", [
    [1, 2], "name", {"size": 1, "mtime": 2}, {"name": "/etc/passwd", "size": 1, "mtime": 2},
    {"name": "a/../b", "size": 1, "mtime": 2}, {"name": "a//b", "size": 1, "mtime": 2},
    {"name": "a", "size": -1, "mtime": 2}, {"name": "a", "size": True, "mtime": 2},
    {"name": "a", "size": 1.5, "mtime": 2}, {"name": "a", "size": 1, "mtime": "today"},
    {"name": "a", "size": 1, "mtime": 2, "mode": 0o10000},
    {"name": "a", "size": 1, "mtime": 2, "type": 3},
])
def test_a_verified_meta_that_breaks_the_spec_is_refused(doc: object) -> None:
    text = _seal(SECRET, BLOB, json.dumps(doc).encode(), bytes(12))
    with pytest.raises(InvalidMeta):
        open_meta(SECRET, BLOB, text)


def test_a_verified_meta_that_is_not_json_is_refused() -> None:
    for plaintext in (b"\xff\xfe", b"{not json", b""):
        with pytest.raises(InvalidMeta, match="JSON"):
            open_meta(SECRET, BLOB, _seal(SECRET, BLOB, plaintext, bytes(12)))


@pytest.mark.parametrize("name, ok", [
    ("a", True), ("a/b/c.txt", True), ("with space/é", True), (".hidden/x", True),
    ("a..b", True), ("", False), ("/a", False), ("a/", False), ("a//b", False),
    ("./a", False), ("a/..", False), ("..", False), ("a\x00b", False),
])
def test_names_are_relative_paths(name: str, ok: bool) -> None:
    assert valid_name(name) is ok


def test_a_meta_too_long_is_refused_when_sealed() -> None:
    with pytest.raises(LimitExceeded) as err:
        seal_meta(SECRET, BLOB, Meta("x" * 4000, 1, 2))
    assert err.value.status_hint == 413


def test_the_longest_name_that_fits_gives_at_most_the_limit() -> None:
    base = len(b'{"name":"","size":1,"mtime":2}')
    longest = Meta("x" * (MAX_META_LENGTH // 4 * 3 - MIN_META_BYTES - base), 1, 2)
    assert len(seal_meta(SECRET, BLOB, longest)) == MAX_META_LENGTH
    with pytest.raises(LimitExceeded):
        seal_meta(SECRET, BLOB, Meta(longest.name + "x", 1, 2))


@pytest.mark.parametrize("text, status", [
    ("A" * (MAX_META_LENGTH + 4), 413),
    ("not base64!", 400),
    ("abc+def/ghij", 400),  # the standard alphabet, not the URL-safe one
    ("AAAA=AAA", 400),  # padding inside
    ("AAAAA", 400),  # a length no base64 text has
    ("AAA===", 400),
    ("é" * 40, 400),
    ("A" * 36, 400),  # 27 bytes: shorter than an iv and a tag
    ("AB==" + "A" * 36, 400),
])
def test_what_the_server_refuses(text: str, status: int) -> None:
    with pytest.raises(ProtocolError) as err:
        check_meta_text(text)
    assert err.value.status_hint == status


def test_what_the_server_takes() -> None:
    check_meta_text("A" * 40)  # 30 bytes, unpadded
    check_meta_text(base64.urlsafe_b64encode(bytes(28)).decode())  # padded
    check_meta_text(seal_meta(SECRET, BLOB, Meta("a", 1, 2)))


def test_a_non_canonical_text_is_refused() -> None:
    # "AB==" and "AA==" decode alike: the unused low bits of the last group are set.
    with pytest.raises(ProtocolError, match="canonical"):
        check_meta_text("A" * 36 + "AB==")


def test_meta_objects_check_their_fields() -> None:
    with pytest.raises(ValueError):
        Meta("../x", 1, 2)
    with pytest.raises(ValueError):
        Meta("x", -1, 2)


@given(st.text(min_size=1).filter(valid_name), st.integers(min_value=0),
       st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
       st.none() | st.integers(min_value=0, max_value=0o7777), st.none() | st.text())
def test_the_json_is_what_json_dumps_writes(name: str, size: int, mtime: float, mode: int | None,
                                            mtype: str | None) -> None:
    doc = {"name": name, "size": size, "mtime": mtime}
    if mode is not None:
        doc["mode"] = mode
    if mtype is not None:
        doc["type"] = mtype
    meta = Meta(name, size, mtime, mode, mtype)
    assert meta.to_json() == json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    if len(meta.to_json()) <= MAX_META_PLAINTEXT:
        assert open_meta(SECRET, BLOB, seal_meta(SECRET, BLOB, meta)) == meta
