"""The encrypted per-blob meta of SPEC 11: a blob's name, size and times, sealed on the
device so that only the user's devices can read it.

Sans-IO like the rest of the package: text in, a ``Meta`` out, and the reverse. The server
uses ``check_meta_text`` alone (shape and length; it never opens a meta); devices use
``seal_meta`` and ``open_meta``. The layout, and why, is in docs/protocol.md ("Encrypted
metadata").
"""

from __future__ import annotations

import binascii
import hmac
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import LimitExceeded, ProtocolError
from .keys import check_secret
from .limits import MAX_META_LENGTH  # SPEC 11's 4096, beside the stream header limit it sizes
from .preamble import b64url_encode

# SPEC 11: a 12-byte iv and a 16-byte tag around the ciphertext; anything shorter cannot
# be a meta.
META_IV_SIZE = 12
META_TAG_SIZE = 16
MIN_META_BYTES = META_IV_SIZE + META_TAG_SIZE

# The JSON plaintext that still fits in MAX_META_LENGTH once sealed and encoded (with
# padding): 4096 characters are 3072 bytes, less the iv and the tag.
MAX_META_PLAINTEXT = MAX_META_LENGTH // 4 * 3 - MIN_META_BYTES

# SPEC 11: the meta key is HMAC-SHA256 over this prefix and the blob id, keyed by the
# remote half of the storage secret: another key than the blob's own for the same id.
META_KEY_PREFIX = b"blobsync-meta:"

# The permission bits a meta's ``mode`` may carry (setuid, setgid, sticky and rwx x3).
MAX_MODE = 0o7777

_KNOWN = ("name", "size", "mtime", "mode", "type")
# JSON's string form, as json.dumps(ensure_ascii=False) writes it (the C encoder).
_encode_str = json.encoder.encode_basestring  # type: ignore[attr-defined]
_FROM_URLSAFE_STR = str.maketrans("-_", "+/")
# check_meta_text's: the alphabet with at most two padding characters at the end, and the
# value of each character (its low bits must be zero in a canonical last character).
_META_TEXT = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_B64_VALUE = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


class InvalidMeta(ProtocolError):
    """A meta that cannot be opened or does not hold what SPEC 11 says: one error for
    every failure on this untrusted input, with a reason."""

    status_hint = 400


@dataclass(frozen=True, slots=True)
class Meta:
    """What a meta holds. ``name`` is a relative path with ``/`` between its parts;
    ``size`` the plaintext size; ``mtime`` seconds since the epoch. ``extra`` keeps the
    keys this version does not know (SPEC 11: kept and ignored)."""

    name: str
    size: int
    mtime: float
    mode: int | None = None
    type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _meta_problem(self.name, self.size, self.mtime, self.mode, self.type)
        if problem:
            raise ValueError(problem)

    def to_json(self) -> bytes:
        if not self.extra and type(self.mtime) is float:
            # The usual meta, written out by hand: json.dumps took 4 us of the ~12 that
            # sealing a meta costs, for each of thousands of small files. The same text
            # json.dumps gives (a float's repr is its JSON form).
            text = '{"name":' + _encode_str(self.name) + ',"size":' + str(self.size) \
                + ',"mtime":' + repr(self.mtime)
            if self.mode is not None:
                text += ',"mode":' + str(self.mode)
            if self.type is not None:
                text += ',"type":' + _encode_str(self.type)
            return (text + "}").encode("utf-8")
        doc: dict[str, Any] = dict(self.extra)
        doc.update(name=self.name, size=self.size, mtime=self.mtime)
        if self.mode is not None:
            doc["mode"] = self.mode
        if self.type is not None:
            doc["type"] = self.type
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def valid_name(name: str) -> bool:
    """A relative path with ``/`` between its parts: not empty, not absolute, no empty,
    ``.`` or ``..`` part, no NUL. What ``get -r`` may safely join under a directory."""
    if not name or name.startswith("/") or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def meta_key(secret: bytes, blob_id: str) -> bytes:
    """The AES-256 key of one blob's meta (SPEC 11)."""
    check_secret(secret)
    return hmac.digest(secret[64:], META_KEY_PREFIX + blob_id.encode("utf-8"), "sha256")


def seal_meta(secret: bytes, blob_id: str, meta: Meta) -> str:
    """The meta of ``blob_id`` as it travels: base64url text, padded. The iv is drawn
    here. LimitExceeded when it would be longer than MAX_META_LENGTH (a very long name)."""
    plaintext = meta.to_json()
    if len(plaintext) > MAX_META_PLAINTEXT:
        raise LimitExceeded(
            f"meta too long: {len(plaintext)} bytes of JSON, at most {MAX_META_PLAINTEXT} "
            "(a shorter name fits)"
        )
    return _seal(secret, blob_id, plaintext, os.urandom(META_IV_SIZE))


