"""The storage suites' tables of implementations, one per layer (see tests/storage/conftest.py
for the fixtures that run them).

An implementation joins with one entry in the table of its layer: a name and an async
factory that takes pytest's tmp_path and the fixture request (for the harness's session
services: ``request.getfixturevalue("postgres_dsn")``) and returns it unopened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from blobsync.server.storage.base import MetadataIndex, PayloadStore
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.files import FilePayloads
from blobsync.server.storage.memory import MemoryIndex, MemoryPayloads
from blobsync.server.storage.sqlite import SQLiteIndex
from blobsync.server.storage.sqlitepayloads import SQLitePayloads
from blobsync.server.storage.tiered import TieredPayloads
from tests.harness.stores import (
    pg_payloads,
    pg_s3_tiered_payloads,
    postgres_index,
    postgres_local_store,
    postgres_s3_store,
    postgres_s3_tiered_store,
    s3_payloads,
)

StoreFactory = Callable[[Path, pytest.FixtureRequest], Awaitable[BlobStore]]
IndexFactory = Callable[[Path, pytest.FixtureRequest], Awaitable[MetadataIndex]]
PayloadFactory = Callable[[Path, pytest.FixtureRequest], Awaitable[PayloadStore]]

# SQLite payloads alone take any size the suite stores (its largest blob is a little over
# 2 MiB); in the server they are the tiered store's inline tier, capped at INLINE_MAX.
SQLITE_PAYLOADS_MAX = 8 << 20


# the index suite ----------------------------------------------------------------------
async def memory_index(tmp_path: Path, request: pytest.FixtureRequest) -> MetadataIndex:
    return MemoryIndex()


async def sqlite_index(tmp_path: Path, request: pytest.FixtureRequest) -> MetadataIndex:
    return SQLiteIndex(tmp_path / "index.sqlite3")


async def pg_index(tmp_path: Path, request: pytest.FixtureRequest) -> MetadataIndex:
    return await postgres_index(request)


INDEXES: dict[str, IndexFactory] = {
    "memory": memory_index,
    "sqlite": sqlite_index,
    "postgres": pg_index,
}


# the payload suite --------------------------------------------------------------------
async def memory_payloads(tmp_path: Path, request: pytest.FixtureRequest) -> PayloadStore:
    return MemoryPayloads()


async def file_payloads(tmp_path: Path, request: pytest.FixtureRequest) -> PayloadStore:
    return FilePayloads(tmp_path / "blobs")


async def sqlite_payloads(tmp_path: Path, request: pytest.FixtureRequest) -> PayloadStore:
    return SQLitePayloads(tmp_path / "payloads.sqlite3", max_size=SQLITE_PAYLOADS_MAX)


async def tiered_payloads(tmp_path: Path, request: pytest.FixtureRequest) -> PayloadStore:
    return TieredPayloads(
        SQLitePayloads(tmp_path / "payloads.sqlite3"), FilePayloads(tmp_path / "blobs")
    )


async def s3(tmp_path: Path, request: pytest.FixtureRequest) -> PayloadStore:
    return await s3_payloads(request)


async def postgres_payloads(tmp_path: Path, request: pytest.FixtureRequest) -> PayloadStore:
    # Alone, as SQLite payloads alone: any size the suite stores.
    return await pg_payloads(request, max_size=SQLITE_PAYLOADS_MAX)


async def pg_s3_tiered(tmp_path: Path, request: pytest.FixtureRequest) -> PayloadStore:
    return await pg_s3_tiered_payloads(request)


PAYLOADS: dict[str, PayloadFactory] = {
    "memory": memory_payloads,
    "files": file_payloads,
    "sqlite": sqlite_payloads,
    "tiered": tiered_payloads,
    "s3": s3,
    "postgres": postgres_payloads,
    "pg-s3-tiered": pg_s3_tiered,
}


# the combined suite -------------------------------------------------------------------
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
    "postgres-s3-tiered": postgres_s3_tiered_store,
    "postgres-local": postgres_local_store,
}
