"""Keys derived from the storage secret, and the size rounding that hides plaintext sizes."""

from __future__ import annotations

import hashlib
import hmac

SECRET_SIZE = 128  # SPEC 1: bytes 0-63 key the local store, bytes 64-127 the remote blobs
MIN_CONTENT_SIZE = 4096


def check_secret(secret: bytes) -> None:
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"storage secret must be {SECRET_SIZE} bytes, got {len(secret)}")


def local_key(secret: bytes) -> bytes:
    """The 64-byte key of the local store."""
    check_secret(secret)
    return secret[:64]


def blob_key(secret: bytes, blob_id: str) -> bytes:
    """The AES-256 key of one blob: HMAC-SHA256(secret[64:128], blob_id)."""
    check_secret(secret)
    return hmac.new(secret[64:], blob_id.encode("utf-8"), hashlib.sha256).digest()


def rounded_size(size: int) -> int:
    """The smallest power of two, at least 4096, strictly greater than ``size``.

    Soledad stopped at 2**30; SPEC says the powers go on, so there is no cap.
    """
    if size < 0:
        raise ValueError("size must not be negative")
    return max(MIN_CONTENT_SIZE, 1 << size.bit_length())
