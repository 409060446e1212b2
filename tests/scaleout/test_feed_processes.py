"""Cursors never skip, across processes (issue 12, SPEC 8): many writers hammer two server
processes that commit concurrently, on SQLite (``--workers 2``) and on one PostgreSQL (two
``blobsync server`` with one S3 bucket), while one reader follows the feed with long polls
and another with an event stream. Each sees every write exactly once, in the order of a
plain read of the whole feed afterwards, and the feed folds to the listing. A long poll
held by one process wakes within 5 s of a PUT on the other. And a server SIGKILLed during
writes comes back with a feed and a listing that agree."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from blobsync.format import encode_upstream_header, seal
from tests.harness.s3 import S3Endpoint
from tests.helpers.feed_http import get_changes, open_events
from tests.helpers.processes import add_user, listening_children, pg_s3_args, start
from tests.helpers.rawhttp import head, open_raw, read_response
from tests.helpers.servers import auth_header
from tests.helpers.subproc import ServerProcess, cli_env

SECRET = os.urandom(128)
WRITERS = 6
ROUNDS = 5


PREFIX = "feed/procs"


@dataclass
class Deployment:
    urls: list[str]  # the public URL of each process (one URL for --workers)
    auth: dict[str, str]
    procs: list[ServerProcess]
    workers: list[int] = field(default_factory=list)  # worker pids, for --workers


async def workers_on_sqlite(tmp_path: Path, stop_later: list[ServerProcess]) -> Deployment:
    data = tmp_path / "data"
    token = await add_user(None, data, "alice")
    srv = await start(stop_later, "--data", str(data), "--workers", "2")
    srv.wait_for_log("all 2 workers ready", timeout=30)
    workers = sorted(listening_children(srv.pid, port_of(srv.url)))
    assert len(workers) == 2
    return Deployment([srv.url], auth_header("alice", token), [srv], workers)


async def two_servers_on_postgres(
    tmp_path: Path, stop_later: list[ServerProcess], dsn: str, endpoint: S3Endpoint,
    bucket: str,
) -> Deployment:
    token = await add_user(dsn, tmp_path, "alice")
    env = cli_env(**endpoint.env())
    args = pg_s3_args(dsn, bucket, tmp_path, PREFIX)
    a, b = await asyncio.gather(start(stop_later, *args, env=env),
                                start(stop_later, *args, env=env))
    return Deployment([a.url, b.url], auth_header("alice", token), [a, b])


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --------------------------------------------------------------------------- writers


@dataclass
class Expected:
    """What the writers did that the server accepted, per blob in the order done."""

    ops: dict[str, list[str]] = field(default_factory=dict)

    def add(self, blob_id: str, op: str) -> None:
        self.ops.setdefault(blob_id, []).append(op)


async def send(session: aiohttp.ClientSession, method: str, url: str, auth: dict[str, str],
               data: bytes | None = None) -> tuple[int, Any]:
    async with session.request(method, url, data=data, headers=auth) as r:
        body = await r.read()
        return r.status, body


async def writer(dep: Deployment, session: aiohttp.ClientSession, n: int,
                 expected: Expected) -> None:
    """Writes of every kind, through every process in turn: PUT, flags, stream uploads
    (small blobs batched and a large one alone), DELETE, and a PUT that re-creates."""
    auth = dep.auth
    for r in range(ROUNDS):
        base = dep.urls[(n + r) % len(dep.urls)]
        blob = f"w{n}-{r}"
        status, _ = await send(session, "PUT", f"{base}/blobs/alice/{blob}", auth,
                               seal(SECRET, blob, os.urandom(200)))
        assert status == 200
        expected.add(blob, "put")
        base = dep.urls[(n + r + 1) % len(dep.urls)]
        status, _ = await send(session, "POST", f"{base}/blobs/alice/{blob}", auth,
                               b'["PENDING"]')
        assert status == 200
        expected.add(blob, "flags")
        streamed = {f"s{n}-{r}-{k}": seal(SECRET, f"s{n}-{r}-{k}", os.urandom(size))
                    for k, size in enumerate((100, 2000, (300 << 10) if r == 0 else 50))}
        header = encode_upstream_header([(i, len(b)) for i, b in streamed.items()])
        status, _ = await send(session, "POST", f"{base}/stream/alice?direction=upload", auth,
                               header + b"".join(streamed.values()))
        assert status == 200
        for blob_id in streamed:
            expected.add(blob_id, "put")
        if r % 2:
            status, _ = await send(session, "DELETE", f"{base}/blobs/alice/{blob}", auth)
            assert status == 200
            expected.add(blob, "delete")
            if r % 4 == 1:
                status, _ = await send(session, "PUT", f"{base}/blobs/alice/{blob}", auth,
                                       seal(SECRET, blob, os.urandom(100)))
                assert status == 200
                expected.add(blob, "put")


# --------------------------------------------------------------------------- readers


async def full_feed(session: aiohttp.ClientSession, url: str, auth: dict[str, str],
                    since: str | None = None) -> tuple[list[dict[str, Any]], str]:
    out: list[dict[str, Any]] = []
    while True:
        status, doc = await get_changes(session, url, "alice", auth, since=since, limit=50)
        assert status == 200, doc
        out += doc["changes"]
        since = doc["cursor"]
        if doc["done"]:
            return out, since


async def long_poll_reader(session: aiohttp.ClientSession, url: str, auth: dict[str, str],
                           since: str, stop: asyncio.Event) -> list[dict[str, Any]]:
    """Long polls until ``stop`` is set and a last plain read finds nothing more."""
    seen: list[dict[str, Any]] = []
    while True:
        stopping = stop.is_set()
        status, doc = await get_changes(session, url, "alice", auth, since=since,
                                        limit=7, timeout=0 if stopping else 2)
        assert status == 200, doc
        seen += doc["changes"]
        since = doc["cursor"]
        if stopping and doc["done"] and not doc["changes"]:
            return seen


async def event_reader(session: aiohttp.ClientSession, url: str, auth: dict[str, str],
                       since: str, count: asyncio.Future[int]) -> list[dict[str, Any]]:
    """Events until as many as ``count`` (known at the end) have come."""
    stream = await open_events(session, url, "alice", auth, since=since)
    seen: list[dict[str, Any]] = []
    try:
        while not (count.done() and len(seen) >= count.result()):
            try:
                event = await stream.next(timeout=0.5)
            except TimeoutError:
                continue
            assert event is not None, "the stream ended"
            if event.kind == "change":
                seen.append(event.data)
    finally:
        stream.close()
    return seen


def fold(changes: list[dict[str, Any]]) -> dict[str, str]:
    """The default namespace's state the feed describes: blob id -> its last put's tag."""
    state: dict[str, str] = {}
    for c in changes:
        if c["namespace"] != "default":
            continue
        if c["op"] == "put":
            state[c["blob_id"]] = c["tag"]
        elif c["op"] == "delete":
            state.pop(c["blob_id"], None)
    return state


async def listing(session: aiohttp.ClientSession, url: str, auth: dict[str, str]
                  ) -> tuple[dict[str, str], str]:
    """blob id -> Tag for everything listed, and the listing's Changes-Cursor."""
    async with session.get(f"{url}/blobs/alice", headers=auth) as r:
        assert r.status == 200
        ids, cursor = await r.json(), r.headers["Changes-Cursor"]
    tags = {}
    for blob_id in ids:
        async with session.get(f"{url}/blobs/alice/{blob_id}", headers=auth) as r:
            assert r.status == 200
            await r.read()
            tags[blob_id] = r.headers["Tag"]
    return tags, cursor


