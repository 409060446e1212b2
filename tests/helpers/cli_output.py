"""What CLI tests share: reading put's output, writing a large recognisable file,
storing a blob sealed under someone else's key, reading blobs through the library, and
pointing a profile at another server."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from blobsync.format import seal
from tests.helpers.cli import Account, Device, http
from tests.helpers.passphrase import PASSPHRASE


def forge(account: Account, blob_id: str, plaintext: bytes) -> None:
    """Store a well-formed sealed blob under a key that is not the user's secret."""
    status, body = http(
        "PUT", f"{account.server.url}/blobs/{account.user}/{blob_id}",
        body=seal(os.urandom(128), blob_id, plaintext),
        headers={"Authorization": account.auth()},
    )
    assert status == 200, body


def put_ids(output: str) -> dict[str, str]:
    """path -> blob_id from put's 'blob_id<TAB>path' lines."""
    pairs = [line.split("\t") for line in output.splitlines()]
    assert all(len(p) == 2 for p in pairs), output
    return {path: blob_id for blob_id, path in pairs}


def write_big(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            f.write(i.to_bytes(8, "big") + chunk[8:])  # every MiB different


def read_all(home: Path, ids: list[str]) -> dict[str, bytes]:
    """Every blob as the library on that home reads it (faster than a process each)."""
    from blobsync.client import BlobManager

    async def read() -> dict[str, bytes]:
        m = await BlobManager.open(home, passphrase=PASSPHRASE)
        try:
            return {i: await m.get(i) for i in ids}  # type: ignore[misc]
        finally:
            await m.close()

    return asyncio.run(read())


def move_server(device: Device, url: str) -> str:
    """Point the profile at ``url``; returns the URL it had."""
    config = device.home / "config.json"
    doc = json.loads(config.read_text())
    old, doc["server"] = doc["server"], url
    config.write_text(json.dumps(doc))
    return str(old)
