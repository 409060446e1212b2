"""Sealing and opening blobs: the one facade over AES-256-GCM.

The caller never picks an IV, and an opened blob is reported good only after its tag
verifies. Plaintext handed to an opener's sink before that is provisional: the sink must
hold it aside (a temporary file, say) until ``finish`` returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    parse_sealed_head,
)

# Bytes a symkey sealed blob adds to its plaintext: 736 base64 chars, a space, the tag.
SEAL_OVERHEAD = 736 + 1 + TAG_SIZE
# Bytes an external sealed blob adds to its payload: the head only.
EXTERNAL_OVERHEAD = 736 + 1


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

    def finish(self) -> bytes:
        if self._fed != self.size:
            raise ValueError(f"{self._fed} bytes of plaintext, {self.size} declared")
        return self._enc.finalize() + self._enc.tag


@dataclass(frozen=True, slots=True)
class Opened:
    """What a successful opening reports."""

    preamble: Preamble
    size: int  # bytes handed to the sink
    external: bool  # True: the payload is a service's, raw, not decrypted by us


class Opener:
    """Open one sealed blob fed in arbitrary chunks, passing plaintext to ``sink``.

    ``finish()`` returns Opened only after the tag verifies; any failure is InvalidBlob.
    The last 16 bytes fed are always held back, since they may be the tag.
    """

    def __init__(
        self, secret: bytes | None, blob_id: str, sink: Callable[[bytes], object]
    ) -> None:
        if secret is not None:
            check_secret(secret)
        self._secret = secret
        self._blob_id = blob_id
        self._sink = sink
        self._buf = bytearray()
        self._head: SealedHead | None = None
        self._dec = None
        self._size = 0
        self._done = False
        # Once refused, a blob stays refused: a caller that ignores an error from feed()
        # must not get a success from finish() (nor hand on data as if it were the payload).
        self._error: InvalidBlob | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise RuntimeError("feed() after finish()")
        if self._error is not None:
            raise InvalidBlob(self._error.reason)
        try:
            self._feed(chunk)
        except InvalidBlob as exc:
            self._error = exc
            raise

    def _feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._head is None:
            self._buf += chunk
            head = parse_sealed_head(self._buf)
            if head is None:
                return
            self._begin(head)
            del self._buf[: head.size]
            chunk = b""
        # Only the last TAG_SIZE bytes seen are held back (they may be the tag); the bulk
        # of a chunk goes to the cipher as a view, never through the buffer.
        keep = TAG_SIZE if self._dec is not None else 0
        if len(chunk) < keep:
            self._buf += chunk
            self._release(len(self._buf) - keep)
            return
        self._release(len(self._buf))
        view = memoryview(chunk)
        cut = len(view) - keep
        if cut:
            self._release_view(view[:cut])
        self._buf += view[cut:]

    def _begin(self, head: SealedHead) -> None:
        pre = head.preamble
        pre.check(self._blob_id)
        if pre.scheme is Scheme.SYMKEY:
            if self._secret is None:
                raise InvalidBlob("symkey blob but no secret to open it")
            key = blob_key(self._secret, self._blob_id)
            self._dec = Cipher(algorithms.AES(key), modes.GCM(pre.iv)).decryptor()
            self._dec.authenticate_additional_data(head.raw_preamble)
        # Set last: a head is only taken once everything about it checked out.
        self._head = head

    def _release(self, n: int) -> None:
        """Release the first ``n`` held bytes."""
        if n <= 0:
            return
        piece = bytes(self._buf[:n])
        del self._buf[:n]
        self._release_view(memoryview(piece))

    def _release_view(self, piece: memoryview) -> None:
        self._size += len(piece)
        self._sink(self._dec.update(piece) if self._dec is not None else bytes(piece))

    def finish(self) -> Opened:
        """Call once, at the end of input: verifies and reports, or raises InvalidBlob."""
        if self._done:
            raise RuntimeError("finish() called twice")
        self._done = True
        if self._error is not None:
            raise InvalidBlob(f"refused earlier: {self._error.reason}")
        if self._head is None:
            raise InvalidBlob("sealed blob: cut short inside its head")
        pre = self._head.preamble
        if self._dec is None:
            self._release(len(self._buf))
            if pre.content_size is not None and pre.content_size != self._size:
                raise InvalidBlob(
                    f"external blob: {self._size} bytes, preamble says {pre.content_size}"
                )
            return Opened(pre, self._size, external=True)
        if len(self._buf) != TAG_SIZE:
            raise InvalidBlob("sealed blob: cut short before its tag")
        try:
            tail = self._dec.finalize_with_tag(bytes(self._buf))
        except InvalidTag:
            raise InvalidBlob("sealed blob: tag does not verify") from None
        if tail:
            self._sink(tail)
        return Opened(pre, self._size, external=False)


def seal(secret: bytes, blob_id: str, plaintext: bytes) -> bytes:
    """Seal a whole plaintext in memory, in one call to the cipher: the same bytes as a
    Sealer fed the whole, at a fraction of the per-blob cost (puts of small files)."""
    s = Sealer(secret, blob_id, len(plaintext))
    return s._head + AESGCM(s._key).encrypt(s.preamble.iv, plaintext, s._raw)


def open_sealed(secret: bytes | None, blob_id: str, sealed: bytes) -> bytes:
    """Open a whole sealed blob in memory; raises InvalidBlob."""
    parts: list[bytes] = []
    opener = Opener(secret, blob_id, parts.append)
    opener.feed(sealed)
    opener.finish()
    return b"".join(parts)


def check_sealed(secret: bytes | None, blob_id: str, sealed: bytes | bytearray) -> Opened:
    """Verify a whole sealed blob held in memory, keeping no plaintext; raises InvalidBlob.

    Reports what an Opener fed the same bytes reports, and refuses what it refuses, in one
    call to the cipher: for the thousands of small blobs of a stream download, the
    streaming Opener's per-blob setup cost more than the decryption."""
    head = parse_sealed_head(sealed)
    if head is None:
        raise InvalidBlob("sealed blob: cut short inside its head")
    pre = head.preamble
    pre.check(blob_id)
    body = memoryview(sealed)[head.size :]
    if pre.scheme is not Scheme.SYMKEY:
        if pre.content_size is not None and pre.content_size != len(body):
            raise InvalidBlob(
                f"external blob: {len(body)} bytes, preamble says {pre.content_size}"
            )
        return Opened(pre, len(body), external=True)
    if secret is None:
        raise InvalidBlob("symkey blob but no secret to open it")
    if len(body) < TAG_SIZE:
        raise InvalidBlob("sealed blob: cut short before its tag")
    try:
        AESGCM(blob_key(secret, blob_id)).decrypt(pre.iv, body, head.raw_preamble)
    except InvalidTag:
        raise InvalidBlob("sealed blob: tag does not verify") from None
    return Opened(pre, len(body) - TAG_SIZE, external=False)


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
