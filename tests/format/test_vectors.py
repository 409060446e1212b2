"""Known-answer tests: every case of tests/vectors-format-v1.json, byte for byte."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blobsync.format import (
    BlobData,
    BlobEnd,
    BlobStart,
    DownstreamReader,
    Method,
    Opener,
    Scheme,
    Sealer,
    StreamEnd,
    UpstreamHeader,
    UpstreamReader,
    encode_frame,
    encode_frame_header,
    encode_upstream_header,
    open_sealed,
    parse_sealed_head,
    seal_external,
    sealed_size,
)
from blobsync.format.preamble import b64url_decode

from .helpers import (
    DOWNSTREAM_BODY,
    DOWNSTREAM_IDS,
    EXTERNAL,
    EXTERNAL_PAYLOAD,
    EXTERNAL_SEALED,
    SEALED,
    SEALED_BY_ID,
    SECRET,
    UPSTREAM_BODY,
    UPSTREAM_FIRST_LINE,
    SealedVector,
    chunked,
    drive,
    merged,
    open_chunks,
)

IDS = [v.blob_id[:16] for v in SEALED]


def test_vectors_cover_what_they_should() -> None:
    # Guards the guards: the cases below must keep exercising these corners.
    sizes = {len(v.plaintext) for v in SEALED}
    assert 0 in sizes and max(sizes) > 65536
    assert any(len(v.blob_id) == 254 for v in SEALED)
    assert len(DOWNSTREAM_IDS) >= 2


@pytest.mark.parametrize("vec", SEALED, ids=IDS)
def test_reseal_reproduces_vector(vec: SealedVector) -> None:
    s = Sealer(SECRET, vec.blob_id, len(vec.plaintext), _iv=vec.iv, _timestamp=vec.timestamp)
    assert s.start() + s.update(vec.plaintext) + s.finish() == vec.sealed


@pytest.mark.parametrize("vec", SEALED, ids=IDS)
def test_reseal_chunk_by_chunk_reproduces_vector(vec: SealedVector) -> None:
    s = Sealer(SECRET, vec.blob_id, len(vec.plaintext), _iv=vec.iv, _timestamp=vec.timestamp)
    out = [s.start()]
    out += [s.update(c) for c in chunked(vec.plaintext, 1000)]
    out.append(s.finish())
    assert b"".join(out) == vec.sealed


@pytest.mark.parametrize("vec", SEALED, ids=IDS)
def test_open_vector(vec: SealedVector) -> None:
    assert open_sealed(SECRET, vec.blob_id, vec.sealed) == vec.plaintext
    opened, plaintext = open_chunks(SECRET, vec.blob_id, chunked(vec.sealed, 777))
    assert plaintext == vec.plaintext
    assert opened.size == len(vec.plaintext)
    assert opened.external is False
    pre = opened.preamble
    assert (pre.scheme, pre.method) == (Scheme.SYMKEY, Method.AES_256_GCM)
    assert (pre.blob_id, pre.rev) == (vec.blob_id, "ImmutableRevision")
    assert (pre.iv, pre.timestamp, pre.content_size) == (vec.iv, vec.timestamp, vec.content_size)


@pytest.mark.parametrize("vec", SEALED, ids=IDS)
def test_vector_sizes_and_tag(vec: SealedVector) -> None:
    assert len(vec.sealed) == vec.sealed_size == sealed_size(len(vec.plaintext))
    assert len(vec.sealed) == len(vec.plaintext) + 753
    assert base64.urlsafe_b64encode(vec.sealed[-16:]).decode() == vec.tag_b64url
    assert b64url_decode(vec.tag_b64url.encode()) == vec.sealed[-16:]


@pytest.mark.parametrize("vec", SEALED, ids=IDS)
def test_vector_decrypts_with_plain_aesgcm(vec: SealedVector) -> None:
    # An independent reading of SPEC 2, without the Opener: key = HMAC-SHA256(secret[64:],
    # blob_id), nonce = iv, associated data = the 552 raw preamble bytes.
    head, _, body = vec.sealed.partition(b" ")
    raw = base64.urlsafe_b64decode(head)
    assert len(head) == 736 and len(raw) == 552
    key = hmac.new(SECRET[64:], vec.blob_id.encode(), hashlib.sha256).digest()
    assert AESGCM(key).decrypt(raw[16:32], body, raw) == vec.plaintext
    parsed = parse_sealed_head(vec.sealed)
    assert parsed is not None and parsed.raw_preamble == raw and parsed.size == 737


def test_external_head_reproduces_vector() -> None:
    head = seal_external(EXTERNAL["blob_id"], len(EXTERNAL_PAYLOAD), EXTERNAL["timestamp"])
    assert head + EXTERNAL_PAYLOAD == EXTERNAL_SEALED


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no-secret", "secret"])
def test_external_vector_opens_raw(secret: bytes | None) -> None:
    opened, payload = open_chunks(secret, EXTERNAL["blob_id"], chunked(EXTERNAL_SEALED, 100))
    assert payload == EXTERNAL_PAYLOAD
    assert opened.external is True
    assert opened.size == len(EXTERNAL_PAYLOAD)
    pre = opened.preamble
    assert (pre.scheme, pre.method, pre.rev) == (Scheme.EXTERNAL, Method.PGP, "0")
    assert pre.iv == bytes(16) and pre.content_size == len(EXTERNAL_PAYLOAD)
    assert pre.timestamp == EXTERNAL["timestamp"]


def test_downstream_body_is_frames_of_the_asked_ids() -> None:
    frames = [encode_frame(SEALED_BY_ID[i].sealed) for i in DOWNSTREAM_IDS]
    assert b"".join(frames) == DOWNSTREAM_BODY
    first = SEALED_BY_ID[DOWNSTREAM_IDS[0]].sealed
    assert encode_frame_header(len(first), first[-16:]) == DOWNSTREAM_BODY[:33]
    # SPEC 3: writers emit lowercase hex, zero-padded to 8 digits.
    assert DOWNSTREAM_BODY[:8] == b"%08x" % len(first)


def test_downstream_reader_on_vector() -> None:
    events = merged(drive(DownstreamReader(DOWNSTREAM_IDS), [DOWNSTREAM_BODY]))
    expected: list[object] = []
    for index, blob_id in enumerate(DOWNSTREAM_IDS):
        sealed = SEALED_BY_ID[blob_id].sealed
        expected += [
            BlobStart(index, blob_id, len(sealed), sealed[-16:]),
            BlobData(index, sealed),
            BlobEnd(index, blob_id),
        ]
    expected.append(StreamEnd(len(DOWNSTREAM_IDS)))
    assert events == expected


def test_upstream_header_and_body() -> None:
    items = [(i, SEALED_BY_ID[i].sealed_size) for i in DOWNSTREAM_IDS]
    header = encode_upstream_header(items)
    assert header == UPSTREAM_FIRST_LINE.encode() + b"\n"
    body = header + b"".join(SEALED_BY_ID[i].sealed for i in DOWNSTREAM_IDS)
    assert body == UPSTREAM_BODY


def test_upstream_reader_on_vector() -> None:
    events = merged(drive(UpstreamReader(), [UPSTREAM_BODY]))
    items = [(i, SEALED_BY_ID[i].sealed_size) for i in DOWNSTREAM_IDS]
    expected: list[object] = [UpstreamHeader(items)]
    for index, (blob_id, size) in enumerate(items):
        expected += [
            BlobStart(index, blob_id, size, None),
            BlobData(index, SEALED_BY_ID[blob_id].sealed),
            BlobEnd(index, blob_id),
        ]
    expected.append(StreamEnd(len(items)))
    assert events == expected


def test_stream_blobs_open() -> None:
    # The bytes a reader hands out are the sealed blobs themselves: they open.
    events = drive(DownstreamReader(DOWNSTREAM_IDS), [DOWNSTREAM_BODY])
    openers: dict[int, Opener] = {}
    out: dict[int, list[bytes]] = {}
    for ev in events:
        if isinstance(ev, BlobStart):
            out[ev.index] = []
            openers[ev.index] = Opener(SECRET, ev.blob_id)
        elif isinstance(ev, BlobData):
            out[ev.index].append(openers[ev.index].feed(ev.data))
        elif isinstance(ev, BlobEnd):
            out[ev.index].append(openers[ev.index].finish().rest)
    for index, blob_id in enumerate(DOWNSTREAM_IDS):
        assert b"".join(out[index]) == SEALED_BY_ID[blob_id].plaintext
