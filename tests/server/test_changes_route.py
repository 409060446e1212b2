"""GET /changes/{uuid} as a route (SPEC 8): its parameters and their limits, 401/403/410,
Server-Sent Events framing, clients that go away, and a server that stops under open
long polls and streams. What the feed holds is in test_changes_feed.py."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from blobsync.server.app import start_sites
from blobsync.server.config import ServerConfig
from blobsync.server.feed import HUB, MAX_POSITION
from blobsync.server.storage.factory import make_store
from tests.helpers.feed_http import FEED_BACKENDS, get_changes, hub_of, open_events, wait_for
from tests.helpers.server_cli import add_user
from tests.helpers.servers import auth_header, make_user, start_server
from tests.helpers.subproc import ServerProcess

from .conftest import Api, MakeApi, sealed

feed_backends = pytest.mark.parametrize("backend", FEED_BACKENDS)


async def changes(api: Api, **params: object) -> tuple[int, dict]:
    return await get_changes(api.session, api.url, api.user, api.auth, **params)


@feed_backends
async def test_server_information_names_the_extension(api: Api) -> None:
    async with api.session.get(f"{api.url}/") as r:
        assert "changes" in (await r.json())["extensions"]  # SPEC 1.1


@feed_backends
@pytest.mark.parametrize(("query", "message"), [
    ({"limit": "0"}, "limit: from 1 to 10000"),
    ({"limit": "10001"}, "limit: from 1 to 10000"),
    ({"limit": "-1"}, "limit: expected a positive integer"),
    ({"limit": "ten"}, "limit: expected a positive integer"),
    ({"timeout": "-1"}, "timeout: from 0 to 300 seconds"),
    ({"timeout": "301"}, "timeout: from 0 to 300 seconds"),
    ({"timeout": "nan"}, "timeout: from 0 to 300 seconds"),
    ({"timeout": "inf"}, "timeout: from 0 to 300 seconds"),
    ({"timeout": "soon"}, "timeout: expected a number of seconds"),
    ({"namespace": "a.b"}, "invalid namespace"),
])
async def test_parameters_out_of_bounds_are_400(api: Api, query: dict[str, str],
                                                message: str) -> None:
    status, doc = await changes(api, **query)
    assert status == 400 and message in doc["error"], doc


@feed_backends
async def test_limits_at_their_bounds_are_taken(api: Api) -> None:
    for query in ({"limit": "1"}, {"limit": "10000"}, {"timeout": "0"}, {"timeout": "0.5"}):
        status, doc = await changes(api, **query)
        assert status == 200 and doc["changes"] == [] and doc["done"] is True, doc
    async with api.request("GET", f"{api.url}/changes/{api.user}?limit=1&limit=2") as r:
        assert r.status == 400 and "more than once" in (await r.json())["error"]


@feed_backends
async def test_auth_as_for_blobs(api: Api) -> None:
    bob = auth_header("bob", await make_user(api.store, "bob"))
    url = f"{api.url}/changes/{api.user}"
    for headers, status in (
        ({}, 401),
        (auth_header(api.user, "wrong"), 401),
        ({"Authorization": "Token !!!"}, 401),
        (bob, 403),
    ):
        for accept in ({}, {"Accept": "text/event-stream"}):
            async with api.session.get(url, headers={**headers, **accept}) as r:
                assert r.status == status, (headers, accept)
                assert (await r.json())["error"]
            async with api.session.get(f"{api.url}/blobs/{api.user}", headers=headers) as r:
                assert r.status == status  # the same as the listing's
    async with api.session.get(f"{api.url}/changes/no.body", headers=api.auth) as r:
        assert r.status == 400
    # A bad cursor of someone else's feed is 403, not 410: nothing is said to a stranger.
    async with api.session.get(url, params={"since": "nonsense"}, headers=bob) as r:
        assert r.status == 403


@feed_backends
async def test_cursors_the_feed_cannot_serve_are_410_with_resync(api: Api) -> None:
    assert await api.put("b1", sealed("b1")) == 200
    status, doc = await changes(api)
    cursor = doc["cursor"]
    feed_id, position = cursor.rsplit(".", 1)
    assert int(position) >= 1
    bad = [
        "nonsense",
        "",
        f"{'0' * len(feed_id)}.{position}",  # another database's
        f"{feed_id}.{int(position) + 1000}",  # past what was ever given out
        f"{feed_id}.-1",
        f"{feed_id}.{MAX_POSITION + 1}",  # past what SQL's BIGINT holds
        f"{feed_id}.{'9' * 40}",
        f".{position}",
        f"{feed_id}.{position}" + "0" * 60,  # too long to be a cursor
    ]
    for since in bad:
        status, doc = await changes(api, since=since)
        assert (status, doc.get("resync")) == (410, True), (since, doc)
        assert doc["error"]
        async with api.request("GET", f"{api.url}/changes/{api.user}",
                               headers={"Accept": "text/event-stream", "Last-Event-ID": since}
                               ) as r:
            assert r.status == 410 and (await r.json())["resync"] is True


@feed_backends
async def test_timeout_zero_answers_at_once(api: Api) -> None:
    start = time.monotonic()
    status, doc = await changes(api, timeout=0)
    assert status == 200 and doc["changes"] == []
    assert time.monotonic() - start < 1


@feed_backends
async def test_long_poll_that_times_out_keeps_or_moves_the_cursor(api: Api) -> None:
    assert await api.put("b1", sealed("b1")) == 200
    _, doc = await changes(api, namespace="default")
    cursor = doc["cursor"]
    start = time.monotonic()
    status, doc = await changes(api, since=cursor, timeout=0.5)
    assert status == 200 and doc == {"changes": [], "cursor": cursor, "done": True}
    assert 0.4 < time.monotonic() - start < 5

    # Another namespace moves: the poll of "default" wakes, sees nothing of its own, goes
    # on waiting, and times out with a cursor past the other namespace's change.
    poll = asyncio.ensure_future(changes(api, since=cursor, timeout=1.5, namespace="default"))
    await asyncio.sleep(0.3)
    assert await api.put("m1", sealed("m1"), namespace="MX") == 200
    status, doc = await poll
    assert status == 200 and doc["changes"] == [] and doc["cursor"] != cursor
    # That later cursor skips nothing of "default", and the namespace's own change wakes.
    poll = asyncio.ensure_future(changes(api, since=doc["cursor"], timeout=30))
    await asyncio.sleep(0.3)
    start = time.monotonic()
    assert await api.put("b2", sealed("b2")) == 200
    status, doc = await poll
    assert [c["blob_id"] for c in doc["changes"]] == ["b2"]
    assert time.monotonic() - start < 5


@feed_backends
async def test_event_stream_framing(make_api: MakeApi) -> None:
    api = await make_api(settings={"feed_heartbeat": 0.3})
    assert await api.put("b1", sealed("b1")) == 200
    stream = await open_events(api.session, api.url, api.user, api.auth)
    try:
        assert stream.response.headers["Cache-Control"] == "no-cache"
        first = await stream.next_change()
        assert first.data["blob_id"] == "b1" and first.data["op"] == "put"
        assert stream.lines[:4] == [
            "event: change", f"id: {first.id}", stream.lines[2], ""
        ] and stream.lines[2].startswith("data: {")
        # Idle: a comment line at every heartbeat, and nothing else.
        beat = await stream.next(timeout=5)
        assert beat is not None and beat.kind == "comment" and beat.text == "keep-alive"
        assert stream.lines[-2:] == [": keep-alive", ""]
        assert await api.put("b2", sealed("b2")) == 200
        second = await stream.next_change(timeout=5)
        assert second.data["blob_id"] == "b2" and second.id != first.id
    finally:
        stream.close()


@feed_backends
async def test_last_event_id_wins_over_since(api: Api) -> None:
    for n in range(3):
        assert await api.put(f"b{n}", sealed(f"b{n}")) == 200
    _, doc = await changes(api, limit=1)
    after_first = doc["cursor"]
    stream = await open_events(api.session, api.url, api.user, api.auth,
                               last_event_id=after_first, since="nonsense")
    try:
        assert (await stream.next_change()).data["blob_id"] == "b1"
    finally:
        stream.close()
    # Without Last-Event-ID, `since` counts for a stream too; a plain GET ignores the header.
    stream = await open_events(api.session, api.url, api.user, api.auth, since=after_first)
    try:
        assert (await stream.next_change()).data["blob_id"] == "b1"
    finally:
        stream.close()
    async with api.request("GET", f"{api.url}/changes/{api.user}",
                           headers={"Last-Event-ID": "nonsense"}) as r:
        assert r.status == 200 and len((await r.json())["changes"]) == 3


@feed_backends
async def test_clients_that_go_away_free_their_waiters(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # A long heartbeat and a long poll: only noticing the client's departure frees them.
    api = await make_api(settings={"feed_heartbeat": 120})
    hub = hub_of(api.server)
    _, doc = await changes(api)
    polls = [asyncio.ensure_future(changes(api, since=doc["cursor"], timeout=120))
             for _ in range(3)]
    streams = [await open_events(api.session, api.url, api.user, api.auth)
               for _ in range(3)]
    await wait_for(lambda: hub.waiting == 6, what="six waiters")
    for poll in polls:
        poll.cancel()
    for stream in streams:
        stream.close()
    await wait_for(lambda: hub.waiting == 0, timeout=5, what="every waiter released")
    # The feed still works, and no request was left behind.
    assert await api.put("b1", sealed("b1")) == 200
    status, doc = await changes(api, since=doc["cursor"], timeout=5)
    assert status == 200 and [c["blob_id"] for c in doc["changes"]] == ["b1"]
    assert hub.waiting == 0
    text = caplog.text
    assert "Traceback" not in text and "Error handling request" not in text, text
    assert "unexpected error" not in text


# --------------------------------------------------------------------------- shutdown


async def test_sigterm_ends_open_long_polls_and_streams_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = await asyncio.to_thread(ServerProcess, "--data", str(data), "--port", "0",
                                  "--local-port", "0")
    try:
        token = "t0k3n-" + "x" * 30
        await asyncio.to_thread(add_user, data, "alice", token)
        auth = auth_header("alice", token)
        async with aiohttp.ClientSession() as session:
            _, doc = await get_changes(session, srv.url, "alice", auth)
            poll = asyncio.ensure_future(
                get_changes(session, srv.url, "alice", auth, since=doc["cursor"], timeout=300))
            stream = await open_events(session, srv.url, "alice", auth)
            await asyncio.sleep(0.5)  # both waiting
            start = time.monotonic()
            srv.proc.terminate()
            # The poll answers (no changes, same cursor); the stream ends, neither is cut.
            status, answer = await asyncio.wait_for(poll, 10)
            assert (status, answer["changes"], answer["cursor"]) == (200, [], doc["cursor"])
            assert await stream.next(timeout=10) is None
            stream.close()
        code = await asyncio.to_thread(srv.proc.wait, 10)
        # Well inside the 5 s that requests in flight get (app.SHUTDOWN_TIMEOUT).
        assert time.monotonic() - start < 3, time.monotonic() - start
        assert code == 0, srv.log
        assert "Traceback" not in srv.log
    finally:
        srv.kill()


async def test_stop_survives_a_follower_that_swallows_a_cancellation(tmp_path: Path) -> None:
    """asyncpg may swallow a cancellation that lands during a connect: the hub cancels
    again, and the server still stops."""
    store = make_store(str(tmp_path / "srv"), "memory:", "memory:")

    async def stubborn(wake: object, active: object) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # swallowed once, as a library might
        await asyncio.sleep(3600)

    store.index.follow_commits = stubborn  # type: ignore[method-assign]
    srv = await start_server(tmp_path, store=store)
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await asyncio.wait_for(srv.stop(), 10)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("alone", [True, False])
async def test_a_server_alone_on_its_store_follows_no_other_process(
    tmp_path: Path, alone: bool
) -> None:
    """Alone (the data dir's lock held, the embedded index), nobody else commits: no poll
    of the index while watchers wait, which was most of what idle watchers cost
    (bench/idle_watchers.py). Workers and shared stores follow each other."""
    store = make_store(str(tmp_path / "srv"), None, None)
    await store.open()
    config = ServerConfig(data=str(tmp_path / "srv"), port=0, local_port=0)
    sites = await start_sites(store, config, alone=alone)
    try:
        assert sites.public.app[HUB].following is not alone
    finally:
        await sites.stop()
        await store.close()
