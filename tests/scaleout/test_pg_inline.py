"""Issue 13, scale-out: on PostgreSQL + S3, small payloads are rows of the metadata database
(``pgpayloads.PostgresPayloads``), large ones S3 objects (``TieredPayloads``).

The S3 side is counted in the bucket itself (the objects under ``rclone serve s3``'s
directory), the PostgreSQL side in the ``payloads`` table; the shared suites run the tier
too (PAYLOADS "postgres" and "pg-s3-tiered", BACKENDS "postgres-s3-tiered").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from blobsync.format import seal
from blobsync.server.config import ConfigError, describe, load_config
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.factory import make_store
from blobsync.server.storage.pgpayloads import INLINE_MAX, PostgresPayloads
from blobsync.server.storage.postgres import MIGRATIONS, PostgresIndex, migrate, schema_version
from blobsync.server.storage.s3 import S3Payloads
from blobsync.server.storage.tiered import TieredPayloads
from tests.harness.s3 import RcloneS3Server
from tests.helpers import subproc
from tests.helpers.storage import NS, U, chunked, put, read_all

SECRET = os.urandom(128)
CRASH_WRITER = Path(__file__).with_name("pg_inline_crash_writer.py")


def s3_objects(s3_server: RcloneS3Server, bucket: str) -> int:
    """Objects in the bucket, counted where rclone keeps them."""
    return sum(len(files) for _, _, files in os.walk(s3_server.root / bucket))


async def inline_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM payloads"))
    finally:
        await conn.close()


@pytest.fixture
def pg_s3(postgres_db: str, s3_server: RcloneS3Server, s3_bucket: str,
          monkeypatch: pytest.MonkeyPatch) -> Callable[..., BlobStore]:
    """make_store for PostgreSQL + S3 as the server calls it (endpoint from AWS_*)."""
    for key, value in s3_server.endpoint.env().items():
        monkeypatch.setenv(key, value)

    def make(**kw: int | None) -> BlobStore:
        return make_store("/nonexistent", postgres_db, f"s3://{s3_bucket}/blobs", **kw)

    return make


@pytest.fixture
async def store(pg_s3: Callable[..., BlobStore]) -> AsyncIterator[BlobStore]:
    s = pg_s3()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def test_factory_tiers_postgres_and_s3(pg_s3: Callable[..., BlobStore]) -> None:
    payloads = pg_s3().payloads
    assert isinstance(payloads, TieredPayloads)
    assert isinstance(payloads.inline, PostgresPayloads)
    assert isinstance(payloads.large, S3Payloads)
    assert payloads.inline.max_size == INLINE_MAX
    # S3 under another index stays as it was: one object per payload.
    assert isinstance(make_store("/x", "memory:", "s3://b/p").payloads, S3Payloads)


async def test_small_blobs_never_touch_s3(
    store: BlobStore, postgres_db: str, s3_server: RcloneS3Server, s3_bucket: str
) -> None:
    alone = seal(SECRET, "alone", os.urandom(10_000))
    await put(store, "alone", alone)
    batch = store.batch(U, NS)
    blobs = {f"s{n}": seal(SECRET, f"s{n}", os.urandom(10_000)) for n in range(50)}
    for blob_id, data in blobs.items():
        await batch.receive(blob_id, chunked(data, 1000), len(data))
    assert all(not isinstance(o, Exception) for _, o in await batch.flush())

    assert s3_objects(s3_server, s3_bucket) == 0
    assert await inline_rows(postgres_db) == 51
    assert await read_all(store, "alone") == alone
    infos = await store.index.get_blobs(U, NS, list(blobs))
    assert await store.read_run(infos) == list(blobs.values())


async def test_a_large_blob_still_goes_to_s3(
    store: BlobStore, postgres_db: str, s3_server: RcloneS3Server, s3_bucket: str
) -> None:
    big = seal(SECRET, "big", os.urandom(INLINE_MAX + 1000))
    info = await put(store, "big", big)
    assert not info.location.startswith("pg:")
    assert s3_objects(s3_server, s3_bucket) == 1
    assert await inline_rows(postgres_db) == 0
    assert await read_all(store, "big") == big
    assert await read_all(store, "big", offset=INLINE_MAX, length=10) == big[
        INLINE_MAX : INLINE_MAX + 10]


async def test_inline_limit_setting(
    pg_s3: Callable[..., BlobStore], postgres_db: str, s3_server: RcloneS3Server,
    s3_bucket: str,
) -> None:
    small = seal(SECRET, "small", os.urandom(2000))
    medium = seal(SECRET, "medium", os.urandom(6000))
    limited = pg_s3(inline_max=4096)
    await limited.open()
    try:
        assert (await put(limited, "small", small)).location.startswith("pg:")
        assert not (await put(limited, "medium", medium)).location.startswith("pg:")
    finally:
        await limited.close()
    assert (s3_objects(s3_server, s3_bucket), await inline_rows(postgres_db)) == (1, 1)

    off = pg_s3(inline_max=0)  # none inline any more; what is inline already still reads
    await off.open()
    try:
        tiny = seal(SECRET, "tiny", os.urandom(10))
        assert not (await put(off, "tiny", tiny)).location.startswith("pg:")
        assert await read_all(off, "small") == small
    finally:
        await off.close()
    assert (s3_objects(s3_server, s3_bucket), await inline_rows(postgres_db)) == (2, 1)


async def test_gc_takes_orphans_of_both_tiers(
    store: BlobStore, postgres_db: str, s3_server: RcloneS3Server, s3_bucket: str
) -> None:
    small = seal(SECRET, "small", os.urandom(3000))
    big = seal(SECRET, "big", os.urandom(INLINE_MAX + 1))
    await put(store, "small", small)
    await put(store, "big", big)
    # Payloads no row names: a small and a large one.
    [orphan] = await store.payloads.store_many(U, NS, [("o1", os.urandom(3000))])
    writer = await store.payloads.writer(U, NS, "o2")
    await writer.write(os.urandom(INLINE_MAX + 1))
    await writer.commit()
    assert (s3_objects(s3_server, s3_bucket), await inline_rows(postgres_db)) == (2, 2)

    assert (await store.sweep(3600)).removed == 0  # young: spared by the grace
    assert await store.gc(grace_seconds=0) == 2
    assert (s3_objects(s3_server, s3_bucket), await inline_rows(postgres_db)) == (1, 1)
    assert orphan not in {loc async for loc, _ in store.payloads.locations()}
    assert await read_all(store, "small") == small
    assert await read_all(store, "big") == big

    # Deletes reach both tiers.
    await store.delete(U, NS, "small")
    await store.delete(U, NS, "big")
    assert (s3_objects(s3_server, s3_bucket), await inline_rows(postgres_db)) == (0, 0)


async def test_crash_between_payload_and_index_leaves_orphans_gc_removes(
    postgres_db: str, s3_server: RcloneS3Server, s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = subproc.cli_env(**s3_server.endpoint.env())
    url = f"s3://{s3_bucket}/blobs"
    child = subprocess.Popen([sys.executable, str(CRASH_WRITER), postgres_db, url],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "KEPT"
        assert child.stdout.readline().strip() == "COMMITTED"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (s3_objects(s3_server, s3_bucket), await inline_rows(postgres_db)) == (1, 2)

    # The operator's gc, through the CLI, on both tiers.
    run = subproc.blobsync("admin", "gc", "--metadata", postgres_db, "--payload", url,
                           "--grace", "0", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "2"
    assert (s3_objects(s3_server, s3_bucket), await inline_rows(postgres_db)) == (0, 1)
    for key, value in s3_server.endpoint.env().items():
        monkeypatch.setenv(key, value)  # the store reads them at open
    store = make_store("/nonexistent", postgres_db, url)
    await store.open()
    try:
        assert await store.index.list_blobs(U, NS) == ["kept"]
        assert len(await read_all(store, "kept")) > 5000
    finally:
        await store.close()


async def test_migration_3_from_a_version_2_database(postgres_db: str) -> None:
    conn = await asyncpg.connect(postgres_db)
    try:
        assert await migrate(conn, MIGRATIONS[:2]) == 2
        await conn.execute("INSERT INTO users VALUES ('alice', 'hash')")
        assert await conn.fetchval("SELECT to_regclass('payloads') IS NULL")
    finally:
        await conn.close()

    payloads = PostgresPayloads(postgres_db)  # either side migrates, whichever opens first
    await payloads.open()
    try:
        [location] = await payloads.store_many(U, NS, [("b", b"sealed bytes")])
        assert await payloads.read_many([location]) == [b"sealed bytes"]
    finally:
        await payloads.close()
    index = PostgresIndex(postgres_db)
    await index.open()
    try:
        assert (await index.get_user("alice")) is not None
    finally:
        await index.close()
    conn = await asyncpg.connect(postgres_db)
    try:
        assert await schema_version(conn) == len(MIGRATIONS) >= 3  # 4: SPEC 11 metas
        # Ciphertext: kept out of line, never compressed.
        assert await conn.fetchval(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'payloads'::regclass"
            " AND attname = 'data'") == b"e"
    finally:
        await conn.close()


def test_inline_max_setting_is_checked_and_shown() -> None:
    env = {"BLOBSYNC_METADATA": "postgresql://db/x", "BLOBSYNC_PAYLOAD": "s3://b/p"}
    assert load_config({}, env).inline_max == INLINE_MAX
    assert load_config({"inline_max": "4K"}, env).inline_max == 4096
    line = describe(load_config({"inline_max": "4K"}, env))
    assert "payload s3://b/p; inline up to 4K in PostgreSQL; quota" in line
    assert "; inline none; " in describe(load_config({"inline_max": "0"}, env))
    assert "inline" not in describe(load_config({}, {}))
    with pytest.raises(ConfigError, match="inline_max: at most 256K"):
        load_config({"inline_max": "257K"}, env)
    run = subproc.blobsync("server", "--help")
    assert "--inline-max" in run.stdout
