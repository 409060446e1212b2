"""TLS on the public port, and the test helpers other test directories rely on."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from blobsync.server.app import start_sites
from blobsync.server.config import ServerConfig
from blobsync.server.storage.factory import make_store
from tests.helpers.server_cli import self_signed
from tests.helpers.servers import (
    RunningServer,
    auth_header,
    make_service,
    make_user,
    running_server,
)

from .conftest import sealed


async def test_tls_public_port(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    store = make_store(str(tmp_path), "memory:", "memory:")
    await store.open()
    config = ServerConfig(port=0, local_port=0, tls_cert=cert, tls_key=key)
    sites = await start_sites(store, config)
    try:
        assert sites.url.startswith("https://") and sites.local_url.startswith("http://")
        token = await make_user(store, "alice")
        trust = ssl.create_default_context(cafile=cert)
        async with aiohttp.ClientSession() as s:
            async with s.put(f"{sites.url}/blobs/alice/b1", data=sealed("b1"), ssl=trust,
                             headers=auth_header("alice", token)) as r:
                assert r.status == 200
            async with s.get(f"{sites.url}/blobs/alice", ssl=trust,
                             headers=auth_header("alice", token)) as r:
                assert await r.json() == ["b1"]
            plain = sites.url.replace("https://", "http://")
            try:
                async with s.get(plain + "/") as r:
                    assert r.status >= 400  # plain HTTP is not served on a TLS port
            except aiohttp.ClientError:
                pass
    finally:
        await sites.stop()
        await store.close()


async def test_server_fixture(server: RunningServer) -> None:
    token = await make_user(server.store, "carol")
    service = await make_service(server.store)
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{server.local_url}/incoming/carol/m1", data=b"hello",
                         headers=auth_header("incoming", service)) as r:
            assert r.status == 200
        async with s.get(f"{server.url}/blobs/carol?namespace=MX",
                         headers=auth_header("carol", token)) as r:
            assert await r.json() == ["m1"]


async def test_running_server_limits_and_stop(tmp_path: Path) -> None:
    async with running_server(tmp_path, quota=2000, max_blob_size=1500) as srv:
        token = await make_user(srv.store, "dave")
        async with aiohttp.ClientSession() as s:
            url = f"{srv.url}/blobs/dave"
            async with s.put(url + "/big", data=sealed("big", 1000),
                             headers=auth_header("dave", token)) as r:
                assert r.status == 413
            async with s.put(url + "/a", data=sealed("a", 700),
                             headers=auth_header("dave", token)) as r:
                assert r.status == 200
            async with s.put(url + "/b", data=sealed("b", 700),
                             headers=auth_header("dave", token)) as r:
                assert r.status == 507
        url = srv.url
    async with aiohttp.ClientSession() as s:
        try:
            async with s.get(url + "/") as r:
                raise AssertionError(f"still serving: {r.status}")
        except aiohttp.ClientConnectionError:
            pass
    assert (tmp_path / "srv" / "index.sqlite3").exists()  # the default store: SQLite + files
