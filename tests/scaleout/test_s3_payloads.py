"""S3Payloads against a real S3 server (rclone serve s3 over a temporary directory)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.config import Config

from blobsync.format.limits import CHUNK_SIZE
from blobsync.server.storage.base import BlobNotFound
from blobsync.server.storage.s3 import (
    S3_MIN_PART_SIZE,
    PayloadUnavailable,
    S3Payloads,
    new_session,
    normalize_prefix,
)
from tests.harness.s3 import RcloneS3Server, S3Endpoint

KiB = 1 << 10
MiB = 1 << 20
LOCATION = re.compile(r"pre/fix/alice/default/b/blo/blob-1/blob-1/[0-9a-f]{32}")


def make_store(endpoint: S3Endpoint, bucket: str, **kwargs: object) -> S3Payloads:
    return S3Payloads(
        bucket,
        str(kwargs.pop("prefix", "pre/fix")),
        endpoint_url=endpoint.url,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(s3_endpoint: S3Endpoint, s3_bucket: str) -> AsyncIterator[S3Payloads]:
    s = make_store(s3_endpoint, s3_bucket, part_size=256 * KiB)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset, so a misplaced range or part shows."""
    block = hashlib.sha256(str(seed).encode()).digest() * (4096 // 32)
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(block + n.to_bytes(8, "big")).digest() * 64
        n += 1
    return bytes(out[:size])


async def write(
    store: S3Payloads, data: bytes, chunk: int = 10_000, blob_id: str = "blob-1"
) -> str:
    w = await store.writer("alice", "default", blob_id)
    for start in range(0, len(data), chunk):
        await w.write(data[start : start + chunk])
    return await w.commit()


async def read_all(
    store: S3Payloads, location: str, offset: int = 0, length: int | None = None
) -> bytes:
    return b"".join([c async for c in store.read(location, offset, length)])


async def listed(store: S3Payloads) -> dict[str, float]:
    return {loc: mtime async for loc, mtime in store.locations()}


def files_under(root: Path) -> list[str]:
    """Every file rclone keeps, hidden temporaries included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_small_blob_is_one_put(store: S3Payloads) -> None:
    data = pattern(100 * KiB)
    before = time.time()
    location = await write(store, data)
    assert LOCATION.fullmatch(location), location
    assert await read_all(store, location) == data
    found = await listed(store)
    assert list(found) == [location]
    assert before - 2 <= found[location] <= time.time() + 2


@pytest.mark.parametrize("size", [256 * KiB, 3 * 256 * KiB, 1 * MiB + 12_345])
async def test_multipart_blob(store: S3Payloads, size: int) -> None:
    data = pattern(size, seed=size)
    w = await store.writer("alice", "default", "blob-1")
    for start in range(0, size, 77_777):  # chunks that never line up with parts
        await w.write(data[start : start + 77_777])
        # Only one part's worth is ever buffered.
        assert len(w._buf) < store.part_size  # type: ignore[attr-defined]
    location = await w.commit()
    parts = len(w._parts)  # type: ignore[attr-defined]
    # Parts fill to at least part_size (the last may be short), so their number is bounded.
    assert size // (store.part_size + 77_777) <= parts <= -(-size // store.part_size)
    assert await read_all(store, location) == data


async def test_multipart_with_s3_minimum_part_size(s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    store = make_store(s3_endpoint, s3_bucket, part_size=S3_MIN_PART_SIZE)
    await store.open()
    try:
        data = pattern(2 * S3_MIN_PART_SIZE + 1000, seed=7)
        location = await write(store, data, chunk=CHUNK_SIZE)
        got = hashlib.sha256()
        async for chunk in store.read(location):
            assert len(chunk) <= CHUNK_SIZE
            got.update(chunk)
        assert got.digest() == hashlib.sha256(data).digest()
    finally:
        await store.close()


async def test_ranged_reads(store: S3Payloads) -> None:
    data = pattern(300 * KiB + 7, seed=3)
    location = await write(store, data)
    for offset, length in [
        (0, 1),
        (1, None),
        (CHUNK_SIZE - 1, 2),
        (100_000, CHUNK_SIZE * 2 + 5),
        (len(data) - 1, None),
        (len(data) - 10, 100),  # past the end: what there is
        (5, 0),
    ]:
        expected = data[offset:] if length is None else data[offset : offset + length]
        assert await read_all(store, location, offset, length) == expected, (offset, length)
    assert await read_all(store, location, len(data)) == b""
    assert await read_all(store, location, len(data) + 10, 5) == b""


async def test_missing_payload_is_not_found(store: S3Payloads) -> None:
    missing = "pre/fix/alice/default/b/blo/blob-1/blob-1/" + "0" * 32
    for offset, length in [(0, None), (3, 4), (0, 0)]:
        with pytest.raises(BlobNotFound):
            await read_all(store, missing, offset, length)


async def test_delete(store: S3Payloads) -> None:
    location = await write(store, b"x" * 1000)
    keep = await write(store, b"y" * 1000, blob_id="blob-2")
    await store.delete(location)
    await store.delete(location)  # already gone: no error
    with pytest.raises(BlobNotFound):
        await read_all(store, location)
    assert list(await listed(store)) == [keep]


async def test_each_write_gets_its_own_location(store: S3Payloads) -> None:
    first, second = await asyncio.gather(write(store, b"a" * 500), write(store, b"b" * 700))
    assert first != second
    assert await read_all(store, first) == b"a" * 500
    assert await read_all(store, second) == b"b" * 700
    assert set(await listed(store)) == {first, second}


async def _uploads_in_progress(endpoint: S3Endpoint, bucket: str) -> list[str]:
    async with new_session().create_client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    ) as client:
        try:
            answer = await client.list_multipart_uploads(Bucket=bucket)
        except client.exceptions.NoSuchUpload:
            return []  # rclone's answer when this key has never had an upload in progress
        return [u["Key"] for u in answer.get("Uploads", [])]


@pytest.mark.parametrize("size", [0, 1000, 700 * KiB])
async def test_abort_leaves_nothing(
    store: S3Payloads,
    s3_server: RcloneS3Server,
    s3_endpoint: S3Endpoint,
    s3_bucket: str,
    size: int,
) -> None:
    w = await store.writer("alice", "default", "blob-1")
    data = pattern(size)
    for start in range(0, size, 50_000):
        await w.write(data[start : start + 50_000])
    if size > store.part_size:
        assert len(await _uploads_in_progress(s3_endpoint, s3_bucket)) == 1
    await w.abort()
    await w.abort()  # twice is fine
    with pytest.raises(RuntimeError):
        await w.write(b"more")
    assert await listed(store) == {}
    assert await _uploads_in_progress(s3_endpoint, s3_bucket) == []
    assert files_under(s3_server.root / s3_bucket) == []


async def test_cancelled_upload_then_abort_leaves_nothing(
    store: S3Payloads, s3_server: RcloneS3Server, s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    w = await store.writer("alice", "default", "blob-1")
    started = asyncio.Event()

    async def feed() -> None:
        for n in range(100):
            await w.write(pattern(100 * KiB, seed=n))
            if n == 5:
                started.set()

    task = asyncio.ensure_future(feed())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.abort()
    assert await listed(store) == {}
    assert await _uploads_in_progress(s3_endpoint, s3_bucket) == []
    assert files_under(s3_server.root / s3_bucket) == []


async def test_abort_after_commit_keeps_the_payload(store: S3Payloads) -> None:
    w = await store.writer("alice", "default", "blob-1")
    await w.write(b"kept")
    location = await w.commit()
    await w.abort()  # the location is the caller's now
    assert await read_all(store, location) == b"kept"


async def test_locations_pages_and_ignores_foreign_keys(
    store: S3Payloads, s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    mine = {await write(store, b"z", blob_id=f"blob-{n}") for n in range(7)}
    # Keys that are not ours, inside and outside the prefix: gc must never see them.
    foreign = make_store(s3_endpoint, s3_bucket, prefix="")
    await foreign.open()
    try:
        for key in [
            "pre/fix/notes.txt",
            "pre/fix/alice/default/b/blo/blob-1/blob-1/zz",
            "pre/fix/alice/default/x/blo/blob-1/blob-1/" + "a" * 32,
            "other/thing",
        ]:
            await foreign.client.put_object(Bucket=s3_bucket, Key=key, Body=b"foreign")
        elsewhere = await write(foreign, b"w", blob_id="blob-9")
        store.list_page_size = 3
        assert set(await listed(store)) == mine
        assert set(await listed(foreign)) == {elsewhere}  # the prefixed keys are not its layout
    finally:
        await foreign.close()


async def test_writer_memory_stays_bounded(s3_endpoint: S3Endpoint, s3_bucket: str) -> None:
    part = 1 * MiB
    store = make_store(s3_endpoint, s3_bucket, part_size=part)
    await store.open()
    try:
        chunk = pattern(CHUNK_SIZE, seed=1)
        total = 40 * MiB
        digest = hashlib.sha256()
        tracemalloc.start()
        try:
            w = await store.writer("alice", "default", "big")
            for _ in range(total // CHUNK_SIZE):
                await w.write(chunk)
                digest.update(chunk)
            location = await w.commit()
            _, peak_write = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            got = hashlib.sha256()
            async for piece in store.read(location):
                got.update(piece)
            _, peak_read = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert got.digest() == digest.digest()
        # A few parts' worth at most, against 40 MiB moved.
        assert peak_write < 4 * part, peak_write
        assert peak_read < 4 * part, peak_read
    finally:
        await store.close()


async def test_open_creates_the_bucket_once(s3_endpoint: S3Endpoint) -> None:
    bucket = f"fresh-{os.urandom(6).hex()}"
    stores = [make_store(s3_endpoint, bucket) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))  # racing creators all succeed
    try:
        location = await write(stores[0], b"hello")
        assert await read_all(stores[3], location) == b"hello"
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_configuration_from_aws_environment(
    s3_endpoint: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in s3_endpoint.env().items():
        monkeypatch.setenv(name, value)
    # No region anywhere: us-east-1 is assumed; no shared files are read.
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    store = S3Payloads(s3_bucket, "/env/")
    await store.open()
    try:
        location = await write(store, b"from env")
        assert location.startswith("env/alice/")
        assert await read_all(store, location) == b"from env"
    finally:
        await store.close()


async def test_unreachable_store_is_503(s3_endpoint: S3Endpoint) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3Payloads(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="a" * 20,
        secret_key="b" * 40,
    )
    with pytest.raises(PayloadUnavailable) as caught:
        await store.open()
    assert caught.value.status_hint == 503


async def test_wrong_secret_is_503_without_the_secret(
    s3_endpoint: S3Endpoint, s3_bucket: str
) -> None:
    store = S3Payloads(
        s3_bucket,
        endpoint_url=s3_endpoint.url,
        access_key=s3_endpoint.access_key,
        secret_key="not-the-secret-at-all-0123456789",
    )
    with pytest.raises(PayloadUnavailable) as caught:
        await store.open()
    assert "not-the-secret" not in str(caught.value)


def test_prefix_normalization() -> None:
    assert normalize_prefix("") == ""
    assert normalize_prefix("/") == ""
    assert normalize_prefix("a") == "a/"
    assert normalize_prefix("/a//b/") == "a/b/"
    with pytest.raises(ValueError):
        normalize_prefix("a/../b")
