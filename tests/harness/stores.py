"""Factories of BlobStores on the real scale-out services, for suites parametrized by backend.

Each store factory takes ``(tmp_path, request)`` like the storage suites' (combined
configurations in ``tests/storage/conftest.py``) and returns an unopened BlobStore on a
fresh PostgreSQL database (dropped at teardown), with a fresh S3 bucket or the data dir's
own payloads, on the harness's session services. ``postgres_index`` and ``s3_payloads`` are
the two layers alone, for the index suite and the payload suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.factory import make_payloads
from blobsync.server.storage.pgpayloads import PostgresPayloads
from blobsync.server.storage.postgres import PostgresIndex
from blobsync.server.storage.s3 import S3Payloads
from blobsync.server.storage.tiered import TieredPayloads

from .pg import create_database, drop_database_later
from .s3 import S3Endpoint, create_bucket

# Small parts, so that blobs in tests go multipart; rclone accepts any part size.
TEST_PART_SIZE = 64 * 1024


async def _fresh_database(request: pytest.FixtureRequest) -> str:
    # Only the session fixtures (sync) can be requested from inside a running event loop;
    # the per-test database is made here instead.
    admin_dsn: str = request.getfixturevalue("postgres_dsn")
    dsn = await create_database(admin_dsn)
    drop_database_later(request, admin_dsn, dsn)
    return dsn


async def postgres_index(request: pytest.FixtureRequest) -> PostgresIndex:
    """An unopened index on a fresh database of the session's PostgreSQL."""
    return PostgresIndex(await _fresh_database(request))


async def s3_payloads(request: pytest.FixtureRequest) -> S3Payloads:
    """Unopened payloads in a fresh bucket of the session's S3 server, in small parts."""
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket = await create_bucket(endpoint)
    return S3Payloads(
        bucket,
        "blobs",
        part_size=TEST_PART_SIZE,
        endpoint_url=endpoint.url,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
    )


async def pg_payloads(request: pytest.FixtureRequest, max_size: int | None = None) -> (
    PostgresPayloads
):
    """Unopened inline payloads on a fresh database of the session's PostgreSQL."""
    dsn = await _fresh_database(request)
    return PostgresPayloads(dsn) if max_size is None else PostgresPayloads(dsn, max_size)


async def pg_s3_tiered_payloads(request: pytest.FixtureRequest) -> TieredPayloads:
    """What the server runs on PostgreSQL + S3: small payloads as rows, large ones on S3."""
    return TieredPayloads(await pg_payloads(request), await s3_payloads(request))


async def postgres_s3_tiered_store(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    """PostgreSQL metadata + S3 payloads as the factory builds them: the payload rows in
    the index's own database."""
    index = await postgres_index(request)
    tiers = TieredPayloads(PostgresPayloads(index.dsn), await s3_payloads(request))
    return BlobStore(index, tiers)


async def postgres_s3_store(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    index = await postgres_index(request)
    return BlobStore(index, await s3_payloads(request))


async def postgres_local_store(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    """PostgreSQL metadata with the payloads in the data dir (``--metadata`` without
    ``--payload``): built by the same factory as the server's."""
    return BlobStore(await postgres_index(request), make_payloads(str(tmp_path), None))
