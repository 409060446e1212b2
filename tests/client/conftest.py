"""Fixtures for client tests: a real server on loopback, a user, and devices (homes).
The parts they are made of (Account, fast_settings) are in tests/helpers/client.py.

Nothing is mocked: every device talks HTTP to the server started here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from blobsync.client import BlobManager
from tests.helpers.client import Account
from tests.helpers.servers import RunningServer, make_user, running_server


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