async def hammer_and_follow(dep: Deployment, session: aiohttp.ClientSession) -> None:
    auth = dep.auth
    _, start_cursor = await full_feed(session, dep.urls[0], auth)
    stop = asyncio.Event()
    count: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    polls = asyncio.ensure_future(long_poll_reader(session, dep.urls[0], auth, start_cursor,
                                                   stop))
    async with aiohttp.ClientSession() as stream_session:  # one connection, kept
        events = asyncio.ensure_future(event_reader(stream_session, dep.urls[-1], auth,
                                                    start_cursor, count))
        await asyncio.sleep(0.5)
        expected = Expected()
        await asyncio.gather(*(writer(dep, session, n, expected) for n in range(WRITERS)))
        stop.set()
        polled = await asyncio.wait_for(polls, 60)
        everything, _ = await full_feed(session, dep.urls[-1], auth, since=start_cursor)
        count.set_result(len(everything))
        streamed = await asyncio.wait_for(events, 60)

    # Every write once, in every process's order: a follower misses nothing that a plain
    # read afterwards finds, and sees nothing twice.
    total = sum(len(ops) for ops in expected.ops.values())
    assert len(everything) == total
    assert polled == everything
    assert streamed == everything
    per_blob: dict[str, list[str]] = {}
    for c in everything:
        per_blob.setdefault(c["blob_id"], []).append(c["op"])
    assert per_blob == expected.ops
    # The feed folds to the listing, through either process.
    for url in dep.urls:
        listed, _ = await listing(session, url, auth)
        assert fold(everything) == listed


def worker_of(dep: Deployment, local_port: int) -> int | None:
    """The worker pid that accepted our connection from ``local_port``."""
    for pid in dep.workers:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == local_port \
                    and conn.laddr.port == port_of(dep.urls[0]):
                return pid
    return None


