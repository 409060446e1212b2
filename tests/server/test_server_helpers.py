"""The server helpers other test directories rely on (tests/helpers/servers.py and
fixtures.py): a usable server, its limits, and a clean stop."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.helpers.servers import (
    RunningServer,
    auth_header,
    make_service,
    make_user,
    running_server,
)

from .conftest import sealed


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
