"""Where secrets could leak. The passphrase, the storage secret and every key
derived from it, the token and the plaintext must not reach the server (beyond the token in
the Authorization header), the logs, exception messages, or the disk in clear."""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
from pathlib import Path

import aiohttp
import pytest

from blobsync.client import (
    AuthFailed,
    BlobManager,
    BlobNotFound,
    ClientError,
    SyncStatus,
    WrongPassphrase,
)
from blobsync.client.enroll import Unlocked
from blobsync.client.secrets import names_key, store_key
from blobsync.format import InvalidBlob, seal
from blobsync.format.keys import blob_key
from tests.helpers.client import Account, corrupt_on_server, fast_settings
from tests.helpers.relay import relay_to
from tests.helpers.servers import auth_header


def needles(secret: bytes, passphrase: str, marker: bytes, ids: list[str]) -> dict[str, bytes]:
    """Byte strings that must not show: the secret in every usual spelling, its derived
    keys, the passphrase and the plaintext."""
    out = {
        "passphrase": passphrase.encode(),
        "plaintext": marker,
        "store key hex": store_key(secret).hex().encode()[:32],
        "names key hex": names_key(secret).hex().encode()[:32],
        "store key": store_key(secret)[:12],
    }
    for name, part in (("local half", secret[:64]), ("remote half", secret[64:])):
        out[f"{name} raw"] = part[:12]
        out[f"{name} hex"] = part.hex().encode()[:32]
        out[f"{name} HEX"] = part.hex().upper().encode()[:32]
        out[f"{name} b64"] = base64.b64encode(part)[:20]
        out[f"{name} b64url"] = base64.urlsafe_b64encode(part)[:20]
    for blob_id in ids:
        key = blob_key(secret, blob_id)
        out[f"key of {blob_id}"] = key[:12]
        out[f"key of {blob_id} hex"] = key.hex().encode()[:32]
        out[f"key of {blob_id} b64"] = base64.b64encode(key)[:20]
    return out


async def test_nothing_secret_reaches_the_server_logs_or_errors(
    account: Account, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    passphrase = "PASSPHRASE-MARKER-" + os.urandom(6).hex()
    marker = b"PLAINTEXT-MARKER-" + os.urandom(6).hex().encode()
    errors: list[str] = []
    src = tmp_path / "plain.txt"
    src.write_bytes(marker * 200_000)  # a file blob, put from a path
    async with relay_to(account.server.url, capture=True) as relay:

        async def init(name: str, **kw: object) -> BlobManager:
            defaults: dict[str, object] = dict(
                server=relay.url, user=account.user, token=account.token,
                passphrase=passphrase, settings=fast_settings())
            return await BlobManager.init(tmp_path / name, **(defaults | kw))  # type: ignore[arg-type]

        a = await init("a")
        b = await init("b", recover=True, settings=fast_settings(stream=False))
        try:
            await a.put("small", marker * 10)
            await a.put("inline-edge", marker * 2000)
            await a.put("large", marker * 60_000)
            await a.put("from-file", src)
            await a.put("later", marker * 3, upload=False)
            await a.sync()
            await b.sync()
            assert await b.get("large") == marker * 60_000
            await b.get("from-file", dest=tmp_path / "copy.txt")
            await b.set_flags("small", ["PENDING"])
            await b.delete("inline-edge")
            await a.sync()
            await a.check(remote=True)
            # failures, whose messages a person (and a log) will see
            for failing in (
                init("c", token="not-" + account.token[4:]),
                init("d", recover=True, passphrase=passphrase + "x"),
                BlobManager.open(tmp_path / "a", passphrase=passphrase[:-1]),
                b.get("no-such-blob"),
            ):
                try:
                    await failing
                except (AuthFailed, WrongPassphrase, BlobNotFound, ClientError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc!s} {exc!r}")
                else:
                    pytest.fail("expected a failure")
            assert len(errors) == 4
            secret = a._secret
        finally:
            await a.close()
            await b.close()
    ids = ["small", "inline-edge", "large", "from-file", "later"]
    sent = bytes(relay.upstream_data)
    auth = auth_header(account.user, account.token)["Authorization"].encode()
    assert auth in sent and len(sent) > 7_000_000  # the capture holds the uploads
    sent = re.sub(rb"(?i)authorization: token [A-Za-z0-9+/=]+", b"", sent)
    assert account.token.encode() not in sent
    logs = caplog.text + "\n".join(errors)
    assert "PLAINTEXT-MARKER" in (marker * 2).decode()  # the needles are what we think
    assert account.token not in logs and auth.decode() not in logs
    for name, needle in needles(secret, passphrase, marker, ids).items():
        assert needle not in sent, f"{name} reached the server"
        assert needle.decode("latin-1") not in logs, f"{name} reached the logs or errors"
    # nothing on disk in clear either, anywhere under the homes
    for home in (tmp_path / "a", tmp_path / "b"):
        for path in home.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                for name, needle in needles(secret, passphrase, marker, ids).items():
                    assert needle not in content, f"{name} in {path}"


async def test_reprs_hide_secrets(devices) -> None:
    a = await devices("a")
    secret = a._secret
    for obj in (a, a.engine, a.store, a.transport, a.settings):
        text = repr(obj)
        assert a.profile.token not in text
        assert secret.hex()[:16] not in text and repr(secret[:8])[2:-1] not in text


async def test_unlocked_profile_repr_hides_secrets(devices) -> None:
    """What init and open hand to BlobManager (enroll.py) holds the secret too."""
    a = await devices("a")
    parts = Unlocked(a.profile, a._secret, a.settings, a.store, a.transport)
    text = repr(parts)
    assert a.profile.token not in text
    assert a._secret.hex()[:16] not in text and repr(a._secret[:8])[2:-1] not in text


async def test_profile_repr_hides_the_token(devices) -> None:
    a = await devices("a")
    assert a.profile.token not in repr(a.profile)


async def test_files_on_disk_are_private(devices) -> None:
    old = os.umask(0o022)  # a usual umask: the client must narrow it itself
    try:
        a = await devices("a")
        await a.put("big", os.urandom(200_000))
        await a.put("small", b"tiny")
    finally:
        os.umask(old)
    home = a.profile.home

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(home) == 0o700
    for name in ("config.json", "secret.enc", "local.db"):
        assert mode(home / name) == 0o600, name
    files = [p for p in (home / "blobs").rglob("*") if p.is_file()]
    assert files and all(mode(p) == 0o600 for p in files)
    assert all(mode(p) == 0o700 for p in home.rglob("*") if p.is_dir())
    config = (home / "config.json").read_text()
    assert a._secret.hex()[:16] not in config and "passphrase" not in config.lower()


async def test_database_side_files_are_private_from_the_start(devices) -> None:
    old = os.umask(0o022)
    try:
        a = await devices("a")
        await a.put("small", b"tiny")
    finally:
        os.umask(old)
    home = a.profile.home
    side = [p for p in home.glob("local.db-*")]
    assert side  # WAL mode: they exist while the store is open
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in side} == {
        p.name: 0o600 for p in side}