async def connection_to(dep: Deployment, url: str, avoid: int | None = None
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int | None]:
    """A raw connection to ``url``; with --workers, one that a worker other than ``avoid``
    accepted (the kernel picks: try until one does)."""
    for _ in range(200):
        reader, w = await open_raw(url)
        if not dep.workers:
            return reader, w, None
        port = w.get_extra_info("sockname")[1]
        pid = None
        for _ in range(100):
            if (pid := worker_of(dep, port)) is not None:
                break
            await asyncio.sleep(0.02)
        if pid is not None and pid != avoid:
            return reader, w, pid
        w.close()
    raise AssertionError("no connection reached the other worker")


async def long_poll_wakes_across_processes(dep: Deployment,
                                           session: aiohttp.ClientSession) -> None:
    auth = dep.auth
    for n in range(3):
        _, cursor = await full_feed(session, dep.urls[0], auth)
        reader, w, poller = await connection_to(dep, dep.urls[0])
        path = f"/changes/alice?since={cursor}&timeout=60"
        w.write(head("GET", dep.urls[0], path, auth))
        await w.drain()
        await asyncio.sleep(0.5)  # held, waiting
        body = seal(SECRET, f"x{n}", os.urandom(100))
        put_url = dep.urls[-1]
        r2, w2, writer_pid = await connection_to(dep, put_url, avoid=poller)
        assert writer_pid != poller or not dep.workers
        start = time.monotonic()
        w2.write(head("PUT", put_url, f"/blobs/alice/x{n}",
                      {**auth, "Content-Length": str(len(body))}) + body)
        await w2.drain()
        assert (await read_response(r2)).status == 200
        answer = await read_response(reader)
        elapsed = time.monotonic() - start
        w.close()
        w2.close()
        assert answer.status == 200
        assert [c["blob_id"] for c in answer.json()["changes"]] == [f"x{n}"]
        assert elapsed < 5, elapsed


# --------------------------------------------------------------------------- the tests


async def test_workers_on_sqlite_never_skip(
    tmp_path: Path, session: aiohttp.ClientSession, stop_later: list[ServerProcess],
) -> None:
    dep = await workers_on_sqlite(tmp_path, stop_later)
    await hammer_and_follow(dep, session)
    await long_poll_wakes_across_processes(dep, session)
    assert dep.procs[0].terminate() == 0
    assert "Traceback" not in dep.procs[0].log


async def test_two_servers_on_postgres_never_skip(
    postgres_db: str, s3_endpoint: S3Endpoint, s3_bucket: str, tmp_path: Path,
    session: aiohttp.ClientSession, stop_later: list[ServerProcess],
) -> None:
    dep = await two_servers_on_postgres(tmp_path, stop_later, postgres_db, s3_endpoint,
                                        s3_bucket)
    await hammer_and_follow(dep, session)
    await long_poll_wakes_across_processes(dep, session)
    for proc in dep.procs:
        assert proc.terminate() == 0
        assert "Traceback" not in proc.log


async def test_sigkill_during_writes_leaves_feed_and_listing_agreeing(
    tmp_path: Path, stop_later: list[ServerProcess],
) -> None:
    data = tmp_path / "data"
    token = await add_user(None, data, "alice")
    auth = auth_header("alice", token)
    srv = await start(stop_later, "--data", str(data))
    dep = Deployment([srv.url], auth, [srv])

    async def keep_writing(session: aiohttp.ClientSession, n: int) -> None:
        expected = Expected()
        try:
            while True:
                await writer(dep, session, n, expected)
                n += WRITERS
        except (aiohttp.ClientError, AssertionError, OSError):
            return  # the server is gone

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        tasks = [asyncio.ensure_future(keep_writing(s, n)) for n in range(WRITERS)]
        await asyncio.sleep(1.5)
        srv.proc.kill()
        srv.proc.wait(10)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    srv = await start(stop_later, "--data", str(data))
    async with aiohttp.ClientSession() as session:
        everything, _ = await full_feed(session, srv.url, auth)
        listed, cursor = await listing(session, srv.url, auth)
        assert len(everything) > 10  # the kill came during the writes, not before them
        # Every listed blob has its put as its last put or delete, with its tag; every blob
        # whose last such change is a put is listed; a deleted one is not.
        assert fold(everything) == listed
        # Flags changes only follow a put of the same blob.
        alive: set[str] = set()
        for c in everything:
            if c["op"] == "put":
                alive.add(c["blob_id"])
            elif c["op"] == "delete":
                alive.discard(c["blob_id"])
            else:
                assert c["blob_id"] in alive, c
        # And the listing's cursor is where the feed ends.
        rest, _ = await full_feed(session, srv.url, auth, since=cursor)
        assert rest == []
    assert srv.terminate() == 0
