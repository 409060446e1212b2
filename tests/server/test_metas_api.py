"""SPEC 11 on the server's wire: a blob's sealed meta goes up as ``Blob-Meta`` or a stream
pair's third element, comes down as ``Blob-Meta``, in ``with_meta=true`` listings and in
put changes; malformed ones are refused before the body; a full stream of the longest
metas fits the header limit; a meta never reaches a log. Every backend of conftest."""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from typing import Any

import pytest

from blobsync.format import b64url_encode, encode_upstream_header
from blobsync.format.limits import (
    MAX_JSON_HEADER,
    MAX_META_LENGTH,
    MAX_STREAM_BLOBS,
    MAX_UPSTREAM_HEADER,
)
from tests.helpers.net import free_port
from tests.helpers.server_cli import ok_token
from tests.helpers.subproc import ServerProcess, blobsync, new_data_dir

from .conftest import Api, MakeApi, sealed


def meta(n: int = 100, seed: bytes | None = None) -> str:
    """A well-formed meta of ``n`` characters (n a multiple of 4): what a server checks."""
    return b64url_encode(seed or os.urandom(n // 4 * 3)).decode("ascii")


async def put_with(api: Api, blob_id: str, body: bytes, text: str | None) -> tuple[int, Any]:
    headers = {} if text is None else {"Blob-Meta": text}
    async with api.request("PUT", api.blob_url(blob_id), data=body, headers=headers) as r:
        return r.status, await r.json()


async def upload(api: Api, body: bytes, **query: str) -> tuple[int, dict]:
    url = f"{api.url}/stream/{api.user}?direction=upload"
    async with api.request("POST", url, data=body, params=query) as r:
        return r.status, await r.json()


async def listing(api: Api, **query: str) -> Any:
    async with api.request("GET", api.blob_url(), params=query) as r:
        assert r.status == 200
        return await r.json()


async def feed(api: Api, events: bool = False) -> list[dict[str, Any]]:
    url = f"{api.url}/changes/{api.user}"
    if not events:
        async with api.request("GET", url) as r:
            return (await r.json())["changes"]
    out: list[dict[str, Any]] = []
    async with api.request("GET", url, headers={"Accept": "text/event-stream"}) as r:
        while len(out) < 3:
            line = (await r.content.readline()).decode()
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


async def test_meta_up_and_down(api: Api) -> None:
    m1, m2 = meta(100), meta(MAX_META_LENGTH)
    async with api.request("GET", api.url + "/") as r:
        info = await r.json()
    assert "meta" in info["extensions"] and info["limits"]["max_meta_length"] == 4096
    assert (await put_with(api, "p1", sealed("p1"), m1))[0] == 200
    assert (await put_with(api, "p0", sealed("p0"), None))[0] == 200
    blobs = {"s1": sealed("s1"), "s2": sealed("s2", 300_000), "s3": sealed("s3")}
    header = encode_upstream_header([("s1", len(blobs["s1"]), m2),
                                     ("s2", len(blobs["s2"]), m1), ("s3", len(blobs["s3"]))])
    status, doc = await upload(api, header + b"".join(blobs.values()))
    assert (status, doc["stored"]) == (200, ["s1", "s2", "s3"])
    # GET, and a range of it, say the meta; a blob without one has no header.
    async with api.request("GET", api.blob_url("p1")) as r:
        assert r.status == 200 and r.headers["Blob-Meta"] == m1
    async with api.request("GET", api.blob_url("s1"), headers={"Range": "bytes=0-9"}) as r:
        assert r.status == 206 and r.headers["Blob-Meta"] == m2
    async with api.request("GET", api.blob_url("p0")) as r:
        assert r.status == 200 and "Blob-Meta" not in r.headers
    # Listings: plain ids unless asked; with_meta in any order and filter.
    assert await listing(api, order_by="date") == ["p1", "p0", "s1", "s2", "s3"]
    rows = await listing(api, with_meta="true", order_by="date")
    assert rows == [
        {"blob_id": "p1", "size": len(sealed("p1")), "meta": m1},
        {"blob_id": "p0", "size": len(sealed("p0")), "meta": None},
        {"blob_id": "s1", "size": len(blobs["s1"]), "meta": m2},
        {"blob_id": "s2", "size": len(blobs["s2"]), "meta": m1},
        {"blob_id": "s3", "size": len(blobs["s3"]), "meta": None},
    ]
    assert [r["blob_id"] for r in await listing(api, with_meta="true", order_by="-date")] == [
        "s3", "s2", "s1", "p0", "p1"]
    async with api.request("POST", api.blob_url("p0"), json=["PENDING"]) as r:
        assert r.status == 200
    assert await listing(api, with_meta="true", filter_flag="PENDING") == [
        {"blob_id": "p0", "size": len(sealed("p0")), "meta": None}]
    # Counts and tombstones are what they were: with_meta changes lists of blobs only.
    assert await listing(api, with_meta="true", only_count="true") == {"count": 5}
    assert await listing(api, with_meta="true", deleted="true") == []
    # The feed's put changes carry it, as JSON and as events.
    for events in (False, True):
        puts = [c for c in await feed(api, events) if c["op"] == "put"][:3]
        assert [(c["blob_id"], c.get("meta")) for c in puts] == [
            ("p1", m1), ("p0", None), ("s1", m2)]
        assert "meta" not in puts[1]


@pytest.mark.parametrize(("text", "status"), [
    ("not base64!", 400),
    ("AAAA", 400),  # shorter than an iv and a tag
    (meta(MAX_META_LENGTH) + "AAAA", 413),
])
async def test_a_bad_meta_is_refused_before_the_body(api: Api, text: str, status: int) -> None:
    got, doc = await put_with(api, "b", sealed("b"), text)
    assert got == status and "error" in doc and text not in doc["error"]
    assert await listing(api) == []
    header = encode_upstream_header([("ok", len(sealed("ok")), meta()),
                                     ("b", len(sealed("b")), text)])
    got, doc = await upload(api, header + sealed("ok") + sealed("b"))
    assert got == status and doc["blob_id"] == "b" and text not in doc["error"]
    assert await listing(api) == []  # refused with the header, before any body


async def test_stream_pairs_with_and_without_meta(api: Api) -> None:
    a, b, c = sealed("a"), sealed("b"), sealed("c")
    line = json.dumps([["a", len(a)], ["b", len(b), None], ["c", len(c), meta(40)]])
    status, doc = await upload(api, line.encode() + b"\n" + a + b + c)
    assert (status, doc["stored"]) == (200, ["a", "b", "c"])
    rows = await listing(api, with_meta="true", order_by="date")
    assert [r["meta"] is None for r in rows] == [True, True, False]
    for bad in (["d", 1, 5], ["d", 1, "x", "y"], ["d", 1, {"meta": "x"}]):
        status, doc = await upload(api, json.dumps([bad]).encode() + b"\n" + b"x")
        assert status == 400, bad


async def test_a_full_stream_of_the_longest_metas_fits_the_header(api: Api) -> None:
    """MAX_STREAM_BLOBS blobs with metas of MAX_META_LENGTH: a header of exactly
    MAX_UPSTREAM_HEADER bytes goes in; one byte more is 413."""
    blobs = [(f"b{i:04d}", sealed(f"b{i:04d}", 10)) for i in range(MAX_STREAM_BLOBS)]
    text = meta(MAX_META_LENGTH)
    line = encode_upstream_header([(b, len(d), text) for b, d in blobs])[:-1]
    assert len(line) < MAX_UPSTREAM_HEADER
    body = b"".join(d for _, d in blobs)
    full = line[:-1] + b" " * (MAX_UPSTREAM_HEADER - len(line)) + b"]"
    assert len(full) == MAX_UPSTREAM_HEADER
    assert len(full) - MAX_STREAM_BLOBS * MAX_META_LENGTH == MAX_JSON_HEADER
    status, doc = await upload(api, full[:-1] + b" ]\n" + body)
    assert status == 413 and "error" in doc
    assert await listing(api) == []
    status, doc = await upload(api, full + b"\n" + body)
    assert status == 200 and len(doc["stored"]) == MAX_STREAM_BLOBS
    # The rest of the line (ids, sizes, spaces) stays within MAX_JSON_HEADER as before.
    padded = b"[" + b" " * (MAX_JSON_HEADER + 10) + b"]\n"
    assert (await upload(api, padded))[0] == 413


async def test_a_server_without_the_extension(make_api: MakeApi) -> None:
    api = await make_api(settings={"meta_extension": False})
    async with api.request("GET", api.url + "/") as r:
        info = await r.json()
    assert "meta" not in info["extensions"] and "max_meta_length" not in info["limits"]
    assert (await put_with(api, "p", sealed("p"), meta()))[0] == 200  # an unknown header
    async with api.request("GET", api.blob_url("p")) as r:
        assert r.status == 200 and "Blob-Meta" not in r.headers
    assert await listing(api, with_meta="true") == ["p"]
    assert "meta" not in (await feed(api))[0]
    header = encode_upstream_header([("s", len(sealed("s")), meta())])
    assert (await upload(api, header + sealed("s")))[0] == 400  # a pair of three: v1 refuses


def test_a_meta_never_reaches_the_log(tmp_path: Any) -> None:
    """A server at debug level: PUT, stream, GET, listing and feed with metas, and the
    refusals of malformed ones; its whole log holds none of them."""
    data = new_data_dir(tmp_path / "data")
    token = ok_token(blobsync("user", "add", "alice", "--data", data))
    port, local_port = free_port(), free_port()
    server = ServerProcess("--data", data, "--port", str(port), "--local-port",
                           str(local_port), "--log-level", "debug")
    url = f"http://127.0.0.1:{port}"
    auth = "Token " + base64.b64encode(f"alice:{token}".encode()).decode()
    texts = [meta(100), meta(MAX_META_LENGTH), "bad meta " + "Q" * 40, meta(200) + "Z" * 5000]

    def call(method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> int:
        req = urllib.request.Request(url + path, data=body, method=method,
                                     headers={"Authorization": auth, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
                return int(r.status)
        except urllib.error.HTTPError as e:
            e.read()
            return int(e.code)

    try:
        assert call("PUT", "/blobs/alice/p", sealed("p"), {"Blob-Meta": texts[0]}) == 200
        assert call("PUT", "/blobs/alice/q", sealed("q"), {"Blob-Meta": texts[2]}) == 400
        assert call("PUT", "/blobs/alice/q", sealed("q"), {"Blob-Meta": texts[3]}) == 413
        s = sealed("s")
        head = encode_upstream_header([("s", len(s), texts[1])])
        assert call("POST", "/stream/alice?direction=upload", head + s) == 200
        bad = encode_upstream_header([("t", len(s), texts[2])])
        assert call("POST", "/stream/alice?direction=upload", bad + s) == 400
        bad = json.dumps([["t", len(s), texts[0], "extra"]]).encode() + b"\n"
        assert call("POST", "/stream/alice?direction=upload", bad + s) == 400
        assert call("GET", "/blobs/alice/p") == 200
        assert call("GET", "/blobs/alice?with_meta=true") == 200
        assert call("GET", "/changes/alice") == 200
        server.wait_for_log("GET /changes/alice 200")
    finally:
        code = server.terminate()
    assert code == 0
    log = server.log
    assert "PUT /blobs/alice/p 200" in log and "Traceback" not in log
    for text in texts:
        assert text not in log
        assert text[:60] not in log
