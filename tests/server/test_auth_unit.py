"""Tokens and the Authorization header: pure unit tests."""

from __future__ import annotations

import base64
import hashlib

import pytest

from blobsync.server.auth import (
    Unauthorized,
    hash_token,
    new_token,
    parse_token_header,
    token_matches,
)
from blobsync.server.storage.base import Principal


def header(text: str) -> str:
    return "Token " + base64.b64encode(text.encode()).decode()


def test_hash_is_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()


def test_new_tokens_are_long_and_distinct() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 43 for t in tokens)


def test_parse() -> None:
    assert parse_token_header(header("alice:s3cr:et")) == ("alice", "s3cr:et")
    assert parse_token_header("token " + header("a:b")[6:]) == ("a", "b")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Basic " + base64.b64encode(b"alice:x").decode(),
        "Token",
        "Token !!!notbase64",
        header("alice"),  # no colon
        header("alice:"),  # no token
        header("../x:tok"),  # not a valid id
        header(":tok"),
        "Token " + base64.b64encode(b"\xff\xfe:x").decode(),  # not UTF-8
        "Token " + "A" * 2000,
    ],
)
def test_parse_rejects(value: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        parse_token_header(value)
    assert info.value.status_hint == 401


def test_token_matches() -> None:
    p = Principal("alice", hash_token("good"))
    assert token_matches(p, "good")
    assert not token_matches(p, "bad")
    assert not token_matches(None, "good")
