"""A real server on a port chosen by the test, so that it can be stopped and started again
where its clients look for it (a restart, or another server in its place)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from blobsync.server.config import ServerConfig
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.factory import make_store
from tests.helpers.client import Account
from tests.helpers.net import free_port
from tests.helpers.servers import RunningServer, make_user, serve


async def start_on(data: Path, port: int, store: BlobStore | None = None) -> RunningServer:
    """Both apps on 127.0.0.1, the public one on ``port``; SQLite and files under ``data``
    unless ``store`` (not opened yet) is given."""
    store = store if store is not None else make_store(str(data), None, None)
    return await serve(store, ServerConfig(data=str(data), port=port, local_port=0))


@asynccontextmanager
async def serving_on(
    data: Path, port: int, store: BlobStore | None = None
) -> AsyncIterator[RunningServer]:
    server = await start_on(data, port, store)
    try:
        yield server
    finally:
        await server.stop()


class Restartable:
    """A server that a test stops and starts again on the same port and data directory,
    where its clients keep looking for it."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.server: RunningServer | None = None

    async def start(self) -> RunningServer:
        self.server = await start_on(self.data, self.port)
        return self.server

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()


async def alice_on_restartable(tmp_path: Path) -> tuple[Restartable, Account]:
    """A restartable server (started) under ``tmp_path`` and its user alice."""
    srv = Restartable(tmp_path / "srv")
    running = await srv.start()
    token = await make_user(running.store, "alice")
    return srv, Account(running, "alice", token, tmp_path)
