"""Fixtures for client tests: a real server on loopback, a user, and devices (homes).

Nothing is mocked: every device talks HTTP to the server started here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from blobsync.client import BlobManager, ClientSettings
from tests.helpers.servers import RunningServer, make_user, running_server

PASSPHRASE = "correct horse battery staple"


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


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path) as srv:
        yield srv


@pytest.fixture
async def account(server: RunningServer, tmp_path: Path) -> Account:
    token = await make_user(server.store, "alice")
    return Account(server, "alice", token, tmp_path)


@pytest.fixture
async def devices(account: Account) -> AsyncIterator[Callable[..., Awaitable[BlobManager]]]:
    """Factory of devices, all closed at the end of the test."""
    opened: list[BlobManager] = []

    async def make(name: str, **settings: object) -> BlobManager:
        m = await account.device(name, **settings)
        opened.append(m)
        return m

    yield make
    for m in opened:
        await m.close()
