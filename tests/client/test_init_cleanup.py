"""A failed init takes back the secret it stored on the server."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blobsync.client import SECRET_BLOB_ID, SECRET_NAMESPACE, BlobManager, ClientError
from tests.helpers.client import Account
from tests.helpers.passphrase import PASSPHRASE


async def test_failed_init_deletes_the_secret_it_uploaded(
    account: Account, tmp_path: Path
) -> None:
    home = tmp_path / "used"
    home.mkdir()
    conn = sqlite3.connect(home / "local.db")  # not a store of any secret: open fails
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ClientError, match="cannot be opened"):
        await BlobManager.init(home, server=account.server.url, user=account.user,
                               token=account.token, passphrase="a passphrase soon forgotten")
    # Nothing of it stays on the server: another init makes its own secret, where it would
    # otherwise be refused ("the server already holds a storage secret").
    m = await BlobManager.init(tmp_path / "fresh", server=account.server.url,
                               user=account.user, token=account.token, passphrase=PASSPHRASE)
    try:
        assert await m.remote_list(SECRET_NAMESPACE) == [SECRET_BLOB_ID]
        await m.put("x", b"data")
    finally:
        await m.close()
    b = await BlobManager.init(tmp_path / "other", server=account.server.url,
                               user=account.user, token=account.token, passphrase=PASSPHRASE,
                               recover=True)
    try:
        assert await b.get("x") == b"data"
    finally:
        await b.close()


async def test_failed_recover_keeps_the_secret_of_the_first_device(
    account: Account, tmp_path: Path
) -> None:
    first = await BlobManager.init(tmp_path / "first", server=account.server.url,
                                   user=account.user, token=account.token,
                                   passphrase=PASSPHRASE)
    await first.close()
    home = tmp_path / "second"
    home.mkdir()
    (home / "local.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ClientError, match="cannot be opened"):
        await BlobManager.init(home, server=account.server.url, user=account.user,
                               token=account.token, passphrase=PASSPHRASE, recover=True)
    # init without recover found the same secret there (409): not its to delete either.
    with pytest.raises(ClientError, match="cannot be opened"):
        await BlobManager.init(home, server=account.server.url, user=account.user,
                               token=account.token, passphrase=PASSPHRASE,
                               secret_file=_secret_file(first, tmp_path))
    third = await BlobManager.init(tmp_path / "third", server=account.server.url,
                                   user=account.user, token=account.token,
                                   passphrase=PASSPHRASE, recover=True)
    await third.close()


def _secret_file(m: BlobManager, tmp_path: Path) -> Path:
    path = tmp_path / "secret.bin"
    path.write_bytes(m._secret)
    return path