def _seal(secret: bytes, blob_id: str, plaintext: bytes, iv: bytes) -> str:
    # The iv is a parameter only so that tests can pin known answers; callers use seal_meta.
    sealed = AESGCM(meta_key(secret, blob_id)).encrypt(iv, plaintext, blob_id.encode("utf-8"))
    return b64url_encode(iv + sealed).decode("ascii")


def meta_bytes(text: str) -> bytes:
    """The bytes of a meta's base64url text, padded or not; ProtocolError (400) when it is
    not base64url or too short, LimitExceeded (413) when longer than MAX_META_LENGTH. All
    a server checks: it never opens a meta."""
    check_meta_text(text)  # its rules leave nothing for the decoder to refuse
    bare = text.rstrip("=")
    return binascii.a2b_base64((bare + "=" * (-len(bare) % 4)).translate(_FROM_URLSAFE_STR))


def check_meta_text(text: str) -> None:
    """The server's check of a meta it is given (SPEC 11): base64url, at least
    MIN_META_BYTES, at most MAX_META_LENGTH characters. Raises with the status hint.

    ``meta_bytes``'s rules without decoding: a server checks one per blob of a stream,
    where decoding and encoding again to see that the text is canonical cost more than
    the rest of a small blob's header (only the last character's unused bits tell).
    """
    if len(text) > MAX_META_LENGTH:
        raise LimitExceeded(f"meta longer than {MAX_META_LENGTH} characters")
    if _META_TEXT.fullmatch(text) is None:
        raise ProtocolError("meta is not base64url")
    n = len(bare := text.rstrip("="))
    if n % 4 == 1 or (len(text) != n and len(text) % 4):
        raise ProtocolError("meta is not base64url")
    if n % 4 and _B64_VALUE[bare[-1]] & (0x0F if n % 4 == 2 else 0x03):
        raise ProtocolError("meta is not canonical base64url")
    if n * 3 // 4 < MIN_META_BYTES:
        raise ProtocolError(f"meta shorter than {MIN_META_BYTES} bytes")


def open_meta(secret: bytes, blob_id: str, text: str) -> Meta:
    """Open the meta of ``blob_id``; InvalidMeta on any failure (malformed, another blob's,
    altered, or not the JSON object SPEC 11 describes)."""
    try:
        raw = meta_bytes(text)
    except ProtocolError as exc:
        raise InvalidMeta(str(exc)) from None
    try:
        plaintext = AESGCM(meta_key(secret, blob_id)).decrypt(
            raw[:META_IV_SIZE], raw[META_IV_SIZE:], blob_id.encode("utf-8")
        )
    except InvalidTag:
        raise InvalidMeta("meta does not verify (another blob's, or altered)") from None
    try:
        doc = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidMeta("meta is not a JSON object") from None
    if not isinstance(doc, dict):
        raise InvalidMeta("meta is not a JSON object")
    name, size, mtime = doc.get("name"), doc.get("size"), doc.get("mtime")
    mode, mtype = doc.get("mode"), doc.get("type")
    problem = _meta_problem(name, size, mtime, mode, mtype)
    if problem:
        raise InvalidMeta(problem)
    extra = {k: v for k, v in doc.items() if k not in _KNOWN} if len(doc) > 5 or any(
        k not in _KNOWN for k in doc) else {}
    return _checked_meta(name, size, mtime, mode, mtype, extra)


_set = object.__setattr__


def _checked_meta(name: str, size: int, mtime: float, mode: int | None, mtype: str | None,
                  extra: Mapping[str, Any]) -> Meta:
    """A Meta whose fields _meta_problem has just passed, without passing them again in
    __post_init__: a sync opens one meta per blob, thousands at a time."""
    meta = object.__new__(Meta)
    for slot, value in (("name", name), ("size", size), ("mtime", mtime), ("mode", mode),
                        ("type", mtype), ("extra", extra)):
        _set(meta, slot, value)
    return meta


def _meta_problem(name: Any, size: Any, mtime: Any, mode: Any, mtype: Any) -> str | None:
    if not isinstance(name, str) or not valid_name(name):
        return "meta name is not a relative path"
    if type(size) is not int or size < 0:
        return "meta size is not a size"
    if type(mtime) not in (int, float) or not math.isfinite(mtime):
        return "meta mtime is not a time"
    if mode is not None and (type(mode) is not int or not 0 <= mode <= MAX_MODE):
        return "meta mode is not permission bits"
    if mtype is not None and not isinstance(mtype, str):
        return "meta type is not a media type"
    return None
