"""Start the real blobsync server (public and local apps) on loopback for tests.

Other test packages use it too::

    async with running_server(tmp_path) as srv:
        token = await make_user(srv.store, "alice")
        ... HTTP to srv.url and srv.local_url ...
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blobsync.server.app import start_sites
from blobsync.server.auth import hash_token, new_token
from blobsync.server.config import ServerConfig
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.factory import make_store


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT of the public API
    local_url: str  # http://127.0.0.1:PORT of the incoming endpoint
    store: BlobStore
    stop: Callable[[], Awaitable[None]]  # stops both sites, then closes the store
    config: ServerConfig


async def start_server(
    tmp_path: Path,
    *,
    quota: int = 0,
    max_blob_size: int | None = None,
    store: BlobStore | None = None,
    max_stream_size: int = 0,
    settings: dict[str, Any] | None = None,
) -> RunningServer:
    """Both apps on 127.0.0.1, ports chosen by the OS.

    Without ``store``: SQLite and files under ``tmp_path/srv``. A given store must not be
    opened yet (this opens it, and ``stop`` closes it); ``quota`` and ``max_blob_size``
    override its own when they are not the defaults. ``settings``: other ServerConfig
    fields (``feed_heartbeat``, ...).
    """
    if store is None:
        store = make_store(str(tmp_path / "srv"), None, None, quota=quota,
                           max_blob_size=max_blob_size)
    else:
        if quota:
            store.quota = quota
        if max_blob_size is not None:
            store.max_blob_size = max_blob_size
    config = ServerConfig(
        data=str(tmp_path / "srv"),
        port=0,
        local_port=0,
        quota=store.quota,
        max_blob_size=store.max_blob_size or 0,
        max_stream_size=max_stream_size,
        **(settings or {}),
    )
    return await serve(store, config)


async def serve(store: BlobStore, config: ServerConfig) -> RunningServer:
    """Open ``store`` and serve both apps on it as ``config`` says; closed by ``stop``."""
    await store.open()
    try:
        sites = await start_sites(store, config)
    except BaseException:
        await store.close()
        raise

    async def stop() -> None:
        try:
            await sites.stop()
        finally:
            await store.close()

    return RunningServer(sites.url, sites.local_url, store, stop, config)


@asynccontextmanager
async def running_server(tmp_path: Path, **kwargs: object) -> AsyncIterator[RunningServer]:
    server = await start_server(tmp_path, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.stop()


async def make_user(store: BlobStore, uuid: str) -> str:
    """Create a user in the store's index; return its token."""
    token = new_token()
    await store.index.add_user(uuid, hash_token(token))
    return token


async def make_service(store: BlobStore, name: str = "incoming") -> str:
    """Add (or re-key) a local service; return its token."""
    token = new_token()
    await store.index.add_service(name, hash_token(token))
    return token


def auth_header(name: str, token: str) -> dict[str, str]:
    """``Authorization: Token base64(name:token)`` as a headers dict."""
    value = base64.b64encode(f"{name}:{token}".encode()).decode()
    return {"Authorization": f"Token {value}"}
