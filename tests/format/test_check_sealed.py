"""check_sealed and seal, the one-call paths for small blobs, agree with the streaming
Opener and Sealer: the same reports, the same refusals, the same bytes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobsync.format import InvalidBlob, Opened, Opener, Sealer, check_sealed, seal
from blobsync.format import sealing as sealing_module

from .helpers import EXTERNAL, EXTERNAL_SEALED, SEALED, SECRET


def streamed(secret: bytes | None, blob_id: str, sealed: bytes) -> Opened | str:
    """What the streaming Opener says: the report, or the refusal's message."""
    opener = Opener(secret, blob_id)
    try:
        opener.feed(sealed)
        return opener.finish()
    except InvalidBlob as exc:
        return f"refused: {exc}"


def one_call(secret: bytes | None, blob_id: str, sealed: bytes) -> Opened | str:
    try:
        return check_sealed(secret, blob_id, sealed)
    except InvalidBlob as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("vector", SEALED, ids=lambda v: v.blob_id)
def test_vectors_report_alike(vector) -> None:
    got = check_sealed(SECRET, vector.blob_id, vector.sealed)
    assert got == streamed(SECRET, vector.blob_id, vector.sealed)
    assert got.size == len(vector.plaintext) and not got.external


def test_external_vector_reports_alike() -> None:
    blob_id = EXTERNAL["blob_id"]
    got = check_sealed(None, blob_id, EXTERNAL_SEALED)
    assert got == streamed(None, blob_id, EXTERNAL_SEALED) and got.external
    assert "refused" in one_call(None, blob_id, EXTERNAL_SEALED + b"x")  # content_size
    assert one_call(None, blob_id, EXTERNAL_SEALED + b"x") == streamed(
        None, blob_id, EXTERNAL_SEALED + b"x"
    )


def test_refusals_without_a_secret_or_for_another_id() -> None:
    v = SEALED[0]
    for secret, blob_id in ((None, v.blob_id), (SECRET, v.blob_id + "x"), (os.urandom(128),
                                                                           v.blob_id)):
        assert one_call(secret, blob_id, v.sealed) == streamed(secret, blob_id, v.sealed)
        assert "refused" in str(one_call(secret, blob_id, v.sealed))


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 3000),
    where=st.floats(0, 1, exclude_max=True),
    how=st.sampled_from(["flip", "cut", "extend"]),
)
def test_damaged_blobs_are_refused_alike(size: int, where: float, how: str) -> None:
    blob = seal(SECRET, "b", os.urandom(size))
    at = int(where * len(blob))
    if how == "flip":
        bad = blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]
    elif how == "cut":
        bad = blob[:at]
    else:
        bad = blob + os.urandom(1 + at % 20)
    assert isinstance(one_call(SECRET, "b", blob), Opened)
    got = one_call(SECRET, "b", bad)
    assert isinstance(got, str) and got.startswith("refused")
    assert isinstance(streamed(SECRET, "b", bad), str)


def test_seal_gives_the_sealers_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    iv = os.urandom(16)
    monkeypatch.setattr(sealing_module.os, "urandom", lambda n: iv[:n])
    monkeypatch.setattr(sealing_module.time, "time", lambda: 1_700_000_000)
    for plain in (b"", b"x", os.urandom(5000)):
        s = Sealer(SECRET, "same", len(plain))
        assert seal(SECRET, "same", plain) == s.start() + s.update(plain) + s.finish()
