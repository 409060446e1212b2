"""What CLI tests share: reading put's output, writing a large recognisable file, and
storing a blob sealed under someone else's key."""

from __future__ import annotations

import os
from pathlib import Path

from blobsync.format import seal
from tests.cli.conftest import Account, http


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
