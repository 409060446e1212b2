"""Servers for the HTTP tests, one per storage backend.

A backend joins every API test with one entry in BACKENDS: a name and an async factory that
takes pytest's tmp_path and the fixture request (to reach fixtures such as ``postgres_db``
or ``s3_bucket``) and returns an unopened BlobStore.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from blobsync.format import seal
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.factory import make_store
from tests.harness.stores import postgres_s3_store
from tests.helpers.fixtures import server  # noqa: F401 - offered to this directory's tests
from tests.helpers.servers import RunningServer, auth_header, make_user, start_server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "memory: measures the peak memory of a server process (a 1 GiB transfer)"
    )


StoreFactory = Callable[[Path, pytest.FixtureRequest], Awaitable[BlobStore]]


async def memory_store(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    return make_store(str(tmp_path / "srv"), "memory:", "memory:")


async def sqlite_files_store(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    return make_store(str(tmp_path / "srv"), None, None)


BACKENDS: dict[str, StoreFactory] = {
    "sqlite-files": sqlite_files_store,
    "memory": memory_store,
    "postgres-s3": postgres_s3_store,
}

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors-format-v1.json").read_text()
)
SECRET = os.urandom(128)


def sealed(blob_id: str, size: int = 100) -> bytes:
    """A real sealed blob of random plaintext."""
    return seal(SECRET, blob_id, os.urandom(size))


@dataclass
class Api:
    """A running server, a user on it, and an HTTP session that speaks as that user."""

    server: RunningServer
    session: aiohttp.ClientSession
    user: str
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> BlobStore:
        return self.server.store

    @property
    def auth(self) -> dict[str, str]:
        return auth_header(self.user, self.token)

    def blob_url(self, blob_id: str = "") -> str:
        return f"{self.url}/blobs/{self.user}" + (f"/{blob_id}" if blob_id else "")

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return self.session.request(method, url, headers=headers, **kwargs)

    async def put(self, blob_id: str, body: bytes, **params: str) -> int:
        async with self.request("PUT", self.blob_url(blob_id), data=body, params=params) as r:
            await r.read()
            return r.status

    async def json(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.request(method, url, **kwargs) as r:
            assert r.content_type == "application/json", await r.text()
            return r.status, await r.json()


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[MakeApi]:
    """make_api(quota=0, max_blob_size=None, max_stream_size=0): a server on this backend."""
    started: list[Api] = []

    async def make(**limits: Any) -> Api:
        path = tmp_path / f"s{len(started)}"
        path.mkdir()
        store = await BACKENDS[backend](path, request)
        srv = await start_server(path, store=store, **limits)
        session = aiohttp.ClientSession()
        api = Api(srv, session, "alice", await make_user(srv.store, "alice"))
        started.append(api)
        return api

    yield make
    for api in started:
        await api.session.close()
        await api.server.stop()


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api()
