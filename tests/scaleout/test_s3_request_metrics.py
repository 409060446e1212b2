"""``blobsync_s3_requests_total``: a real ``blobsync server`` on PostgreSQL and ``rclone serve
s3`` counts every request it sends to the object store, by operation, on its /metrics."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from blobsync.format import seal
from tests.harness.s3 import S3Endpoint
from tests.helpers.metrics import Samples, parse, value
from tests.helpers.processes import add_user, pg_s3_args, start
from tests.helpers.servers import auth_header
from tests.helpers.subproc import ServerProcess, cli_env

SECRET = os.urandom(128)
S3 = "blobsync_s3_requests_total"
MiB = 1 << 20


async def scrape(session: aiohttp.ClientSession, srv: ServerProcess) -> Samples:
    async with session.get(f"{srv.local_url}/metrics") as r:
        assert r.status == 200
        return parse(await r.text())


def moved(before: Samples, after: Samples) -> dict[str, float]:
    """The operations whose count changed, and by how much."""
    ops = {dict(labels)["op"] for name, labels in (*before, *after) if name == S3}
    out = {op: value(after, S3, op=op) - value(before, S3, op=op) for op in ops}
    return {op: n for op, n in out.items() if n}


@pytest.mark.parametrize("workers", [1, 2])
async def test_s3_requests_counted_by_operation(
    postgres_db: str, s3_endpoint: S3Endpoint, s3_bucket: str, tmp_path: Path,
    session: aiohttp.ClientSession, stop_later: list[ServerProcess], workers: int,
) -> None:
    token = await add_user(postgres_db, tmp_path, "alice")
    auth = auth_header("alice", token)
    # No periodic sweep: its listing would land between two readings at any time.
    args = (*pg_s3_args(postgres_db, s3_bucket, tmp_path, "metrics"), "--sweep-interval", "0")
    if workers > 1:
        args = (*args, "--workers", str(workers))
    srv = await start(stop_later, *args, env=cli_env(**s3_endpoint.env()))
    if workers > 1:
        srv.wait_for_log(f"all {workers} workers ready", timeout=30)
    start_up = await scrape(session, srv)
    # The bucket check at start: counted although it came before the metrics existed.
    assert value(start_up, S3, op="HeadBucket") >= 1

    # Well above any inline threshold and below the 8 MiB part size: one PutObject, and
    # the HeadObject that checks what the store kept.
    one = seal(SECRET, "one", os.urandom(MiB))
    async with session.put(f"{srv.url}/blobs/alice/one", data=one, headers=auth) as r:
        assert r.status == 200, await r.text()
    after_put = await scrape(session, srv)
    assert moved(start_up, after_put) == {"PutObject": 1, "HeadObject": 1}

    # Three 8 MiB parts: a multipart upload.
    big = seal(SECRET, "big", os.urandom(20 * MiB))
    async with session.put(f"{srv.url}/blobs/alice/big", data=big, headers=auth) as r:
        assert r.status == 200, await r.text()
    after_big = await scrape(session, srv)
    assert moved(after_put, after_big) == {
        "CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1,
        "HeadObject": 1,
    }

    async with session.get(f"{srv.url}/blobs/alice/one", headers=auth) as r:
        assert r.status == 200
        assert await r.read() == one
    async with session.get(f"{srv.url}/blobs/alice/big", headers=auth) as r:
        assert r.status == 200
        assert await r.read() == big
    after_get = await scrape(session, srv)
    assert moved(after_big, after_get) == {"GetObject": 2}

    # A request the server refuses before any payload moves sends nothing to S3.
    async with session.put(f"{srv.url}/blobs/alice/one", data=one, headers=auth) as r:
        assert r.status == 409
    assert moved(after_get, await scrape(session, srv)) == {}
    assert srv.terminate() == 0
