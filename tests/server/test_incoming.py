"""The incoming box on the local port (SPEC 6), and the round a device runs over it."""

from __future__ import annotations

import base64

import pytest

from blobsync.format import Preamble, Scheme, b64url_decode, parse_sealed_head
from tests.helpers.rawhttp import raw_request
from tests.helpers.servers import auth_header, make_service

from .conftest import VECTORS, Api, MakeApi

PAYLOAD = base64.b64decode(VECTORS["external"]["payload_b64"])


def incoming_url(api: Api, uuid: str, blob_id: str) -> str:
    return f"{api.server.local_url}/incoming/{uuid}/{blob_id}"


async def deliver(api: Api, token: str, blob_id: str, body: bytes = PAYLOAD,
                  uuid: str = "alice", service: str = "incoming") -> tuple[int, dict]:
    async with api.session.put(incoming_url(api, uuid, blob_id), data=body,
                               headers=auth_header(service, token)) as r:
        return r.status, await r.json()


async def test_delivery_is_sealed_external_pending_in_mx(api: Api) -> None:
    token = await make_service(api.store)
    blob_id = VECTORS["external"]["blob_id"]
    status, doc = await deliver(api, token, blob_id)
    assert status == 200 and doc["blob_id"] == blob_id
    async with api.request("GET", api.blob_url(blob_id), params={"namespace": "MX"}) as r:
        assert r.status == 200
        stored = await r.read()
    expected = base64.b64decode(VECTORS["external"]["sealed_b64"])
    head = parse_sealed_head(stored)
    assert head is not None
    pre = head.preamble
    assert (pre.scheme, pre.rev, pre.blob_id, pre.content_size, pre.iv) == (
        Scheme.EXTERNAL, "0", blob_id, len(PAYLOAD), bytes(16))
    assert stored[head.size :] == PAYLOAD
    # Byte for byte the vector, once the vector's timestamp is put in.
    vector_pre = Preamble.decode(b64url_decode(expected[:736]))
    assert pre == Preamble(vector_pre.scheme, vector_pre.method, pre.timestamp, vector_pre.iv,
                           vector_pre.blob_id, vector_pre.rev, vector_pre.content_size)
    _, flags = await api.json("GET", api.blob_url(blob_id),
                              params={"namespace": "MX", "only_flags": "true"})
    assert flags == ["PENDING"]
    _, ids = await api.json("GET", api.blob_url(), params={"namespace": "MX",
                                                           "filter_flag": "PENDING"})
    assert ids == [blob_id]
    _, ids = await api.json("GET", api.blob_url())
    assert ids == []  # not in the default namespace


async def test_incoming_round(api: Api) -> None:
    """SPEC 6: list PENDING oldest first, reserve with expect, process, flag, delete."""
    token = await make_service(api.store)
    for i in range(3):
        assert (await deliver(api, token, f"msg{i}", PAYLOAD + bytes([i])))[0] == 200
    _, pending = await api.json("GET", api.blob_url(), params={
        "namespace": "MX", "filter_flag": "PENDING", "order_by": "date", "limit": "2"})
    assert pending == ["msg0", "msg1"]
    for blob_id in pending:
        url = api.blob_url(blob_id)
        mx = {"namespace": "MX"}
        status, _ = await api.json("POST", url, params={**mx, "expect": "PENDING"},
                                   json=["PROCESSING"])
        assert status == 200
        # a second device tries the same message: it is taken
        status, _ = await api.json("POST", url, params={**mx, "expect": "PENDING"},
                                   json=["PROCESSING"])
        assert status == 412
        async with api.request("GET", url, params=mx) as r:
            assert (await r.read()).endswith(PAYLOAD + bytes([int(blob_id[-1])]))
        assert (await api.json("POST", url, params=mx, json=["PROCESSED"]))[0] == 200
        assert (await api.json("DELETE", url, params=mx))[0] == 200
    _, left = await api.json("GET", api.blob_url(), params={"namespace": "MX",
                                                            "filter_flag": "PENDING"})
    assert left == ["msg2"]


async def test_incoming_statuses(api: Api) -> None:
    token = await make_service(api.store)
    other = await make_service(api.store, "other")
    assert (await deliver(api, token, "m1"))[0] == 200
    status, doc = await deliver(api, token, "m1")
    assert status == 409 and "error" in doc
    assert (await deliver(api, "wrong", "m2"))[0] == 401
    assert (await deliver(api, token, "m2", service="nosuch"))[0] == 401
    assert (await deliver(api, api.token, "m2", service="alice"))[0] == 401  # a user is no service
    assert (await deliver(api, other, "m2", service="other"))[0] == 403
    assert (await deliver(api, token, "m2", uuid="nobody"))[0] == 404
    async with api.session.put(incoming_url(api, "alice", "m2"), data=PAYLOAD) as r:
        assert r.status == 401
    _, ids = await api.json("GET", api.blob_url(), params={"namespace": "MX"})
    assert ids == ["m1"]


async def test_incoming_needs_content_length(api: Api) -> None:
    token = await make_service(api.store)

    async def chunked():  # type: ignore[no-untyped-def]
        yield PAYLOAD

    async with api.session.put(incoming_url(api, "alice", "m1"), data=chunked(),
                               headers=auth_header("incoming", token)) as r:
        assert r.status == 411
        assert "Content-Length" in (await r.json())["error"]


@pytest.mark.parametrize("raw_path", ["/incoming/alice/..", "/incoming/alice/a%2Fb",
                                      "/incoming/al.ice/m1", "/incoming/alice/" + "x" * 255])
async def test_incoming_bad_names(api: Api, raw_path: str) -> None:
    token = await make_service(api.store)
    resp = await raw_request("PUT", api.server.local_url, raw_path,
                             {**auth_header("incoming", token), "Content-Length": "3"}, b"abc")
    assert resp.status == 400 and "error" in resp.json()


async def test_incoming_quota_and_size(make_api: MakeApi) -> None:
    api = await make_api(quota=3000, max_blob_size=2500)
    token = await make_service(api.store)
    assert (await deliver(api, token, "m1", b"x" * 1000))[0] == 200
    assert (await deliver(api, token, "m2", b"x" * 2000))[0] == 413  # 737 + 2000 > 2500
    assert (await deliver(api, token, "m3", b"x" * 1500))[0] == 507  # 1737 + 2237 > 3000
    _, ids = await api.json("GET", api.blob_url(), params={"namespace": "MX"})
    assert ids == ["m1"]


async def test_incoming_is_not_on_the_public_port(api: Api) -> None:
    token = await make_service(api.store)
    async with api.session.put(f"{api.url}/incoming/alice/m1", data=PAYLOAD,
                               headers=auth_header("incoming", token)) as r:
        assert r.status == 404
    async with api.session.get(f"{api.server.local_url}/blobs/alice", headers=api.auth) as r:
        assert r.status == 404
