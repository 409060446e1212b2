"""/blobs over real HTTP on loopback, on every backend (SPEC 4)."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest

from blobsync.format import b64url_encode, seal
from tests.helpers.rawhttp import raw_request
from tests.helpers.servers import auth_header, make_user

from .conftest import SECRET, Api, MakeApi, sealed


async def test_server_info_is_anonymous(api: Api) -> None:
    async with api.session.get(api.url + "/") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["version"] and "blobs" in doc["services"] and "stream" in doc["services"]
    assert doc["limits"]["max_json_body"] == 1 << 20


async def test_put_get_roundtrip(api: Api) -> None:
    blob = sealed("b1", 5000)
    assert await api.put("b1", blob) == 200
    async with api.request("GET", api.blob_url("b1")) as r:
        assert r.status == 200
        assert await r.read() == blob
        assert r.headers["Tag"] == b64url_encode(blob[-16:]).decode()
        assert r.headers["Content-Length"] == str(len(blob))
        assert r.headers["Accept-Ranges"] == "bytes"
        assert r.content_type == "application/octet-stream"


async def test_put_existing_is_409(api: Api) -> None:
    first = sealed("b1")
    assert await api.put("b1", first) == 200
    status, doc = await api.json("PUT", api.blob_url("b1"), data=sealed("b1"))
    assert status == 409 and "error" in doc
    async with api.request("GET", api.blob_url("b1")) as r:
        assert await r.read() == first  # never overwritten


async def test_get_missing_is_404(api: Api) -> None:
    status, doc = await api.json("GET", api.blob_url("nope"))
    assert status == 404 and isinstance(doc["error"], str)


async def test_listing(api: Api) -> None:
    status, doc = await api.json("GET", api.blob_url())
    assert (status, doc) == (200, [])
    ids = ["c", "a", "b"]
    for blob_id in ids:
        assert await api.put(blob_id, sealed(blob_id)) == 200
    assert await api.put("x", sealed("x"), namespace="other") == 200
    _, doc = await api.json("GET", api.blob_url())
    assert sorted(doc) == ["a", "b", "c"]
    for order, expected in (("date", ids), ("+date", ids), ("-date", ids[::-1])):
        _, doc = await api.json("GET", api.blob_url(), params={"order_by": order})
        assert doc == expected, order
    # A '+' left unencoded arrives as a space; it still means oldest first.
    _, doc = await api.json("GET", api.blob_url() + "?order_by=+date")
    assert doc == ids
    _, doc = await api.json("GET", api.blob_url(), params={"order_by": "-date", "limit": "2"})
    assert doc == ["b", "a"]
    _, doc = await api.json("GET", api.blob_url(), params={"only_count": "true"})
    assert doc == {"count": 3}
    _, doc = await api.json("GET", api.blob_url(), params={"namespace": "other"})
    assert doc == ["x"]
    _, doc = await api.json("GET", api.blob_url(), params={"namespace": "empty"})
    assert doc == []


@pytest.mark.parametrize(
    "params",
    [{"order_by": "size"}, {"order_by": "DATE"}, {"only_count": "maybe"}, {"deleted": "2"},
     {"limit": "0"}, {"limit": "-1"}, {"limit": "x"}, {"namespace": ""},
     {"namespace": "a.b"}, {"namespace": "x" * 255},
     {"deleted": "true", "filter_flag": "PENDING"}],
)
async def test_listing_bad_params_is_400(api: Api, params: dict[str, str]) -> None:
    status, doc = await api.json("GET", api.blob_url(), params=params)
    assert status == 400, doc


async def test_repeated_param_is_400(api: Api) -> None:
    status, _ = await api.json("GET", api.blob_url() + "?namespace=a&namespace=b")
    assert status == 400


async def test_flags(api: Api) -> None:
    assert await api.put("m1", sealed("m1")) == 200
    assert await api.put("m2", sealed("m2")) == 200
    status, doc = await api.json("GET", api.blob_url("m1"), params={"only_flags": "true"})
    assert (status, doc) == (200, [])
    status, doc = await api.json("POST", api.blob_url("m1"), json=["PENDING"])
    assert status == 200
    _, doc = await api.json("GET", api.blob_url("m1"), params={"only_flags": "true"})
    assert doc == ["PENDING"]
    _, doc = await api.json("GET", api.blob_url(), params={"filter_flag": "PENDING"})
    assert doc == ["m1"]
    _, doc = await api.json("GET", api.blob_url(),
                            params={"filter_flag": "PENDING", "only_count": "true"})
    assert doc == {"count": 1}
    # expect: atomic reservation; the second device loses with 412
    status, _ = await api.json("POST", api.blob_url("m1"), params={"expect": "PENDING"},
                               json=["PROCESSING"])
    assert status == 200
    status, doc = await api.json("POST", api.blob_url("m1"), params={"expect": "PENDING"},
                                 json=["PROCESSING"])
    assert status == 412 and "error" in doc
    _, doc = await api.json("GET", api.blob_url("m1"), params={"only_flags": "true"})
    assert doc == ["PROCESSING"]
    status, _ = await api.json("POST", api.blob_url("m1"), json=["PROCESSED", "FAILED"])
    assert status == 200
    _, doc = await api.json("GET", api.blob_url("m1"), params={"only_flags": "true"})
    assert doc == ["FAILED", "PROCESSED"]
    status, _ = await api.json("POST", api.blob_url("m1"), json=[])
    assert status == 200
    _, doc = await api.json("GET", api.blob_url("m1"), params={"only_flags": "true"})
    assert doc == []


@pytest.mark.parametrize(
    ("params", "body", "status"),
    [
        ({}, b'["DONE"]', 406),
        ({}, b'["PENDING", "pending"]', 406),
        ({"expect": "WHATEVER"}, b'["PENDING"]', 406),
        ({}, b"not json", 400),
        ({}, b'{"flags": ["PENDING"]}', 400),
        ({}, b"[1, 2]", 400),
        ({}, b"", 400),
        ({}, b"[" + b'"PENDING",' * 1000 + b'"PENDING"]', 413),
    ],
)
async def test_flags_errors(api: Api, params: dict[str, str], body: bytes, status: int) -> None:
    assert await api.put("m1", sealed("m1")) == 200
    got, doc = await api.json("POST", api.blob_url("m1"), params=params, data=body)
    assert got == status and "error" in doc
    _, flags = await api.json("GET", api.blob_url("m1"), params={"only_flags": "true"})
    assert flags == []


async def test_flags_of_missing_blob(api: Api) -> None:
    status, _ = await api.json("POST", api.blob_url("none"), json=["PENDING"])
    assert status == 404
    status, _ = await api.json("GET", api.blob_url("none"), params={"only_flags": "true"})
    assert status == 404
    status, _ = await api.json("GET", api.blob_url(), params={"filter_flag": "NOPE"})
    assert status == 406


async def test_delete_and_tombstones(api: Api) -> None:
    for blob_id in ("d1", "d2", "d3"):
        assert await api.put(blob_id, sealed(blob_id)) == 200
    status, _ = await api.json("DELETE", api.blob_url("d2"))
    assert status == 200
    status, _ = await api.json("DELETE", api.blob_url("d1"))
    assert status == 200
    status, _ = await api.json("DELETE", api.blob_url("d1"))
    assert status == 404
    status, _ = await api.json("GET", api.blob_url("d1"))
    assert status == 404
    _, doc = await api.json("GET", api.blob_url())
    assert doc == ["d3"]
    _, doc = await api.json("GET", api.blob_url(), params={"deleted": "true"})
    assert doc == ["d2", "d1"]
    _, doc = await api.json("GET", api.blob_url(), params={"deleted": "true",
                                                           "order_by": "-date"})
    assert doc == ["d1", "d2"]
    _, doc = await api.json("GET", api.blob_url(), params={"deleted": "true",
                                                           "only_count": "true"})
    assert doc == {"count": 2}
    # Re-creating an id removes its tombstone, so no device replays the old deletion.
    assert await api.put("d1", sealed("d1")) == 200
    _, doc = await api.json("GET", api.blob_url(), params={"deleted": "true"})
    assert doc == ["d2"]


async def test_auth_statuses(api: Api) -> None:
    bob_token = await make_user(api.store, "bob")
    assert await api.put("b1", sealed("b1")) == 200
    urls = [("GET", api.blob_url()), ("GET", api.blob_url("b1")),
            ("PUT", api.blob_url("b2")), ("POST", api.blob_url("b1")),
            ("DELETE", api.blob_url("b1")),
            ("POST", f"{api.url}/stream/alice?direction=download")]
    bad_headers = [
        {},
        auth_header("alice", "wrong"),
        auth_header("nobody", api.token),
        {"Authorization": "Basic " + base64.b64encode(f"alice:{api.token}".encode()).decode()},
        {"Authorization": "Token garbage!"},
    ]
    for method, url in urls:
        for headers in bad_headers:
            async with api.session.request(method, url, headers=headers, data=b"[]") as r:
                assert r.status == 401, (method, url, headers)
                assert "error" in await r.json()
        async with api.session.request(method, url, headers=auth_header("bob", bob_token),
                                       data=b"[]") as r:
            assert r.status == 403, (method, url)
            assert "error" in await r.json()
    async with api.request("GET", api.blob_url("b1")) as r:
        assert r.status == 200  # nothing above touched it


async def test_new_token_replaces_old(api: Api) -> None:
    from blobsync.server.auth import hash_token

    await api.store.index.set_user_token("alice", hash_token("fresh"))
    status, _ = await api.json("GET", api.blob_url())
    assert status == 401
    async with api.session.get(api.blob_url(), headers=auth_header("alice", "fresh")) as r:
        assert r.status == 200


@pytest.mark.parametrize(
    "raw_path",
    [
        "/blobs/alice/..",
        "/blobs/alice/../bob",
        "/blobs/alice/%2e%2e",
        "/blobs/alice/a%2Fb",
        "/blobs/alice/a%2fb",
        "/blobs/alice%2Fx/b1",
        "/blobs/alice/a%5Cb",
        "/blobs/alice/a%00",
        "/blobs/alice/a.b",
        "/blobs/alice/" + "x" * 255,
        "/blobs/" + "u" * 255,
        "/blobs/" + "u" * 255 + "/b1",
        "/blobs/al%20ice/b1",
        "/blobs/alice/b1?namespace=..",
        "/blobs/alice/b1?namespace=a%2Fb",
        "/blobs/alice/b1?namespace=" + "n" * 255,
        "/stream/..?direction=download",
        "/stream/alice?direction=download&namespace=..",
    ],
)
async def test_bad_names_are_400(api: Api, raw_path: str) -> None:
    # Valid credentials and no credentials alike: names are checked before anything else.
    for headers in (api.auth, {}):
        for method in ("GET", "PUT", "POST", "DELETE"):
            resp = await raw_request(method, api.url, raw_path,
                                     {**headers, "Content-Length": "0"})
            if resp.status == 405:
                continue  # /stream has only POST
            assert resp.status == 400, (method, raw_path, resp.body)
            assert "error" in resp.json()
    status, doc = await api.json("GET", api.blob_url())
    assert doc == []


async def test_longest_names_are_fine(api: Api) -> None:
    longest = "z" * 254
    assert await api.put(longest, sealed(longest), namespace="n" * 254) == 200
    _, doc = await api.json("GET", api.blob_url(), params={"namespace": "n" * 254})
    assert doc == [longest]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"garbage",
        b"x" * 5000,
        sealed("other-id"),  # the preamble names another blob
        sealed("b1")[:700],  # cut inside the head
        sealed("b1")[:740],  # head, then nothing: shorter than a tag
        b"A" * 736 + b" " + b"x" * 100,  # base64 that is no preamble
    ],
)
async def test_malformed_put_is_400(api: Api, body: bytes) -> None:
    status, doc = await api.json("PUT", api.blob_url("b1"), data=body)
    assert status == 400 and "error" in doc
    status, _ = await api.json("GET", api.blob_url("b1"))
    assert status == 404
    _, doc = await api.json("GET", api.blob_url())
    assert doc == []


async def test_chunked_put_without_length(api: Api) -> None:
    blob = sealed("b1", 300_000)

    async def body():  # type: ignore[no-untyped-def]
        for i in range(0, len(blob), 7000):
            yield blob[i : i + 7000]

    async with api.request("PUT", api.blob_url("b1"), data=body()) as r:
        assert r.status == 200
    async with api.request("GET", api.blob_url("b1")) as r:
        assert await r.read() == blob


async def test_body_shorter_than_content_length_stores_nothing(api: Api) -> None:
    blob = sealed("b1", 1000)
    resp_task = asyncio.create_task(
        raw_request("PUT", api.url, "/blobs/alice/b1",
                    {**api.auth, "Content-Length": str(len(blob) + 10), "Connection": "close"},
                    blob)
    )
    # The server waits for 10 more bytes that never come: the client then gives up.
    done, _ = await asyncio.wait({resp_task}, timeout=0.3)
    assert not done
    resp_task.cancel()
    await asyncio.gather(resp_task, return_exceptions=True)
    await asyncio.sleep(0.1)
    status, _ = await api.json("GET", api.blob_url("b1"))
    assert status == 404
    assert await api.put("b1", blob) == 200  # and the id is free


# 1000: a row of the payload database (or memory, or S3); 600 kB: a file in the default
# store, which a GET sends with sendfile.
@pytest.mark.parametrize("plain_size", [1000, 600_000])
async def test_range_requests(api: Api, plain_size: int) -> None:
    blob = sealed("r1", plain_size)
    size = len(blob)
    assert await api.put("r1", blob) == 200
    cases = [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, size - 1),
        ("bytes=-16", size - 16, size - 1),
        (f"bytes=5-{size + 100_000}", 5, size - 1),
        ("bytes=70000-70099", 70_000, 70_099) if size > 70_100 else ("bytes=1-2", 1, 2),
        (f"bytes={size - 1}-{size - 1}", size - 1, size - 1),
    ]
    for header, start, end in cases:
        async with api.request("GET", api.blob_url("r1"), headers={"Range": header}) as r:
            assert r.status == 206, header
            assert r.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
            assert await r.read() == blob[start : end + 1]
            assert r.headers["Tag"] == b64url_encode(blob[-16:]).decode()
    for header in (f"bytes={size}-", "bytes=9-3", "bytes=-0", "bytes=0-1,5-6", "bytes=x-y"):
        async with api.request("GET", api.blob_url("r1"), headers={"Range": header}) as r:
            assert r.status == 416, header
            assert r.headers["Content-Range"] == f"bytes */{size}"
            assert "error" in await r.json()
    async with api.request("GET", api.blob_url("r1"), headers={"Range": "lines=1-2"}) as r:
        assert r.status == 200 and await r.read() == blob
    async with api.request("GET", api.blob_url("missing"), headers={"Range": "bytes=0-1"}) as r:
        assert r.status == 404


async def test_quota(make_api: MakeApi) -> None:
    one = sealed("q1", 1000)
    api = await make_api(quota=2 * len(one) + 10)
    assert await api.put("q1", one) == 200
    assert await api.put("q2", sealed("q2", 1000)) == 200
    status, doc = await api.json("PUT", api.blob_url("q3"), data=sealed("q3", 1000))
    assert status == 507 and "quota" in doc["error"]
    _, ids = await api.json("GET", api.blob_url(), params={"order_by": "date"})
    assert ids == ["q1", "q2"]
    assert (await api.json("DELETE", api.blob_url("q1")))[0] == 200
    assert await api.put("q3", sealed("q3", 1000)) == 200  # deleting freed the space


async def test_max_blob_size(make_api: MakeApi) -> None:
    api = await make_api(max_blob_size=5000)
    assert await api.put("ok", sealed("ok", 5000 - 753)) == 200
    status, doc = await api.json("PUT", api.blob_url("big"), data=sealed("big", 5000))
    assert status == 413 and "error" in doc
    big = sealed("big2", 20_000)

    async def chunked():  # type: ignore[no-untyped-def]
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    # Without Content-Length the limit is enforced while streaming.
    status, doc = await api.json("PUT", api.blob_url("big2"), data=chunked())
    assert status == 413
    # A declared length over the limit is refused before a body byte is read.
    resp = await raw_request("PUT", api.url, "/blobs/alice/big3",
                             {**api.auth, "Content-Length": str(10**12)})
    assert resp.status == 413 and "error" in resp.json()
    _, ids = await api.json("GET", api.blob_url())
    assert ids == ["ok"]


async def test_concurrent_puts_of_one_id(api: Api) -> None:
    bodies = [sealed("same", 50_000) for _ in range(8)]
    statuses = await asyncio.gather(*(api.put("same", b) for b in bodies))
    assert sorted(statuses) == [200] + [409] * 7
    async with api.request("GET", api.blob_url("same")) as r:
        stored = await r.read()
        assert r.status == 200, (r.status, stored)
    assert stored == bodies[statuses.index(200)]
    _, doc = await api.json("GET", api.blob_url(), params={"only_count": "true"})
    assert doc == {"count": 1}


async def test_unknown_route_and_method(api: Api) -> None:
    for path in ("/nope", "/blobs", "/blobs/", "/blobs/alice/b1/extra", "/incoming/alice/b1",
                 "/stream"):
        async with api.session.get(api.url + path, headers=api.auth) as r:
            assert r.status == 404, path
            assert "error" in await r.json()
    for method, path in (("PATCH", "/blobs/alice/b1"), ("PUT", "/blobs/alice"),
                         ("GET", "/stream/alice"), ("DELETE", "/"), ("HEAD", "/blobs/alice")):
        async with api.session.request(method, api.url + path, headers=api.auth) as r:
            assert r.status == 405, (method, path)
            assert "Allow" in r.headers
            if method != "HEAD":
                assert "error" in await r.json()


async def test_a_blob_sealed_elsewhere_can_be_read_back(api: Api) -> None:
    from blobsync.format import open_sealed

    blob = seal(SECRET, "note", b"hello world")
    assert await api.put("note", blob) == 200
    async with api.request("GET", api.blob_url("note")) as r:
        assert open_sealed(SECRET, "note", await r.read()) == b"hello world"


async def test_nothing_answers_500(api: Api) -> None:
    """A sweep of hostile requests: every answer is a 4xx with a JSON error body."""
    cases: list[tuple[str, str, dict[str, str], bytes]] = [
        ("GET", "/blobs/alice/b1?only_flags=nope", {}, b""),
        ("POST", "/blobs/alice/b1?expect=", {}, b"[]"),
        ("POST", "/stream/alice?direction=download", {}, b"\xff\xfe"),
        ("POST", "/stream/alice?direction=download", {}, b"[null]"),
        ("POST", "/stream/alice?direction=download", {}, b'"a1"'),
        ("POST", "/stream/alice?direction=upload", {}, b"\xff\n"),
        ("POST", "/stream/alice?direction=upload", {}, b'[["a", -1]]\n'),
        ("POST", "/stream/alice?direction=upload", {}, b'[["a", 1.5]]\n'),
        ("POST", "/stream/alice?direction=upload", {}, b'{"a": 1}\n'),
        ("POST", "/stream/alice?direction=sideways", {}, b""),
        ("PUT", "/blobs/alice/b1", {"Content-Type": "application/json"}, b"{}"),
        ("GET", "/blobs/alice/b1", {"Range": "bytes=99999999999999999999999-"}, b""),
    ]
    for method, path, headers, body in cases:
        async with api.request(method, api.url + path, headers=headers, data=body) as r:
            assert 400 <= r.status < 500, (method, path, r.status)
            assert "error" in await r.json(), (method, path)


async def test_connection_reuse_after_error(api: Api) -> None:
    # An early error closes the connection only when a body is left unread.
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for _ in range(3):
            async with s.get(api.blob_url("missing"), headers=api.auth) as r:
                assert r.status == 404
            async with s.get(api.blob_url(), headers=api.auth) as r:
                assert r.status == 200


async def test_a_payload_file_cut_short_cuts_the_response(api: Api) -> None:
    blob = sealed("big", 600_000)
    assert await api.put("big", blob) == 200
    info = await api.store.index.get_blob(api.user, "default", "big")
    file_path = getattr(api.store.payloads, "file_path", None)
    path = file_path(info.location) if info is not None and file_path is not None else None
    if path is None:
        pytest.skip("this backend keeps no payload files (sendfile is for files)")
    with open(path, "r+b") as f:
        f.truncate(100_000)
    async with api.request("GET", api.blob_url("big")) as r:
        assert r.status == 200 and r.content_length == len(blob)
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # never a short body passed off as the whole
    async with api.request("GET", api.blob_url("big"), headers={"Range": "bytes=0-999"}) as r:
        assert r.status == 206 and await r.read() == blob[:1000]  # what is there still is
