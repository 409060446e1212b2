"""What client tests share: an account on a real server and its devices, fast retry
settings, the CLI run as a child, sealed blobs copied between devices or damaged on the
server, and incoming messages delivered. The fixtures around them are in
tests/client/conftest.py."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from blobsync.client import BlobManager, ClientSettings, SyncStatus
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.payloads import damage_payload, flip_byte
from tests.helpers.servers import RunningServer, auth_header, make_service

ROOT = Path(__file__).resolve().parents[2]


def fast_settings(**changes: object) -> ClientSettings:
    """Retries in tenths of a second instead of tens of seconds."""
    return ClientSettings(**{"retry_scale": 0.01, **changes})  # type: ignore[arg-type]


@dataclass
class Account:
    server: RunningServer
    user: str
    token: str
    tmp_path: Path

    async def device(self, name: str, **settings: object) -> BlobManager:
        """A new device (home dir) of this user. The first one creates the storage secret,
        the others recover it."""
        home = self.tmp_path / f"home-{name}"
        recover = any(p.name.startswith("home-") for p in self.tmp_path.iterdir())
        return await BlobManager.init(
            home, server=self.server.url, user=self.user, token=self.token,
            passphrase=PASSPHRASE, recover=recover, settings=fast_settings(**settings),
        )


async def corrupt_on_server(server, blob_id: str, namespace: str = "default") -> None:
    """Flip one ciphertext byte of the stored payload (the tag stays as indexed)."""
    info = await server.store.index.get_blob("alice", namespace, blob_id)
    damage_payload(server.config.data, info.location, flip_byte(info.size // 2 + 400))


async def copy_sealed(src: BlobManager, dst: BlobManager, blob_id: str) -> None:
    """Keep in ``dst`` the very sealed blob ``src`` holds, PENDING_UPLOAD: as if ``dst``
    had uploaded it and never heard the answer."""
    row = await src.store.get("default", blob_id)
    assert row is not None and row.sealed_size is not None
    if row.inline:
        await dst.store.insert(
            "default", blob_id, SyncStatus.PENDING_UPLOAD, size=row.size,
            sealed_size=row.sealed_size, payload=await src.store.read_inline(row.id),
        )
        return
    assert row.location is not None
    tmp = dst.store.temp_path()
    tmp.write_bytes(src.store.blob_path(row.location).read_bytes())
    location = await dst.store.keep_file("default", blob_id, tmp)
    await dst.store.insert(
        "default", blob_id, SyncStatus.PENDING_UPLOAD, size=row.size,
        sealed_size=row.sealed_size, location=location,
    )


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBSYNC_")}
    env.update(BLOBSYNC_PASSPHRASE=PASSPHRASE, BLOBSYNC_RETRY_SCALE="0.01",
               PYTHONPATH=str(ROOT))
    return env


async def cli(home: Path, *args: str) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blobsync", "--home", str(home), *args, env=cli_env(),
        cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


def one_line_error(rc: int, err: str, code: int) -> str:
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blobsync: error: "), err
    return lines[0]


async def home_with(account: Account, name: str) -> BlobManager:
    return await BlobManager.init(
        account.tmp_path / f"home-{name}", server=account.server.url, user=account.user,
        token=account.token, passphrase=PASSPHRASE, settings=fast_settings(),
        recover=any(p.name.startswith("home-") for p in account.tmp_path.iterdir()),
    )


class Recorder:
    """A consumer that keeps what it saw; fails on payloads that say so."""

    def __init__(self) -> None:
        self.processed: list[tuple[str, bytes]] = []
        self.saved: dict[str, object] = {}

    async def process(self, blob_id: str, payload: bytes) -> object:
        if payload.startswith(b"poison"):
            raise ValueError("cannot parse")
        self.processed.append((blob_id, payload))
        return payload.upper()

    async def save(self, blob_id: str, result: object) -> None:
        self.saved[blob_id] = result


async def deliver(server, user: str, messages: dict[str, bytes]) -> None:
    token = await make_service(server.store, "incoming")
    async with aiohttp.ClientSession(headers=auth_header("incoming", token)) as s:
        for blob_id, body in messages.items():
            async with s.put(f"{server.local_url}/incoming/{user}/{blob_id}", data=body) as r:
                assert r.status == 200, await r.text()


async def device(account: Account, name: str, url: str, **settings: object) -> BlobManager:
    """A device of alice whose server is ``url``; the first one creates the secret."""
    recover = any(p.name.startswith("home-") for p in account.tmp_path.iterdir())
    return await BlobManager.init(
        account.tmp_path / f"home-{name}", server=url, user=account.user,
        token=account.token, passphrase=PASSPHRASE, recover=recover,
        settings=fast_settings(**settings),
    )
