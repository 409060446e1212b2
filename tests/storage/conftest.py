"""The one suite every storage backend passes, in the manner of restic's backend tests.

A backend joins the suite with one entry in BACKENDS: a name and an async factory that
takes pytest's tmp_path (and the fixture request, for backends that need a harness fixture:
``request.getfixturevalue("postgres_db")``) and returns an unopened BlobStore.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from blobsync.format import seal
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.files import FilePayloads
from blobsync.server.storage.memory import MemoryIndex, MemoryPayloads
from blobsync.server.storage.sqlite import SQLiteIndex
from blobsync.server.storage.sqlitepayloads import SQLitePayloads
from blobsync.server.storage.tiered import TieredPayloads
from tests.harness.stores import postgres_local_store, postgres_s3_store

StoreFactory = Callable[[Path, pytest.FixtureRequest], Awaitable[BlobStore]]


async def memory_store(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    return BlobStore(MemoryIndex(), MemoryPayloads())


async def sqlite_files_store(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    return BlobStore(SQLiteIndex(tmp_path / "index.sqlite3"), FilePayloads(tmp_path / "blobs"))


async def sqlite_tiered_store(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    payloads = TieredPayloads(
        SQLitePayloads(tmp_path / "payloads.sqlite3"), FilePayloads(tmp_path / "blobs")
    )
    return BlobStore(SQLiteIndex(tmp_path / "index.sqlite3"), payloads)


BACKENDS: dict[str, StoreFactory] = {
    "memory": memory_store,
    "sqlite-files": sqlite_files_store,
    "sqlite-tiered": sqlite_tiered_store,
    "postgres-s3": postgres_s3_store,
    "postgres-local": postgres_local_store,
}


@pytest.fixture(params=list(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    s = await BACKENDS[request.param](tmp_path, request)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def secret() -> bytes:
    return os.urandom(128)


@pytest.fixture
def sealed(secret: bytes) -> Callable[..., bytes]:
    """sealed(blob_id, size=100): a real sealed blob of random plaintext."""

    def make(blob_id: str, size: int = 100) -> bytes:
        return seal(secret, blob_id, os.urandom(size))

    return make
