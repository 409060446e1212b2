"""What the change feed holds (SPEC 8), over real HTTP on every backend with a feed: one
change per write of every kind and none for a refused write, pages, namespaces, the wake-up
of a long poll and of an event stream by another client's write, Last-Event-ID resuming
exactly after the last event, retention's 410, and the listing's Changes-Cursor."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest

from blobsync.format import encode_upstream_header
from tests.helpers.feed_http import FEED_BACKENDS, get_changes, key, open_events
from tests.helpers.servers import auth_header, make_service

from .conftest import Api, MakeApi, sealed

pytestmark = pytest.mark.parametrize("backend", FEED_BACKENDS)


async def changes(api: Api, **params: object) -> tuple[int, dict]:
    return await get_changes(api.session, api.url, api.user, api.auth, **params)


async def feed(api: Api, since: str | None = None, **params: object) -> tuple[list[dict], str]:
    """Every change after ``since``, page after page; and the last cursor."""
    out: list[dict] = []
    while True:
        status, doc = await changes(api, since=since, **params)
        assert status == 200, doc
        out += doc["changes"]
        since = doc["cursor"]
        if doc["done"]:
            return out, since


async def tag_of(api: Api, blob_id: str, namespace: str = "default") -> str:
    async with api.request("GET", api.blob_url(blob_id), params={"namespace": namespace}) as r:
        assert r.status == 200
        await r.read()
        return r.headers["Tag"]


def upstream(blobs: dict[str, bytes]) -> bytes:
    header = encode_upstream_header([(i, len(b)) for i, b in blobs.items()])
    return header + b"".join(blobs.values())


async def test_every_write_kind_appends_one_change(api: Api) -> None:
    _, start = await feed(api)
    # A PUT.
    assert await api.put("p1", sealed("p1")) == 200
    # A stream upload: small blobs (stored as a batch) and large ones (stored alone).
    blobs = {"s1": sealed("s1"), "s2": sealed("s2", 300 << 10), "s3": sealed("s3", 50)}
    async with api.request("POST", f"{api.url}/stream/{api.user}?direction=upload",
                           data=upstream(blobs)) as r:
        assert r.status == 200, await r.text()
    # An incoming delivery: MX, flagged PENDING.
    service = await make_service(api.store)
    async with api.session.put(f"{api.server.local_url}/incoming/{api.user}/m1",
                               data=b"mail " * 100, headers=auth_header("incoming", service)
                               ) as r:
        assert r.status == 200
    # A flags POST, and a DELETE.
    async with api.request("POST", api.blob_url("p1"), data=b'["PROCESSED"]') as r:
        assert r.status == 200
    async with api.request("DELETE", api.blob_url("s3")) as r:
        assert r.status == 200

    got, _ = await feed(api, since=start)
    assert [key(c) for c in got] == [
        ("default", "p1", "put"),
        ("default", "s1", "put"), ("default", "s2", "put"), ("default", "s3", "put"),
        ("MX", "m1", "put"),
        ("default", "p1", "flags"),
        ("default", "s3", "delete"),
    ]
    by_key = {key(c): c for c in got}
    put = by_key[("default", "p1", "put")]
    assert put["size"] == len(sealed("p1")) and put["flags"] == []
    assert put["tag"] == await tag_of(api, "p1")
    assert len(base64.urlsafe_b64decode(put["tag"])) == 16
    assert by_key[("default", "s2", "put")]["size"] == len(blobs["s2"])
    mail = by_key[("MX", "m1", "put")]
    assert mail["flags"] == ["PENDING"] and mail["tag"] == await tag_of(api, "m1", "MX")
    assert by_key[("default", "p1", "flags")] == {
        "namespace": "default", "blob_id": "p1", "op": "flags", "flags": ["PROCESSED"]}
    assert by_key[("default", "s3", "delete")] == {
        "namespace": "default", "blob_id": "s3", "op": "delete"}


async def test_refused_writes_append_nothing(make_api: MakeApi) -> None:
    api = await make_api(quota=2000)
    assert await api.put("b1", sealed("b1")) == 200
    _, cursor = await feed(api)
    assert await api.put("b1", sealed("b1")) == 409  # exists
    assert await api.put("big", sealed("big", 5000)) == 507  # over quota
    assert await api.put("bad", b"not sealed") == 400
    async with api.request("POST", api.blob_url("b1"), params={"expect": "PENDING"},
                           data=b'["PROCESSING"]') as r:
        assert r.status == 412
    async with api.request("DELETE", api.blob_url("nope")) as r:
        assert r.status == 404
    async with api.request("POST", f"{api.url}/stream/{api.user}?direction=upload",
                           data=upstream({"b1": sealed("b1")})) as r:
        assert r.status == 200 and (await r.json())["stored"] == []
    got, after = await feed(api, since=cursor)
    assert got == [] and after == cursor


async def test_a_recreated_id_carries_its_new_tag(api: Api) -> None:
    first, second = sealed("r"), sealed("r")
    assert await api.put("r", first) == 200
    async with api.request("DELETE", api.blob_url("r")) as r:
        assert r.status == 200
    assert await api.put("r", second) == 200
    got, _ = await feed(api)
    assert [c["op"] for c in got] == ["put", "delete", "put"]
    assert got[0]["tag"] != got[2]["tag"] == await tag_of(api, "r")


async def test_pages_and_namespaces(api: Api) -> None:
    for n in range(7):
        assert await api.put(f"d{n}", sealed(f"d{n}")) == 200
        assert await api.put(f"x{n}", sealed(f"x{n}"), namespace="other") == 200
    status, doc = await changes(api, limit=3)
    assert status == 200 and len(doc["changes"]) == 3 and doc["done"] is False
    everything, end = await feed(api, limit=3)
    assert len(everything) == 14
    assert [c["blob_id"] for c in everything] == [f"{p}{n}" for n in range(7) for p in "dx"]
    # One namespace: its changes only, in order, paged; the cursor reaches the end all the
    # same (the last change is another namespace's).
    mine, cursor = await feed(api, limit=2, namespace="default")
    assert [c["blob_id"] for c in mine] == [f"d{n}" for n in range(7)]
    assert cursor == end
    got, _ = await feed(api, since=cursor)
    assert got == []


async def test_changes_cursor_of_a_listing_then_since(api: Api) -> None:
    for n in range(3):
        assert await api.put(f"b{n}", sealed(f"b{n}")) == 200
    for params in ({}, {"namespace": "default"}, {"order_by": "-date"}, {"namespace": "MX"}):
        async with api.request("GET", api.blob_url(), params=params) as r:
            assert r.status == 200
            cursor = r.headers["Changes-Cursor"]
        got, _ = await feed(api, since=cursor)
        assert got == []
    async with api.request("GET", api.blob_url()) as r:
        listed = await r.json()
        cursor = r.headers["Changes-Cursor"]
    assert sorted(listed) == ["b0", "b1", "b2"]
    assert await api.put("later", sealed("later")) == 200
    async with api.request("DELETE", api.blob_url("b0")) as r:
        assert r.status == 200
    got, _ = await feed(api, since=cursor)
    assert [key(c) for c in got] == [("default", "later", "put"), ("default", "b0", "delete")]
    # Counts and tombstone listings are not listings of ids: no cursor.
    for params in ({"only_count": "true"}, {"deleted": "true"}):
        async with api.request("GET", api.blob_url(), params=params) as r:
            assert "Changes-Cursor" not in r.headers


async def test_long_poll_wakes_on_another_clients_put(api: Api) -> None:
    _, cursor = await feed(api)
    poll = asyncio.ensure_future(changes(api, since=cursor, timeout=60))
    await asyncio.sleep(0.5)
    assert not poll.done()
    async with aiohttp.ClientSession() as other:
        start = time.monotonic()
        async with other.put(api.blob_url("w1"), data=sealed("w1"), headers=api.auth) as r:
            assert r.status == 200
    status, doc = await asyncio.wait_for(poll, 10)
    assert time.monotonic() - start < 5
    assert status == 200 and [key(c) for c in doc["changes"]] == [("default", "w1", "put")]


async def test_event_stream_follows_commits_and_resumes_after_the_last_event(
    api: Api,
) -> None:
    assert await api.put("b0", sealed("b0")) == 200
    stream = await open_events(api.session, api.url, api.user, api.auth)
    seen: list[tuple[str, dict]] = []
    try:
        event = await stream.next_change()
        seen.append((event.id, event.data))
        async with aiohttp.ClientSession() as other:
            for n in (1, 2, 3):
                start = time.monotonic()
                async with other.put(api.blob_url(f"b{n}"), data=sealed(f"b{n}"),
                                     headers=api.auth) as r:
                    assert r.status == 200
                event = await stream.next_change(timeout=5)
                assert time.monotonic() - start < 5
                seen.append((event.id, event.data))
    finally:
        stream.close()
    assert [d["blob_id"] for _, d in seen] == ["b0", "b1", "b2", "b3"]
    # Gone after b1's event; meanwhile b2, b3 (already seen) and more were written. Each
    # event id is a cursor: resuming from b1's gives exactly what came after it.
    for n in (4, 5):
        assert await api.put(f"b{n}", sealed(f"b{n}")) == 200
    stream = await open_events(api.session, api.url, api.user, api.auth,
                               last_event_id=seen[1][0])
    try:
        again = [(await stream.next_change()).data["blob_id"] for _ in range(4)]
    finally:
        stream.close()
    assert again == ["b2", "b3", "b4", "b5"]
    # And a page from b3's id agrees with the stream.
    got, _ = await feed(api, since=seen[3][0])
    assert [c["blob_id"] for c in got] == ["b4", "b5"]


async def test_retention_makes_older_cursors_410(api: Api) -> None:
    assert await api.put("old1", sealed("old1")) == 200
    _, first = await feed(api)
    assert await api.put("old2", sealed("old2")) == 200
    _, second = await feed(api)
    await asyncio.sleep(0.05)
    dropped = await api.store.index.compact_changes(0.01)
    assert dropped == 2
    status, doc = await changes(api, since=first)
    assert (status, doc["resync"]) == (410, True)
    # The newest cursor is at the horizon: still good; so is a full read from no cursor.
    assert await api.put("new", sealed("new")) == 200
    got, _ = await feed(api, since=second)
    assert [c["blob_id"] for c in got] == ["new"]
    got, _ = await feed(api)
    assert [c["blob_id"] for c in got] == ["new"]
    # Compaction without retention loses nothing a reader needs: no cursor goes bad.
    async with api.request("DELETE", api.blob_url("new")) as r:
        assert r.status == 200
    _, before_compaction = await feed(api)
    assert await api.store.index.compact_changes(None) == 1  # the put its delete supersedes
    got, _ = await feed(api, since=second)
    assert [key(c) for c in got] == [("default", "new", "delete")]
    got, _ = await feed(api, since=before_compaction)
    assert got == []


async def test_a_410_says_whether_it_was_no_cursor_or_another_feeds(api: Api) -> None:
    assert await api.put("b1", sealed("b1")) == 200
    _, cursor = await feed(api)
    for garbage in ("garbage", "", "x." * 40, cursor + "0" * 30):
        status, doc = await changes(api, since=garbage)
        assert (status, doc["resync"]) == (410, True)
        assert doc["error"].startswith("not a cursor"), doc
    other = "0123456789abcdef." + cursor.rpartition(".")[2]
    status, doc = await changes(api, since=other)
    assert (status, doc["resync"]) == (410, True)
    assert doc["error"].startswith("this cursor is of another feed"), doc
