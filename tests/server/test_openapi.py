"""GET /openapi.json describes the public app exactly, and every status it documents happens."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from blobsync.format import encode_upstream_header
from blobsync.server.app import make_public_app
from blobsync.server.config import ServerConfig
from blobsync.server.openapi import build_openapi
from blobsync.server.storage.factory import make_store
from tests.helpers.servers import auth_header, make_user

from .conftest import Api, MakeApi, sealed

# SPEC 4's statuses, and 410 of the change feed (SPEC 8).
SPEC_STATUSES = {200, 206, 400, 401, 403, 404, 406, 409, 410, 412, 413, 416, 507}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def documented() -> dict[str, set[str]]:
    doc = build_openapi()
    return {path: {m for m in item if m in METHODS} for path, item in doc["paths"].items()}


def routed() -> dict[str, set[str]]:
    app = make_public_app(make_store("/nonexistent", "memory:", "memory:"), ServerConfig())
    out: dict[str, set[str]] = {}
    for route in app.router.routes():
        path = route.resource.canonical  # type: ignore[union-attr]
        out.setdefault(path, set()).add(route.method.lower())
    return out


def test_document_matches_router() -> None:
    assert documented() == routed()


def test_document_shape() -> None:
    doc = build_openapi()
    assert doc["openapi"].startswith("3.")
    statuses = set()
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        params = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert names == params, path
        for method in set(item) & METHODS:
            responses = item[method]["responses"]
            assert "200" in responses
            statuses |= {int(s) for s in responses}
            for status, resp in responses.items():
                if int(status) >= 400:
                    assert resp["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}
    assert statuses == SPEC_STATUSES  # every status SPEC 4 names, and no other


async def test_served_document(api: Api) -> None:
    async with api.session.get(api.url + "/openapi.json") as r:
        assert r.status == 200
        assert await r.json() == build_openapi()


# For every documented (method, path, status): a request that gets exactly that status.
Scenario = Callable[[Api], Awaitable[int]]


async def _status(api: Api, method: str, url: str, *, auth: dict[str, str] | None = None,
                  **kwargs: Any) -> int:
    headers = {**(api.auth if auth is None else auth), **kwargs.pop("headers", {})}
    async with api.session.request(method, api.url + url, headers=headers, **kwargs) as r:
        await r.read()
        return r.status


async def _with_blob(api: Api, blob_id: str = "b1") -> None:
    assert await api.put(blob_id, sealed(blob_id)) == 200


async def _bob(api: Api) -> dict[str, str]:
    return auth_header("bob", await make_user(api.store, "bob"))


def _common(method: str, path: str, body: Any = None) -> dict[int, Scenario]:
    """401, 403 and 400 the same way on every authenticated route."""
    kw = {} if body is None else {"data": body}

    async def s401(api: Api) -> int:
        return await _status(api, method, path, auth={}, **kw)

    async def s403(api: Api) -> int:
        return await _status(api, method, path, auth=await _bob(api), **kw)

    async def s400(api: Api) -> int:
        bad = path.replace("/alice", "/al.ice")
        return await _status(api, method, bad, **kw)

    return {401: s401, 403: s403, 400: s400}


def _scenarios() -> dict[tuple[str, str, int], Scenario]:
    out: dict[tuple[str, str, int], Scenario] = {}

    def add(method: str, template: str, status: int, fn: Scenario) -> None:
        out[(method, template, status)] = fn

    add("get", "/", 200, lambda api: _status(api, "GET", "/", auth={}))
    add("get", "/openapi.json", 200, lambda api: _status(api, "GET", "/openapi.json", auth={}))

    t = "/blobs/{uuid}"
    for status, fn in _common("GET", "/blobs/alice").items():
        add("get", t, status, fn)
    add("get", t, 200, lambda api: _status(api, "GET", "/blobs/alice"))
    add("get", t, 406, lambda api: _status(api, "GET", "/blobs/alice?filter_flag=X"))

    t = "/blobs/{uuid}/{blob_id}"
    for status, fn in _common("GET", "/blobs/alice/b1").items():
        add("get", t, status, fn)

    async def get_ok(api: Api) -> int:
        await _with_blob(api)
        return await _status(api, "GET", "/blobs/alice/b1")

    async def get_206(api: Api) -> int:
        await _with_blob(api)
        return await _status(api, "GET", "/blobs/alice/b1", headers={"Range": "bytes=0-9"})

    async def get_416(api: Api) -> int:
        await _with_blob(api)
        return await _status(api, "GET", "/blobs/alice/b1", headers={"Range": "bytes=99999-"})

    add("get", t, 200, get_ok)
    add("get", t, 206, get_206)
    add("get", t, 404, lambda api: _status(api, "GET", "/blobs/alice/none"))
    add("get", t, 416, get_416)

    body = sealed("b1")
    for status, fn in _common("PUT", "/blobs/alice/b1", body).items():
        add("put", t, status, fn)
    add("put", t, 200, lambda api: _status(api, "PUT", "/blobs/alice/b1", data=body))

    async def put_409(api: Api) -> int:
        await _with_blob(api)
        return await _status(api, "PUT", "/blobs/alice/b1", data=sealed("b1"))

    async def put_413(api: Api) -> int:
        api.store.max_blob_size = 1000
        return await _status(api, "PUT", "/blobs/alice/b1", data=sealed("b1", 1000))

    async def put_507(api: Api) -> int:
        api.store.quota = 1000
        return await _status(api, "PUT", "/blobs/alice/b1", data=sealed("b1", 1000))

    add("put", t, 409, put_409)
    add("put", t, 413, put_413)
    add("put", t, 507, put_507)

    for status, fn in _common("POST", "/blobs/alice/b1", b'["PENDING"]').items():
        add("post", t, status, fn)

    def post_with_blob(url: str, data: bytes) -> Scenario:
        async def run(api: Api) -> int:
            await _with_blob(api)
            return await _status(api, "POST", url, data=data)
        return run

    add("post", t, 200, post_with_blob("/blobs/alice/b1", b'["PENDING"]'))
    add("post", t, 404, lambda api: _status(api, "POST", "/blobs/alice/x", data=b"[]"))
    add("post", t, 406, post_with_blob("/blobs/alice/b1", b'["X"]'))
    add("post", t, 412, post_with_blob("/blobs/alice/b1?expect=PENDING", b"[]"))
    add("post", t, 413, post_with_blob("/blobs/alice/b1", b"[" + b" " * 5000 + b"]"))

    for status, fn in _common("DELETE", "/blobs/alice/b1").items():
        add("delete", t, status, fn)

    async def delete_ok(api: Api) -> int:
        await _with_blob(api)
        return await _status(api, "DELETE", "/blobs/alice/b1")

    add("delete", t, 200, delete_ok)
    add("delete", t, 404, lambda api: _status(api, "DELETE", "/blobs/alice/b1"))

    t = "/stream/{uuid}"
    down = "/stream/alice?direction=download"
    up = "/stream/alice?direction=upload"
    for status, fn in _common("POST", down, b"[]").items():
        add("post", t, status, fn)
    add("post", t, 200, lambda api: _status(api, "POST", down, data=b"[]"))
    add("post", t, 404, lambda api: _status(api, "POST", down, data=b'["none"]'))
    add("post", t, 413, lambda api: _status(api, "POST", up,
                                            data=b"[" + b" " * (1 << 20) + b"]\n"))

    async def stream_507(api: Api) -> int:
        api.store.quota = 100
        return await _status(api, "POST", up, data=encode_upstream_header([("a", 200)]))

    add("post", t, 507, stream_507)

    t = "/changes/{uuid}"
    for status, fn in _common("GET", "/changes/alice").items():
        add("get", t, status, fn)
    add("get", t, 200, lambda api: _status(api, "GET", "/changes/alice?timeout=0"))
    add("get", t, 410, lambda api: _status(api, "GET", "/changes/alice?since=nonsense"))
    return out


SCENARIOS = _scenarios()


def test_every_documented_status_has_a_scenario() -> None:
    doc = build_openapi()
    wanted = {
        (method, path, int(status))
        for path, item in doc["paths"].items()
        for method in set(item) & METHODS
        for status in item[method]["responses"]
    }
    assert wanted == set(SCENARIOS)


# The document is about routes, not backends: one backend is enough here.
@pytest.mark.parametrize("backend", ["memory"])
@pytest.mark.parametrize("key", list(SCENARIOS), ids=lambda k: f"{k[0]} {k[1]} {k[2]}")
async def test_documented_status_happens(make_api: MakeApi, key: tuple[str, str, int]) -> None:
    api = await make_api()
    assert await SCENARIOS[key](api) == key[2]
