"""What lies on the device's disk and in its logs: never plaintext, ids or keys in clear."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from sqlcipher3 import dbapi2

from blobsync.client.secrets import store_key

MARKER = b"PLAINTEXT-MARKER-" + b"q" * 30


def all_bytes(home: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}


async def test_local_store_is_encrypted(devices, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a = await devices("a")
    b = await devices("b")
    ids = ["IDENTIFIER-small-blob", "IDENTIFIER-inline-edge", "IDENTIFIER-large-blob"]
    payloads = [MARKER * 10, MARKER * 1000, MARKER * 50_000]  # db, db and file
    for blob_id, data in zip(ids, payloads, strict=True):
        await a.put(blob_id, data, namespace="NAMESPACE-secretive")
    await b.sync("NAMESPACE-secretive")
    assert await b.get(ids[2], namespace="NAMESPACE-secretive") == payloads[2]
    secret = a._secret
    for m in (a, b):
        home = m.profile.home
        files = all_bytes(home)
        assert home / "local.db" in files
        assert any(p.parent.parent == home / "blobs" for p in files)  # a sealed file exists
        for path, content in files.items():
            assert MARKER[:20] not in content, path
            for blob_id in ids:
                assert blob_id.encode() not in content, (path, blob_id)
                assert blob_id not in path.name
            assert b"NAMESPACE-secretive" not in content, path
            assert secret[:16] not in content and secret[64:80] not in content, path
            assert secret.hex().encode()[:32] not in content, path
        # the database does not open without its key, and opens with it
        conn = dbapi2.connect(str(home / "local.db"))
        with pytest.raises(dbapi2.DatabaseError):
            conn.execute("SELECT count(*) FROM blobs").fetchone()
        conn.close()
        conn = dbapi2.connect(str(home / "local.db"))
        conn.execute(f"PRAGMA key = \"x'{store_key(secret).hex()}'\"")
        assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 3
        conn.close()
    # and nothing of it reached the logs (the token neither)
    text = caplog.text
    assert "PLAINTEXT-MARKER" not in text
    assert secret.hex()[:32] not in text
    assert a.profile.token not in text


async def test_wrong_key_cannot_open_the_store(devices, tmp_path: Path) -> None:
    a = await devices("a")
    await a.put("x", b"data")
    path = a.profile.home / "local.db"
    conn = dbapi2.connect(str(path))
    conn.execute(f"PRAGMA key = \"x'{os.urandom(32).hex()}'\"")
    with pytest.raises(dbapi2.DatabaseError):
        conn.execute("SELECT count(*) FROM blobs").fetchone()
    conn.close()
