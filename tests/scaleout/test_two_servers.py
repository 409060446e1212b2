"""Scale-out with real processes: two ``blobsync server`` on one PostgreSQL and one S3 bucket,
and ``blobsync server --workers 2`` on the default store and on PostgreSQL + S3."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import aiohttp
import psutil
import pytest

from blobsync.format import seal
from blobsync.server.storage.pgpayloads import PostgresPayloads
from blobsync.server.storage.s3 import S3Payloads
from blobsync.server.storage.tiered import TieredPayloads
from tests.harness.s3 import S3Endpoint
from tests.helpers import subproc
from tests.helpers.metrics import parse, value
from tests.helpers.processes import add_user, listening_children, pg_s3_args, start
from tests.helpers.servers import auth_header
from tests.helpers.subproc import ServerProcess, cli_env

SECRET = os.urandom(128)
PREFIX = "scale/out"


async def payload_count(endpoint: S3Endpoint, bucket: str, dsn: str) -> tuple[int, int]:
    """Payloads stored, and how many of them are S3 objects: small ones are rows of the
    metadata database since issue 13 (pgpayloads), so the S3 count is 0 here."""
    objects = S3Payloads(bucket, PREFIX, endpoint_url=endpoint.url,
                         access_key=endpoint.access_key, secret_key=endpoint.secret_key)
    payloads = TieredPayloads(PostgresPayloads(dsn), objects)
    await payloads.open()
    try:
        return (len([loc async for loc, _ in payloads.locations()]),
                len([loc async for loc, _ in objects.locations()]))
    finally:
        await payloads.close()


async def put(session: aiohttp.ClientSession, url: str, body: bytes,
              auth: dict[str, str]) -> int:
    async with session.put(url, data=body, headers=auth) as r:
        await r.read()
        return r.status


async def get(session: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> bytes:
    async with session.get(url, headers=auth) as r:
        assert r.status == 200, await r.text()
        return await r.read()


async def test_two_servers_share_postgres_and_s3(
    postgres_db: str, s3_endpoint: S3Endpoint, s3_bucket: str, tmp_path: Path,
    session: aiohttp.ClientSession, stop_later: list[ServerProcess],
) -> None:
    quota = 100_000
    token = await add_user(postgres_db, tmp_path, "alice")
    auth = auth_header("alice", token)
    env = cli_env(**s3_endpoint.env())
    args = (*pg_s3_args(postgres_db, s3_bucket, tmp_path, PREFIX), "--quota", str(quota))
    a, b = await asyncio.gather(start(stop_later, *args, env=env),
                                start(stop_later, *args, env=env))

    def url(srv: ServerProcess, blob_id: str) -> str:
        return f"{srv.url}/blobs/alice/{blob_id}"

    # Written through one, read through the other (an inline payload: a row both read).
    doc = seal(SECRET, "doc", os.urandom(20_000))
    assert await put(session, url(a, "doc"), doc, auth) == 200
    assert await get(session, url(b, "doc"), auth) == doc

    # One id, 16 writers over both servers: exactly one wins, the losers leave no object.
    bodies = [seal(SECRET, "race", os.urandom(10_000)) for _ in range(16)]
    statuses = await asyncio.gather(*(
        put(session, url((a, b)[n % 2], "race"), body, auth) for n, body in enumerate(bodies)
    ))
    assert sorted(statuses) == [200] + [409] * 15
    winner = bodies[statuses.index(200)]
    assert await get(session, url(a, "race"), auth) == winner
    assert await get(session, url(b, "race"), auth) == winner
    assert await payload_count(s3_endpoint, s3_bucket, postgres_db) == (2, 0)

    # One quota across both: what fits is stored, whichever server took it, the rest is 507.
    used = len(doc) + len(winner)
    fill = [seal(SECRET, f"fill{n}", os.urandom(15_000)) for n in range(8)]
    statuses = await asyncio.gather(*(
        put(session, url((a, b)[n % 2], f"fill{n}"), body, auth)
        for n, body in enumerate(fill)
    ))
    fits = (quota - used) // len(fill[0])
    assert sorted(statuses) == [200] * fits + [507] * (len(fill) - fits)
    async with session.get(f"{b.url}/blobs/alice", headers=auth) as r:
        listed = await r.json()
    assert len(listed) == 2 + fits
    assert await payload_count(s3_endpoint, s3_bucket, postgres_db) == (2 + fits, 0)

    assert a.terminate() == 0
    assert b.terminate() == 0


# --------------------------------------------------------------------------- --workers


async def worker_counts(session: aiohttp.ClientSession, srv: ServerProcess) -> list[float]:
    async with session.get(f"{srv.local_url}/metrics") as r:
        samples = parse(await r.text())
    return [value(samples, "blobsync_worker_requests_total", worker=str(w)) for w in (0, 1)]


async def exercise_workers(session: aiohttp.ClientSession, srv: ServerProcess,
                           auth: dict[str, str]) -> None:
    """Both workers listen, both serve, and what one stores the other reads."""
    srv.wait_for_log("all 2 workers ready", timeout=30)
    port = int(srv.url.rsplit(":", 1)[1])
    workers = listening_children(srv.pid, port)
    assert len(workers) == 2 and srv.pid not in workers

    blobs = {f"b{n}": seal(SECRET, f"b{n}", os.urandom(3000)) for n in range(24)}
    statuses = await asyncio.gather(*(
        put(session, f"{srv.url}/blobs/alice/{i}", body, auth) for i, body in blobs.items()
    ))
    assert statuses == [200] * len(blobs)
    for blob_id, body in blobs.items():
        assert await get(session, f"{srv.url}/blobs/alice/{blob_id}", auth) == body
    # 48 connections, spread by the kernel: the chance that one worker got none is 2**-47.
    assert all(n > 0 for n in await worker_counts(session, srv))

    race = [seal(SECRET, "race", os.urandom(1000)) for _ in range(16)]
    statuses = await asyncio.gather(*(
        put(session, f"{srv.url}/blobs/alice/race", body, auth) for body in race
    ))
    assert sorted(statuses) == [200] + [409] * 15


async def test_workers_on_default_store(
    tmp_path: Path, session: aiohttp.ClientSession, stop_later: list[ServerProcess],
) -> None:
    data = tmp_path / "data"
    token = await add_user(None, data, "alice")
    srv = await start(stop_later, "--data", str(data), "--workers", "2")
    await exercise_workers(session, srv, auth_header("alice", token))

    # A worker that dies on its own takes the server down: the supervisor restarts it whole.
    victim, other = sorted(listening_children(srv.pid, int(srv.url.rsplit(":", 1)[1])))
    os.kill(victim, signal.SIGKILL)
    assert srv.proc.wait(30) == 1
    assert not psutil.pid_exists(other) or psutil.Process(other).status() == "zombie"
    assert "stopping the others" in srv.log


async def test_workers_on_postgres_and_s3(
    postgres_db: str, s3_endpoint: S3Endpoint, s3_bucket: str, tmp_path: Path,
    session: aiohttp.ClientSession, stop_later: list[ServerProcess],
) -> None:
    token = await add_user(postgres_db, tmp_path, "alice")
    env = cli_env(**s3_endpoint.env())
    srv = await start(stop_later, *pg_s3_args(postgres_db, s3_bucket, tmp_path, PREFIX),
                      "--workers", "2", env=env)
    await exercise_workers(session, srv, auth_header("alice", token))
    workers = listening_children(srv.pid, int(srv.url.rsplit(":", 1)[1]))
    assert await payload_count(s3_endpoint, s3_bucket, postgres_db) == (25, 0)

    # SIGTERM to the master stops every worker cleanly.
    assert srv.terminate() == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                   for p in workers)
    assert "all workers stopped" in srv.log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "0"), "workers: expected a whole number of at least 1"),
        (("--workers", "two"), "workers: expected a whole number"),
        (("--workers", "2", "--demo"), "--demo runs a single process"),
    ],
)
def test_workers_option_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    run = subproc.blobsync("server", "--data", str(tmp_path), *args)
    assert run.returncode == 1
    assert run.stderr.startswith("blobsync: error: ") and message in run.stderr


def test_workers_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subproc.blobsync("server", "--data", str(tmp_path), "--workers", "2",
                               "--port", str(port), "--local-port", "0")
    assert run.returncode == 1
    assert run.stderr == f"blobsync: error: cannot listen on 127.0.0.1:{port}: " \
        "Address already in use\n"
