"""The storage secret: init, recover on another device, passphrases, imported secrets."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from blobsync.client import (
    SECRET_BLOB_ID,
    SECRET_NAMESPACE,
    AuthFailed,
    BlobManager,
    ClientError,
    NotInitialized,
    ServerUnreachable,
    WrongPassphrase,
)
from blobsync.client.secrets import decrypt_secret, encrypt_secret
from tests.helpers.client import fast_settings
from tests.helpers.passphrase import PASSPHRASE


def test_secret_document_round_trip_and_wrong_passphrase() -> None:
    secret = os.urandom(128)
    doc = encrypt_secret(secret, "pw", n=1 << 10)
    assert secret not in doc and secret.hex().encode() not in doc
    assert decrypt_secret(doc, "pw") == secret
    with pytest.raises(WrongPassphrase):
        decrypt_secret(doc, "pW")
    # the KDF parameters are bound to the ciphertext: changing them is refused too
    tampered = json.loads(doc)
    tampered["n"] = 1 << 11
    with pytest.raises(WrongPassphrase):
        decrypt_secret(json.dumps(tampered).encode(), "pw")
    with pytest.raises(ClientError):
        decrypt_secret(b"not json", "pw")
    with pytest.raises(ClientError):  # absurd work factors from a hostile copy are refused
        decrypt_secret(json.dumps(dict(tampered, n=1 << 40)).encode(), "pw")


async def test_init_recover_and_open(account, tmp_path: Path) -> None:
    srv = account.server
    home_a = tmp_path / "a"
    a = await BlobManager.init(home_a, server=srv.url, user="alice", token=account.token,
                               passphrase=PASSPHRASE, settings=fast_settings())
    await a.put("note", b"written on a")
    await a.close()
    # the encrypted copy is on the server, as an external sealed blob
    assert await srv.store.index.get_blob("alice", SECRET_NAMESPACE, SECRET_BLOB_ID)
    # a second device without recover is refused: it would make another secret
    with pytest.raises(ClientError, match=r"init --recover\)"):
        await BlobManager.init(tmp_path / "x", server=srv.url, user="alice",
                               token=account.token, passphrase=PASSPHRASE)
    assert not (tmp_path / "x").exists()
    with pytest.raises(WrongPassphrase):
        await BlobManager.init(tmp_path / "b", server=srv.url, user="alice",
                               token=account.token, passphrase="wrong", recover=True)
    assert not (tmp_path / "b").exists()  # nothing half-made is left behind
    b = await BlobManager.init(tmp_path / "b", server=srv.url, user="alice",
                               token=account.token, passphrase=PASSPHRASE, recover=True)
    try:
        assert await b.get("note") == b"written on a"  # same secret: it opens
    finally:
        await b.close()
    # open: right passphrase works, wrong one is WrongPassphrase
    with pytest.raises(WrongPassphrase):
        await BlobManager.open(home_a, passphrase="nope")
    async with await BlobManager.open(home_a, passphrase=PASSPHRASE) as again:
        assert await again.get("note") == b"written on a"
        assert again.settings.retry_scale == 0.01  # settings kept in config.json
    with pytest.raises(ClientError, match="already exists"):
        await BlobManager.init(home_a, server=srv.url, user="alice", token=account.token,
                               passphrase=PASSPHRASE)


async def test_profile_files_are_private(account, tmp_path: Path) -> None:
    home = tmp_path / "p"
    m = await BlobManager.init(home, server=account.server.url, user="alice",
                               token=account.token, passphrase=PASSPHRASE)
    await m.close()
    for name in ("config.json", "secret.enc", "local.db"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    config = json.loads((home / "config.json").read_text())
    assert config["server"] == account.server.url
    assert config["user"] == "alice" and config["token"] == account.token
    assert "secret" not in json.dumps(config).lower().replace("secret.enc", "")


async def test_secret_file_import(account, tmp_path: Path) -> None:
    raw = os.urandom(128)
    (tmp_path / "raw.key").write_bytes(raw)
    m = await BlobManager.init(tmp_path / "imp", server=account.server.url, user="alice",
                               token=account.token, passphrase=PASSPHRASE,
                               secret_file=tmp_path / "raw.key")
    await m.close()
    doc = (tmp_path / "imp" / "secret.enc").read_bytes()
    assert decrypt_secret(doc, PASSPHRASE) == raw
    # the copy on the server decrypts to the same secret: recover finds it
    r = await BlobManager.init(tmp_path / "rec", server=account.server.url, user="alice",
                               token=account.token, passphrase=PASSPHRASE, recover=True)
    await r.close()
    assert decrypt_secret((tmp_path / "rec" / "secret.enc").read_bytes(), PASSPHRASE) == raw
    (tmp_path / "short.key").write_bytes(raw[:64])
    with pytest.raises(ClientError, match="128"):
        await BlobManager.init(tmp_path / "bad", server=account.server.url, user="bob",
                               token="t", passphrase=PASSPHRASE,
                               secret_file=tmp_path / "short.key")


async def test_recover_without_a_secret_on_the_server(account, tmp_path: Path) -> None:
    with pytest.raises(ClientError, match=r"no storage secret .*without --recover\)"):
        await BlobManager.init(tmp_path / "r", server=account.server.url, user="alice",
                               token=account.token, passphrase=PASSPHRASE, recover=True)


async def test_bad_token_unreachable_server_and_no_profile(account, tmp_path: Path) -> None:
    with pytest.raises(AuthFailed):
        await BlobManager.init(tmp_path / "t", server=account.server.url, user="alice",
                               token="wrong-token", passphrase=PASSPHRASE)
    assert not (tmp_path / "t").exists()
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnreachable):
        await BlobManager.init(tmp_path / "u", server=f"http://127.0.0.1:{port}", user="alice",
                               token=account.token, passphrase=PASSPHRASE)
    with pytest.raises(NotInitialized):
        await BlobManager.open(tmp_path / "nowhere", passphrase=PASSPHRASE)
