"""Init in a directory that already holds files of the user's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blobsync.client import BlobManager, ClientError
from tests.helpers.client import Account
from tests.helpers.passphrase import PASSPHRASE


def users_files(home: Path) -> None:
    (home / "tmp").mkdir(parents=True)
    (home / "tmp" / "notes.txt").write_text("the user's notes")
    (home / "blobs").mkdir()
    (home / "blobs" / "photo.jpg").write_bytes(b"the user's photo")
    (home / "other.txt").write_text("unrelated")


async def test_init_in_a_used_directory_keeps_its_files(account: Account, tmp_path: Path) -> None:
    home = tmp_path / "used"
    users_files(home)
    m = await BlobManager.init(home, server=account.server.url, user=account.user,
                               token=account.token, passphrase=PASSPHRASE)
    try:
        await m.put("x", b"data")
        assert await m.get("x") == b"data"
    finally:
        await m.close()
    assert (home / "tmp" / "notes.txt").read_text() == "the user's notes"
    assert (home / "blobs" / "photo.jpg").read_bytes() == b"the user's photo"


async def test_failed_init_removes_only_what_it_created(account: Account, tmp_path: Path) -> None:
    home = tmp_path / "used"
    users_files(home)
    conn = sqlite3.connect(home / "local.db")  # not a store of this secret: open fails
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ClientError, match="cannot be opened"):
        await BlobManager.init(home, server=account.server.url, user=account.user,
                               token=account.token, passphrase=PASSPHRASE)
    assert (home / "other.txt").exists()
    assert (home / "local.db").exists()
    assert (home / "tmp" / "notes.txt").read_text() == "the user's notes"
    assert (home / "blobs" / "photo.jpg").read_bytes() == b"the user's photo"
