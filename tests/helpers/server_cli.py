"""Operate a server from outside, as an operator or a crashing client would: plain HTTP
calls, the CLI's one-line answers, users added to a stopped server's data dir, uploads left
half sent, payloads no row names, and a self-signed certificate for TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blobsync.server.auth import hash_token
from blobsync.server.storage.factory import make_store


def add_user(data: Path, uuid: str, token: str) -> None:
    async def run() -> None:
        store = make_store(str(data), None, None)
        await store.index.open()
        try:
            await store.index.add_user(uuid, hash_token(token))
        finally:
            await store.index.close()

    asyncio.run(run())


def start_upload(url: str, path: str, token: str, body: bytes, total: int) -> socket.socket:
    """Send the head and ``body`` of a request whose Content-Length is ``total``."""
    import base64

    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    cred = base64.b64encode(f"alice:{token}".encode()).decode()
    sock.sendall(
        f"{'PUT' if path.startswith('/blobs') else 'POST'} {path} HTTP/1.1\r\n"
        f"Host: {host}\r\nAuthorization: Token {cred}\r\nContent-Length: {total}\r\n\r\n"
        .encode() + body
    )
    return sock


def wait_until(predicate, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def orphans(data: Path) -> set[str]:
    """Payload locations no index row names, read with the server down (or beside it)."""

    async def run() -> set[str]:
        store = make_store(str(data), None, None)
        await store.open()
        try:
            indexed = await store.index.all_locations()
            return {loc async for loc, _ in store.payloads.locations() if loc not in indexed}
        finally:
            await store.close()

    return asyncio.run(run())


def call(method: str, url: str, name: str | None = None, token: str | None = None,
         body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if name is not None:
        cred = base64.b64encode(f"{name}:{token}".encode()).decode()
        req.add_header("Authorization", f"Token {cred}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def ok_token(proc: Any) -> str:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # the token, alone
    return lines[0]


def one_line_error(proc: Any) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("blobsync: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def self_signed(tmp_path: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
