"""The storage secret: 128 random bytes, kept on disk and on the server only encrypted.

The encrypted form is one JSON document (``secret.enc``): scrypt derives an AES-256-GCM key
from the passphrase; the KDF parameters and salt are bound to the ciphertext as associated
data, so tampering with them makes decryption fail like a wrong passphrase would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from blobsync.format.keys import SECRET_SIZE, local_key

from .errors import ClientError, WrongPassphrase

FORMAT_VERSION = 1
# SPEC-level floor from the brief: n=2**15, r=8, p=1 (~32 MiB, ~0.1 s). Stronger is allowed.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_SIZE = 16
NONCE_SIZE = 12
# Refuse documents asking for absurd work: a hostile copy on the server must not hang us.
MAX_SCRYPT_N = 1 << 22


def generate_secret() -> bytes:
    return os.urandom(SECRET_SIZE)


def load_raw_secret(path: str | Path) -> bytes:
    """Read a raw 128-byte secret file (``init --secret-file``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read secret file {path}: {exc.strerror}") from None
    if len(data) != SECRET_SIZE:
        raise ClientError(f"secret file {path} holds {len(data)} bytes, expected {SECRET_SIZE}")
    return data


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _aad(params: dict[str, object]) -> bytes:
    return b"blobsync-secret-v1" + json.dumps(params, sort_keys=True).encode()


def encrypt_secret(
    secret: bytes, passphrase: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> bytes:
    """The JSON document that keeps ``secret`` under ``passphrase``."""
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"storage secret must be {SECRET_SIZE} bytes")
    salt = os.urandom(SALT_SIZE)
    nonce = os.urandom(NONCE_SIZE)
    params: dict[str, object] = {
        "version": FORMAT_VERSION,
        "kdf": "scrypt",
        "n": n,
        "r": r,
        "p": p,
        "salt": base64.b64encode(salt).decode(),
        "cipher": "aes-256-gcm",
        "nonce": base64.b64encode(nonce).decode(),
    }
    key = _derive(passphrase, salt, n, r, p)
    ciphertext = AESGCM(key).encrypt(nonce, secret, _aad(params))
    doc = dict(params, ciphertext=base64.b64encode(ciphertext).decode())
    return json.dumps(doc, indent=1).encode() + b"\n"


def decrypt_secret(document: bytes, passphrase: str) -> bytes:
    """The secret kept in ``document``; WrongPassphrase when it does not decrypt."""
    try:
        doc = json.loads(document)
        params = {k: doc[k] for k in ("version", "kdf", "n", "r", "p", "salt", "cipher", "nonce")}
        salt = base64.b64decode(doc["salt"], validate=True)
        nonce = base64.b64decode(doc["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
    except (ValueError, KeyError, TypeError):
        raise ClientError("the encrypted storage secret is garbled") from None
    if params["version"] != FORMAT_VERSION or params["kdf"] != "scrypt" or (
        params["cipher"] != "aes-256-gcm"
    ):
        raise ClientError("the encrypted storage secret uses an unknown format")
    if not (2 <= n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ClientError("the encrypted storage secret asks for unreasonable scrypt parameters")
    key = _derive(passphrase, salt, n, r, p)
    try:
        secret = AESGCM(key).decrypt(nonce, ciphertext, _aad(params))
    except InvalidTag:
        raise WrongPassphrase() from None
    if len(secret) != SECRET_SIZE:
        raise ClientError("the encrypted storage secret does not hold 128 bytes")
    return secret


def store_key(secret: bytes) -> bytes:
    """The 32-byte SQLCipher raw key, derived from secret[0:64].

    SQLCipher takes a raw key only as 32 bytes (or 32 + a 16-byte salt); any other length
    is run through its PBKDF2 as a passphrase (~0.2 s per open). Hashing the 64-byte local
    key down keeps all of its entropy and keeps opening instant.
    """
    return hmac.new(local_key(secret), b"blobsync local store v1", hashlib.sha256).digest()


def names_key(secret: bytes) -> bytes:
    """Key that turns (namespace, blob_id) into file names which reveal neither."""
    return hmac.new(local_key(secret), b"blobsync file names v1", hashlib.sha256).digest()
