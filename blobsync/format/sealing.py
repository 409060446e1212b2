"""Sealing and opening blobs: the one facade over AES-256-GCM.

The caller never picks an IV, and an opened blob is reported good only after its tag
verifies. The Opener is pull-style (sans-IO, as h11): ``feed`` returns the plaintext it
could decrypt, which is UNVERIFIED until ``finish`` returns; the client holds it aside in
one place (``blobsync.client.verified``) until then.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import InvalidBlob
from .keys import blob_key, check_secret, rounded_size
from .preamble import (
    EXTERNAL_REVISION,
    IMMUTABLE_REVISION,
    IV_SIZE,
    TAG_SIZE,
    Method,
    Preamble,
    Scheme,
    SealedHead,
    b64url_encode,
    parse_sealed_head,
)
from .verifier import SealedVerifier

# Bytes a symkey sealed blob adds to its plaintext: 736 base64 chars, a space, the tag.
SEAL_OVERHEAD = 736 + 1 + TAG_SIZE
# Bytes an external sealed blob adds to its payload: the head only.
EXTERNAL_OVERHEAD = 736 + 1


# Decryptions begun in this process (an Opener's cipher set up, a check_sealed): a counter
# tests read to show that a path decrypts a blob once, not a knob.
_decryptions = 0


def decryptions() -> int:
    """How many blob decryptions this process has begun so far."""
    return _decryptions


def _count_decryption() -> None:
    global _decryptions
    _decryptions += 1


def sealed_size(plaintext_size: int) -> int:
    return plaintext_size + SEAL_OVERHEAD


class Sealer:
    """Seal a plaintext of known size, chunk by chunk.

    ``start()`` gives the head, ``update()`` the ciphertext of each chunk, ``finish()`` the
    tag. The size must be known first because the preamble, sent first, states it rounded.
    """

    def __init__(
        self,
        secret: bytes,
        blob_id: str,
        size: int,
        *,
        _iv: bytes | None = None,
        _timestamp: int | None = None,
    ) -> None:
        # _iv and _timestamp exist only so known-answer tests can reproduce vectors.
        self.blob_id = blob_id
        self.size = size
        self._fed = 0
        iv = os.urandom(IV_SIZE) if _iv is None else _iv
        self.preamble = Preamble(
            Scheme.SYMKEY,
            Method.AES_256_GCM,
            int(time.time()) if _timestamp is None else _timestamp,
            iv,
            blob_id,
            IMMUTABLE_REVISION,
            rounded_size(size),
        )
        self._raw = self.preamble.encode()
        self._head = self.preamble.encode_b64() + b" "
        self._key = blob_key(secret, blob_id)
        self._enc: Any = None  # made by start(): seal() never needs one
        self._started = False

    @property
    def sealed_size(self) -> int:
        return sealed_size(self.size)

    def start(self) -> bytes:
        self._enc = Cipher(algorithms.AES(self._key), modes.GCM(self.preamble.iv)).encryptor()
        self._enc.authenticate_additional_data(self._raw)
        self._started = True
        return self._head

    def update(self, chunk: bytes | bytearray | memoryview) -> bytes:
        if not self._started:
            raise RuntimeError("start() must come before update()")
        self._fed += len(chunk)
        if self._fed > self.size:
            raise ValueError(f"more plaintext than the {self.size} bytes declared")
        return self._enc.update(chunk)

    def seal_whole(self, plaintext: bytes) -> bytes:
        """The whole sealed blob of ``plaintext`` in one call to the cipher, instead of
        start, update and finish (the same bytes)."""
        if self._started:
            raise RuntimeError("seal_whole() after start()")
        if len(plaintext) != self.size:
            raise ValueError(f"{len(plaintext)} bytes of plaintext, {self.size} declared")
        self._started = True
        return self._head + AESGCM(self._key).encrypt(self.preamble.iv, plaintext, self._raw)

    def finish(self) -> bytes:
        if self._fed != self.size:
            raise ValueError(f"{self._fed} bytes of plaintext, {self.size} declared")
        return self._enc.finalize() + self._enc.tag


@dataclass(frozen=True, slots=True)
class Opened:
    """What a successful opening reports."""

    preamble: Preamble
    size: int  # plaintext bytes of the blob
    external: bool  # True: the payload is a service's, raw, not decrypted by us
    # Plaintext only finish() could release (the last bytes of an external payload, held
    # back in case they were a tag). Not part of the report's identity, never shown.
    rest: bytes = field(default=b"", compare=False, repr=False)


class Opener:
    """Open one sealed blob fed in arbitrary chunks, pull-style: ``feed(chunk)`` returns
    the plaintext it could decrypt (b"" if none), ``finish()`` the report.

    The bytes ``feed`` returns are UNVERIFIED until ``finish()`` returned: whoever takes
    them must hold them aside and release nothing before (the client does that in one
    place, ``blobsync.client.verified``). ``finish()`` returns Opened only after the tag
    verifies, with ``Opened.rest`` the plaintext still held back; any failure is
    InvalidBlob. The structure is checked by a SealedVerifier, which holds back the last
    16 bytes fed (they may be the tag); this adds only the cipher.
    """

    def __init__(self, secret: bytes | None, blob_id: str, *, keep: bool = True) -> None:
        """``keep=False``: verify only; ``feed`` returns b"" and ``rest`` is empty (a
        download that is kept sealed needs its tag checked, not its plaintext gathered)."""
        if secret is not None:
            check_secret(secret)
        self._secret = secret
        self._blob_id = blob_id
        self._keep = keep
        self._out: list[bytes] = []
        self._dec: Any = None
        self._verifier = SealedVerifier(blob_id, on_head=self._begin, on_body=self._body)
        self._done = False
        # Once refused, a blob stays refused: a caller that ignores an error from feed()
        # must not get a success from finish() (nor hand on data as if it were the payload).
        self._error: InvalidBlob | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """The plaintext this chunk completes, unverified; raises InvalidBlob."""
        if self._done:
            raise RuntimeError("feed() after finish()")
        if self._error is not None:
            raise InvalidBlob(self._error.reason)
        try:
            self._verifier.feed(chunk)
        except InvalidBlob as exc:
            self._error = exc
            self._out.clear()
            raise
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def _begin(self, head: SealedHead) -> None:
        if head.preamble.scheme is Scheme.SYMKEY:
            if self._secret is None:
                raise InvalidBlob("symkey blob but no secret to open it")
            key = blob_key(self._secret, self._blob_id)
            self._dec = Cipher(algorithms.AES(key), modes.GCM(head.preamble.iv)).decryptor()
            self._dec.authenticate_additional_data(head.raw_preamble)
            _count_decryption()

    def _body(self, piece: memoryview) -> None:
        if self._dec is not None:
            plain = self._dec.update(piece)  # GCM checks the tag over all it decrypts
            if self._keep:
                self._out.append(plain)
        elif self._keep:
            self._out.append(bytes(piece))

    def finish(self) -> Opened:
        """Call once, at the end of input: verifies and reports, or raises InvalidBlob."""
        if self._done:
            raise RuntimeError("finish() called twice")
        self._done = True
        if self._error is not None:
            raise InvalidBlob(f"refused earlier: {self._error.reason}")
        verified = self._verifier.finish()
        if verified.external:
            return Opened(verified.preamble, verified.body_size + len(verified.tail),
                          external=True, rest=bytes(verified.tail) if self._keep else b"")
        try:
            last = self._dec.finalize_with_tag(verified.tail)
        except InvalidTag:
            raise InvalidBlob("sealed blob: tag does not verify") from None
        return Opened(verified.preamble, verified.body_size, external=False,
                      rest=last if self._keep else b"")


def seal(secret: bytes, blob_id: str, plaintext: bytes) -> bytes:
    """Seal a whole plaintext in memory, in one call to the cipher: the same bytes as a
    Sealer fed the whole, at a fraction of the per-blob cost (puts of small files: no
    Sealer, the preamble packed once, not once for its raw bytes and again for base64)."""
    iv = os.urandom(IV_SIZE)
    raw = Preamble(
        Scheme.SYMKEY, Method.AES_256_GCM, int(time.time()), iv, blob_id,
        IMMUTABLE_REVISION, rounded_size(len(plaintext)),
    ).encode()
    return (b64url_encode(raw) + b" "
            + AESGCM(blob_key(secret, blob_id)).encrypt(iv, plaintext, raw))


def open_sealed(secret: bytes | None, blob_id: str, sealed: bytes) -> bytes:
    """Open a whole sealed blob in memory; raises InvalidBlob."""
    opener = Opener(secret, blob_id)
    body = opener.feed(sealed)
    return body + opener.finish().rest


def check_sealed(secret: bytes | None, blob_id: str, sealed: bytes | bytearray) -> Opened:
    """Verify a whole sealed blob held in memory, keeping no plaintext; raises InvalidBlob.

    The same rules as an Opener (one SealedVerifier), and the tag in one call to the
    cipher: for the thousands of small blobs of a stream download, the streaming Opener's
    per-blob setup cost more than the decryption."""
    # The whole blob is at hand: SealedVerifier's rules (verifier.py) applied to it at
    # once, without feeding it through the streaming verifier, a cost per blob that
    # showed for the thousands of a stream download.
    head = parse_sealed_head(sealed)
    if head is None:
        raise InvalidBlob("sealed blob: cut short inside its head")
    pre = head.preamble
    pre.check(blob_id)
    _need_secret(head, secret)
    rest = len(sealed) - head.size
    if pre.scheme is not Scheme.SYMKEY:
        if pre.content_size is not None and pre.content_size != rest:
            raise InvalidBlob(f"external blob: {rest} bytes, preamble says {pre.content_size}")
        return Opened(pre, rest, external=True)
    if rest < TAG_SIZE:
        raise InvalidBlob("sealed blob: cut short before its tag")
    if secret is None:  # refused at the head already; this tells the type checker
        raise InvalidBlob("symkey blob but no secret to open it")
    _count_decryption()
    try:
        AESGCM(blob_key(secret, blob_id)).decrypt(
            pre.iv, memoryview(sealed)[head.size :], head.raw_preamble
        )
    except InvalidTag:
        raise InvalidBlob("sealed blob: tag does not verify") from None
    return Opened(pre, rest - TAG_SIZE, external=False)


def _need_secret(head: SealedHead, secret: bytes | None) -> None:
    if head.preamble.scheme is Scheme.SYMKEY and secret is None:
        raise InvalidBlob("symkey blob but no secret to open it")


def seal_external(blob_id: str, payload_size: int, timestamp: int | None = None) -> bytes:
    """The head a server prepends to a payload a trusted service delivered (SPEC 6)."""
    pre = Preamble(
        Scheme.EXTERNAL,
        Method.PGP,
        int(time.time()) if timestamp is None else timestamp,
        bytes(IV_SIZE),
        blob_id,
        EXTERNAL_REVISION,
        payload_size,
    )
    return pre.encode_b64() + b" "
