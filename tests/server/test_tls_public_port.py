"""TLS on the public port: the server answers HTTPS with the configured certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from blobsync.server.app import start_sites
from blobsync.server.config import ServerConfig
from blobsync.server.storage.factory import make_store
from tests.helpers.server_cli import self_signed
from tests.helpers.servers import auth_header, make_user

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
