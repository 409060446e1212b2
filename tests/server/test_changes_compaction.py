"""Keeping the change feed small (SPEC 8): the sweep compacts it on its schedule (worker 0
only), ``admin gc`` does it by hand, and ``--feed-retention`` / ``--feed-heartbeat`` reach
the server from the command line, the environment and the config file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from blobsync.server.config import ConfigError, ServerConfig, describe, load_config
from tests.helpers.feed_http import get_changes, open_events
from tests.helpers.server_cli import add_user, call, one_line_error
from tests.helpers.servers import auth_header
from tests.helpers.subproc import ServerProcess, blobsync

from .conftest import sealed

TOKEN = "feed-" + "t" * 32
AUTH = auth_header("alice", TOKEN)


def test_settings_from_every_source_and_in_the_start_up_line(tmp_path: Path) -> None:
    line = describe(ServerConfig())
    # Whole seconds, never an exponent (it read "2.592e+06 s" once).
    assert line.endswith("; feed retention 2592000 s; feed heartbeat 15 s")
    assert "orphan sweep every 3600 s, grace 3600 s;" in line
    assert "feed retention kept for ever" in describe(ServerConfig(feed_retention=0))
    cfg = load_config({"feed_retention": "7d", "feed_heartbeat": "5"}, {})
    assert (cfg.feed_retention, cfg.feed_heartbeat) == (7 * 86400, 5)
    cfg = load_config({}, {"BLOBSYNC_FEED_RETENTION": "1h", "BLOBSYNC_FEED_HEARTBEAT": "2s"})
    assert (cfg.feed_retention, cfg.feed_heartbeat) == (3600, 2)
    toml = tmp_path / "server.toml"
    toml.write_text('feed-retention = "0"\nfeed_heartbeat = 10\n')
    cfg = load_config({}, {}, str(toml))
    assert (cfg.feed_retention, cfg.feed_heartbeat) == (0, 10)
    for bad in ({"feed_heartbeat": "0"}, {"feed_heartbeat": "-1"},
                {"feed_retention": "soon"}):
        with pytest.raises(ConfigError):
            load_config(bad, {})


@pytest.mark.parametrize(("flag", "value"), [
    ("--feed-heartbeat", "0"), ("--feed-heartbeat", "often"), ("--feed-retention", "-1d"),
])
def test_bad_feed_flags_are_one_line(tmp_path: Path, flag: str, value: str) -> None:
    run = blobsync("server", "--data", str(tmp_path), f"{flag}={value}")
    assert run.returncode == 1
    assert "feed_" in one_line_error(run)


def put(url: str, blob_id: str) -> None:
    status, body = call("PUT", f"{url}/blobs/alice/{blob_id}", "alice", TOKEN, sealed(blob_id))
    assert status == 200, body


async def cursor_now(session: aiohttp.ClientSession, url: str) -> str:
    status, doc = await get_changes(session, url, "alice", AUTH)
    assert status == 200, doc
    return str(doc["cursor"])


async def test_the_sweep_compacts_with_the_retention_and_heartbeat_given(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    srv = await asyncio.to_thread(
        ServerProcess, "--data", str(data), "--port", "0", "--local-port", "0",
        "--sweep-interval", "1", "--feed-retention", "1", "--feed-heartbeat", "0.3",
    )
    try:
        assert "feed retention 1 s; feed heartbeat 0.3 s" in srv.log
        await asyncio.to_thread(add_user, data, "alice", TOKEN)
        async with aiohttp.ClientSession() as session:
            # The heartbeat flag reaches the event stream.
            stream = await open_events(session, srv.url, "alice", AUTH)
            start = time.monotonic()
            beat = await stream.next(timeout=5)
            assert beat is not None and beat.kind == "comment"
            assert time.monotonic() - start < 2
            stream.close()

            await asyncio.to_thread(put, srv.url, "b1")
            before = await cursor_now(session, srv.url)
            await asyncio.to_thread(put, srv.url, "b2")
            after = await cursor_now(session, srv.url)
            # Within a few sweeps both changes are older than the retention: dropped, and
            # the horizon moves to b2's, so a cursor from before b2 can no longer be served.
            deadline = time.monotonic() + 15
            while True:
                status, doc = await get_changes(session, srv.url, "alice", AUTH, since=before)
                if status == 410:
                    break
                assert status == 200 and time.monotonic() < deadline, doc
                await asyncio.sleep(0.3)
            assert doc["resync"] is True
            status, doc = await get_changes(session, srv.url, "alice", AUTH, since=after)
            assert (status, doc["changes"]) == (200, [])
            # A listing gives a cursor that works again (the horizon, here).
            async with session.get(f"{srv.url}/blobs/alice", headers=AUTH) as r:
                assert sorted(await r.json()) == ["b1", "b2"]
                fresh = r.headers["Changes-Cursor"]
            status, doc = await get_changes(session, srv.url, "alice", AUTH, since=fresh)
            assert (status, doc["changes"]) == (200, [])
        srv.wait_for_log("feed compaction: 2 changes dropped (retention 1 s)", timeout=10)
    finally:
        srv.kill()


def test_the_compaction_line_gives_the_default_retention_in_seconds(tmp_path: Path) -> None:
    srv = ServerProcess("--data", str(tmp_path / "data"), "--port", "0", "--local-port", "0",
                        "--sweep-interval", "1")
    try:
        assert "feed retention 2592000 s;" in srv.log
        srv.wait_for_log("feed compaction: 0 changes dropped (retention 2592000 s)",
                         timeout=10)
    finally:
        srv.kill()


def test_admin_gc_compacts_and_prints_the_changes_dropped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = ServerProcess("--data", str(data), "--port", "0", "--local-port", "0",
                        "--sweep-interval", "0")
    try:
        add_user(data, "alice", TOKEN)
        for blob_id in ("b1", "b2", "b3"):
            put(srv.url, blob_id)
        assert call("DELETE", f"{srv.url}/blobs/alice/b1", "alice", TOKEN)[0] == 200
        for flags in (b'["PENDING"]', b'["PROCESSING"]'):
            assert call("POST", f"{srv.url}/blobs/alice/b2", "alice", TOKEN, flags)[0] == 200
        # Beside the running server: b1's put (its delete supersedes it) and b2's first
        # flags change go; nothing is old enough for the default retention.
        gc = blobsync("admin", "gc", "--data", str(data))
        assert (gc.returncode, gc.stdout) == (0, "0\n2\n"), gc.stderr
        assert blobsync("admin", "gc", "--data", str(data)).stdout == "0\n0\n"
        status, body = call("GET", f"{srv.url}/changes/alice", "alice", TOKEN)
        assert status == 200
        assert body.count(b'"op"') == 4  # b1 delete, b2 put and flags, b3 put
        # A tiny retention drops the rest, by flag or by environment.
        time.sleep(0.1)
        gc = blobsync("admin", "gc", "--feed-retention", "0.05", "--data", str(data))
        assert (gc.returncode, gc.stdout) == (0, "0\n4\n"), gc.stderr
        bad = blobsync("admin", "gc", "--feed-retention", "soon", "--data", str(data))
        assert "feed_retention" in one_line_error(bad)
    finally:
        srv.kill()
