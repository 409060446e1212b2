"""/stream in both directions over real HTTP, on every backend (SPEC 3)."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from blobsync.format import (
    MAX_JSON_HEADER,
    BlobData,
    BlobStart,
    DownstreamReader,
    StreamEnd,
    encode_frame,
    encode_upstream_header,
)
from tests.helpers.rawhttp import head, open_raw, read_response

from .conftest import VECTORS, Api, MakeApi, sealed

SEALED_VECTORS = {v["blob_id"]: base64.b64decode(v["sealed_b64"]) for v in VECTORS["sealed"]}


def stream_url(api: Api, direction: str, namespace: str | None = None) -> str:
    url = f"{api.url}/stream/{api.user}?direction={direction}"
    return url + (f"&namespace={namespace}" if namespace else "")


async def download(api: Api, ids: list[str], namespace: str | None = None) -> tuple[int, bytes]:
    async with api.request("POST", stream_url(api, "download", namespace), json=ids) as r:
        return r.status, await r.read()


async def upload(api: Api, body: bytes, namespace: str | None = None) -> tuple[int, dict]:
    async with api.request("POST", stream_url(api, "upload", namespace), data=body) as r:
        return r.status, await r.json()


def upstream(blobs: dict[str, bytes]) -> bytes:
    header = encode_upstream_header([(i, len(b)) for i, b in blobs.items()])
    return header + b"".join(blobs.values())


async def test_download_vectors_byte_for_byte(api: Api) -> None:
    for blob_id, blob in SEALED_VECTORS.items():
        assert await api.put(blob_id, blob) == 200
    ids = json.loads(VECTORS["downstream"]["request_json"])
    async with api.request("POST", stream_url(api, "download"),
                           data=VECTORS["downstream"]["request_json"]) as r:
        assert r.status == 200
        body = await r.read()
    assert body == base64.b64decode(VECTORS["downstream"]["body_b64"])
    assert ids  # the vector asks for something


async def test_upload_vectors(api: Api) -> None:
    body = base64.b64decode(VECTORS["upstream"]["body_b64"])
    ids = [i for i, _ in json.loads(VECTORS["upstream"]["first_line"])]
    status, doc = await upload(api, body)
    assert (status, doc) == (200, {"stored": ids, "existing": []})
    for blob_id in ids:
        async with api.request("GET", api.blob_url(blob_id)) as r:
            assert await r.read() == SEALED_VECTORS[blob_id]
    status, doc = await upload(api, body)
    assert (status, doc) == (200, {"stored": [], "existing": ids})


async def test_roundtrip_many(api: Api) -> None:
    blobs = {f"s{i}": sealed(f"s{i}", i * 997) for i in range(40)}
    status, doc = await upload(api, upstream(blobs), namespace="ns1")
    assert status == 200 and doc["stored"] == list(blobs)
    ids = list(blobs)[::-1] + ["s3"]  # any order, repeats allowed
    status, body = await download(api, ids, namespace="ns1")
    assert status == 200
    assert body == b"".join(encode_frame(blobs[i]) for i in ids)
    reader = DownstreamReader(ids)
    reader.receive_data(body)
    reader.receive_data(b"")
    got: dict[int, bytearray] = {}
    while not isinstance(ev := reader.next_event(), StreamEnd):
        if isinstance(ev, BlobStart):
            got[ev.index] = bytearray()
        elif isinstance(ev, BlobData):
            got[ev.index] += ev.data
    assert [bytes(got[n]) for n in range(len(ids))] == [blobs[i] for i in ids]
    status, body = await download(api, ["s1"])  # other namespace
    assert status == 404


async def test_empty_streams(api: Api) -> None:
    assert await download(api, []) == (200, b"")
    assert await upload(api, b"[]\n") == (200, {"stored": [], "existing": []})


async def test_download_missing_is_404_before_any_byte(api: Api) -> None:
    assert await api.put("here", sealed("here")) == 200
    async with api.request("POST", stream_url(api, "download"),
                           json=["here", "gone1", "here", "gone2", "gone1"]) as r:
        assert r.status == 404
        doc = await r.json()
    assert doc["missing"] == ["gone1", "gone2"] and "error" in doc


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"not json", 400),
        (b'{"ids": ["a"]}', 400),
        (b'["ok", 3]', 400),
        (b'["../x"]', 400),
        (b'["' + b"x" * 255 + b'"]', 400),
        (b"[" + b'"abcdefgh",' * (MAX_JSON_HEADER // 11) + b'"x"]', 413),
    ],
)
async def test_download_bad_requests(api: Api, body: bytes, status: int) -> None:
    async with api.request("POST", stream_url(api, "download"), data=body) as r:
        assert r.status == status
        assert "error" in await r.json()


@pytest.mark.parametrize("direction", ["", "sideways", "DOWNLOAD", None])
async def test_bad_direction_is_400(api: Api, direction: str | None) -> None:
    url = f"{api.url}/stream/alice" + ("" if direction is None else f"?direction={direction}")
    async with api.request("POST", url, data=b"[]") as r:
        assert r.status == 400
        assert "direction" in (await r.json())["error"]


async def test_upload_existing_in_the_middle(api: Api) -> None:
    blobs = {f"e{i}": sealed(f"e{i}", 70_000) for i in range(3)}
    assert await api.put("e1", blobs["e1"]) == 200
    status, doc = await upload(api, upstream(blobs))
    # e1's bytes were skipped, and e2 after it still arrived whole.
    assert (status, doc) == (200, {"stored": ["e0", "e2"], "existing": ["e1"]})
    _, body = await download(api, ["e0", "e1", "e2"])
    assert body == b"".join(encode_frame(blobs[i]) for i in ("e0", "e1", "e2"))


async def _ids(api: Api) -> list[str]:
    _, ids = await api.json("GET", api.blob_url(), params={"order_by": "date"})
    return ids


async def test_upload_short_body_keeps_complete_blobs(api: Api) -> None:
    blobs = {"k0": sealed("k0", 5000), "k1": sealed("k1", 5000), "k2": sealed("k2", 5000)}
    body = upstream(blobs)
    status, doc = await upload(api, body[:-2000])  # cut inside k2
    assert status == 400
    assert doc["blob_id"] == "k2" and "k2" in doc["error"]
    assert doc["stored"] == ["k0", "k1"]
    assert await _ids(api) == ["k0", "k1"]


@pytest.mark.parametrize("where", ["preamble", "other-id"])
async def test_upload_malformed_blob_is_named(api: Api, where: str) -> None:
    good = sealed("m0", 3000)
    bad = b"X" * 3000 if where == "preamble" else sealed("not-m1", 2247)
    after = sealed("m2", 3000)
    status, doc = await upload(api, upstream({"m0": good, "m1": bad, "m2": after}))
    assert status == 400
    assert doc["blob_id"] == "m1" and doc["stored"] == ["m0"]
    assert await _ids(api) == ["m0"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",  # no newline: the header never ends
        b"not json\n",
        b'[["a", 10]]\n' + b"x" * 5,
        b'[["a", 10], ["a", 10]]\n',
        b'[["a"]]\n',
        b'[["a/b", 1]]\n',
        b"[]\ntrailing",
        b"\n",
    ],
)
async def test_upload_malformed_stream_is_400(api: Api, body: bytes) -> None:
    status, doc = await upload(api, body)
    assert status == 400 and "error" in doc
    assert await _ids(api) == []


async def test_upload_trailing_garbage_after_good_blobs(api: Api) -> None:
    status, doc = await upload(api, upstream({"t0": sealed("t0")}) + b"junk")
    assert status == 400 and doc["stored"] == ["t0"]


async def test_upload_header_too_long_is_413(api: Api) -> None:
    body = b"[" + b" " * MAX_JSON_HEADER + b"]\n"
    status, doc = await upload(api, body)
    assert status == 413 and "error" in doc


async def test_stream_limits(make_api: MakeApi) -> None:
    api = await make_api(max_blob_size=4000, max_stream_size=10_000)
    status, _ = await upload(api, upstream({"a": sealed("a", 4000)}))
    assert status == 413  # one blob over the blob limit, seen in the header
    blobs = {f"b{i}": sealed(f"b{i}", 3000) for i in range(3)}
    status, _ = await upload(api, upstream(blobs))
    assert status == 413  # the whole stream over its limit
    assert await _ids(api) == []
    status, doc = await upload(api, upstream({"c": sealed("c", 3000)}))
    assert (status, doc["stored"]) == (200, ["c"])


async def test_upload_quota_from_header_before_body(make_api: MakeApi) -> None:
    api = await make_api(quota=20_000)
    blobs = {"q0": sealed("q0", 9000), "q1": sealed("q1", 9000), "q2": sealed("q2", 9000)}
    header = encode_upstream_header([(i, len(b)) for i, b in blobs.items()])
    # Only the header is sent, with a Content-Length promising the blobs: the answer must
    # come without the body, so the check cannot have read it.
    reader, writer = await open_raw(api.url)
    try:
        total = len(header) + sum(len(b) for b in blobs.values())
        writer.write(head("POST", api.url, "/stream/alice?direction=upload",
                          {**api.auth, "Content-Length": str(total)}) + header)
        await writer.drain()
        resp = await read_response(reader)
    finally:
        writer.close()
    assert resp.status == 507 and "quota" in resp.json()["error"]
    assert await _ids(api) == []
    # Blobs already stored do not count twice.
    assert await api.put("q0", blobs["q0"]) == 200
    status, doc = await upload(api, upstream({"q0": blobs["q0"], "q1": blobs["q1"]}))
    assert (status, doc) == (200, {"stored": ["q1"], "existing": ["q0"]})


async def test_download_cut_when_a_blob_vanishes(api: Api) -> None:
    big = sealed("big", 32 << 20)  # far more than socket buffers hold
    assert await api.put("big", big) == 200
    assert await api.put("small", sealed("small")) == 200
    got = 0
    async with api.request("POST", stream_url(api, "download"), json=["big", "small"]) as r:
        assert r.status == 200
        declared = int(r.headers["Content-Length"])
        got += len(await r.content.readexactly(1000))
        # The server is blocked writing "big"; "small" goes away before its turn.
        status, _ = await api.json("DELETE", api.blob_url("small"))
        assert status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            while chunk := await r.content.read(1 << 16):
                got += len(chunk)
    assert got < declared


async def test_upload_dropped_connection_keeps_earlier_blobs(api: Api) -> None:
    blobs = {"d0": sealed("d0", 2000), "d1": sealed("d1", 200_000)}
    body = upstream(blobs)
    reader, writer = await open_raw(api.url)
    writer.write(head("POST", api.url, "/stream/alice?direction=upload",
                      {**api.auth, "Content-Length": str(len(body))}) + body[:-100_000])
    await writer.drain()
    for _ in range(100):  # until d0 is in
        if await _ids(api) == ["d0"]:
            break
        await asyncio.sleep(0.02)
    writer.transport.abort()
    await asyncio.sleep(0.2)
    assert await _ids(api) == ["d0"]
    status, doc = await upload(api, body)  # the client retries: d1 is stored now
    assert (status, doc) == (200, {"stored": ["d1"], "existing": ["d0"]})