async def test_failed_verification_leaves_no_plaintext_anywhere(
    devices, account: Account, tmp_path: Path
) -> None:
    a = await devices("a")
    await a.put("big", os.urandom(3 << 20))  # downloaded alone, through tmp/*.part
    await a.put("mid", os.urandom(300_000))
    await corrupt_on_server(account.server, "big")
    await corrupt_on_server(account.server, "mid")
    # a well-formed blob sealed under another secret
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{account.server.url}/blobs/alice/forged",
                            data=seal(os.urandom(128), "forged", b"FORGED" * 50_000),
                            headers=auth_header("alice", account.token)) as resp:
            assert resp.status == 200
    b = await devices("b", stream=False)
    out = tmp_path / "out"
    out.mkdir()
    for blob_id in ("big", "mid", "forged"):
        with pytest.raises(InvalidBlob):
            await b.get(blob_id, dest=out / f"{blob_id}.bin")
        with pytest.raises(InvalidBlob):
            await b.get(blob_id)
        with pytest.raises(InvalidBlob):
            async for _ in b.open_stream(blob_id):
                pytest.fail("no chunk of a blob that does not verify")
        assert await b.status(blob_id) is SyncStatus.FAILED_DOWNLOAD
    assert list(out.iterdir()) == []
    assert list((b.profile.home / "tmp").iterdir()) == []
    assert not [p for p in (b.profile.home / "blobs").rglob("*") if p.is_file()]


async def test_get_to_a_file_with_a_long_valid_name(devices, tmp_path: Path) -> None:
    a = await devices("a")
    await a.put("x", b"data")
    dest = tmp_path / ("n" * 245 + ".txt")
    dest.write_bytes(b"old content")  # the name itself is fine
    await a.get("x", dest=dest)
    assert dest.read_bytes() == b"data"


async def test_server_holds_only_sealed_bytes(devices, account) -> None:
    a = await devices("a")
    marker = b"SERVER-MUST-NOT-SEE-" * 100
    await a.put("s", marker)
    await a.put("l", marker * 1000)
    srv_root = Path(account.server.config.data)  # payloads inline in SQLite and as files
    assert (srv_root / "payloads.sqlite3").is_file()
    for p in srv_root.rglob("*"):
        if p.is_file():
            assert b"SERVER-MUST-NOT-SEE" not in p.read_bytes()
