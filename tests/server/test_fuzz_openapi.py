"""Schemathesis over the server's own OpenAPI document, against a real server on loopback.

The rule it holds: whatever a client sends within (or just outside) the document, the answer
is never a 5xx, every error is JSON ``{"error": "<string>"}``, and answers conform to the
document (status, content type, body schema). Generation is derandomized and bounded so the
run is the same every time and short.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from blobsync.format import seal
from blobsync.format.limits import valid_id
from blobsync.server.openapi import build_openapi
from blobsync.server.routes_changes import MAX_CHANGES_TIMEOUT
from tests.helpers.servers import RunningServer, auth_header, make_user, start_server

T = TypeVar("T")

USER = "fuzzer"
# Blob ids the fuzzer's valid ids are mapped onto: some exist (so GET, Range, POST flags
# and DELETE reach storage), the last does not.
POOL = ("fz0", "fz1", "fz2", "fz-absent")
MAX_EXAMPLES = 25
# The longest long poll a fuzzed /changes request makes (see _bound_long_poll).
MAX_LONG_POLL = 0.2

# The document the server serves (test_served_document_is_the_fuzzed_one keeps them equal).
schema = schemathesis.openapi.from_dict(build_openapi())
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class _Remember(logging.Handler):
    """Every record the server logs while the fuzzer runs, formatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Live:
    url: str
    token: str
    headers: dict[str, str]
    log: _Remember


class _LoopThread:
    """An event loop in its own thread: schemathesis calls are blocking, the server is not."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    remember = _Remember()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(remember)
    root.setLevel(logging.DEBUG)
    loop = _LoopThread()
    srv: RunningServer = loop.run(start_server(tmp))
    try:
        token = loop.run(make_user(srv.store, USER))
        headers = auth_header(USER, token)
        secret = hashlib.sha256(b"fuzz").digest() * 4
        for blob_id in POOL[:-1]:
            r = requests.put(f"{srv.url}/blobs/{USER}/{blob_id}", headers=headers,
                             data=seal(secret, blob_id, b"x" * 300), timeout=10)
            assert r.status_code == 200, r.text
        yield Live(srv.url, token, headers, remember)
    finally:
        loop.run(srv.stop())
        loop.close()
        root.removeHandler(remember)
        root.setLevel(old_level)


def error_body_is_json(ctx: Any, response: schemathesis.Response, case: schemathesis.Case
                       ) -> bool | None:
    """Every 4xx/5xx is JSON ``{"error": "<string>"}`` and shows no traceback."""
    if response.status_code < 400:
        return None
    assert "Traceback" not in response.text, response.text
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), (
        f"{response.status_code} with content type {response.headers.get('content-type')}"
    )
    doc = response.json()
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str), response.text
    return None


def _aim(case: schemathesis.Case) -> None:
    """Point valid names at the fuzzer's account and blobs, so requests get past auth and
    reach storage; invalid ones (negative mode) are left as generated."""
    params = case.path_parameters or {}
    uuid = params.get("uuid")
    if isinstance(uuid, str) and valid_id(uuid):
        params["uuid"] = USER
    blob_id = params.get("blob_id")
    if isinstance(blob_id, str) and valid_id(blob_id):
        params["blob_id"] = POOL[sum(blob_id.encode()) % len(POOL)]
    _bound_long_poll(case)


def _bound_long_poll(case: schemathesis.Case) -> None:
    """A valid change-feed timeout waits that long when nothing changes (up to 300 s):
    keep the poll, but short. Invalid ones (400 at once) are left as generated."""
    query = case.query or {}
    value = query.get("timeout")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return
    if 0 < seconds <= MAX_CHANGES_TIMEOUT:
        query["timeout"] = min(seconds, MAX_LONG_POLL)


def _run(case: schemathesis.Case, live: Live, checks: list[Any] = CHECKS) -> None:
    _aim(case)
    # PUT and DELETE would change the pool under other cases: PUT of a pool id is
    # answered 409 (or 400 for a non-sealed body); DELETE only ever reaches fz-absent.
    if case.method.upper() == "DELETE" and case.path_parameters.get("blob_id") in POOL[:-1]:
        case.path_parameters["blob_id"] = POOL[-1]
    case.call_and_validate(
        base_url=live.url,
        headers=live.headers,
        checks=checks,
        additional_checks=[error_body_is_json],
        timeout=10,
    )


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@schema.exclude(operation_id=["stream", "changes"]).parametrize()
@FUZZ_SETTINGS
def test_api_never_fails_and_keeps_its_document(case: schemathesis.Case, live: Live) -> None:
    _run(case, live)


@schema.include(operation_id="stream").parametrize()
@FUZZ_SETTINGS
def test_stream_never_fails_and_keeps_its_document(case: schemathesis.Case, live: Live
                                                   ) -> None:
    _run(case, live)


# A plain test, not a schemathesis one: errors that name no blob keep to the document.
@pytest.mark.parametrize("body", [b"not json\n", b"[]\ntrailing garbage", b""])
def test_stream_upload_errors_match_the_document(live: Live, body: bytes) -> None:
    case = schema["/stream/{uuid}"]["POST"].Case(
        path_parameters={"uuid": USER},
        query={"direction": "upload"},
        body=body,
        media_type="application/octet-stream",
    )
    response = case.call_and_validate(
        base_url=live.url, headers=live.headers, checks=CHECKS,
        additional_checks=[error_body_is_json], timeout=10,
    )
    assert response.status_code == 400


@schema.include(operation_id="changes").parametrize()
@FUZZ_SETTINGS
def test_changes_are_fuzzed_too(case: schemathesis.Case, live: Live) -> None:
    """Its own run (long polls bounded by _bound_long_poll), as for the stream."""
    _run(case, live)


def test_the_feed_was_fuzzed(live: Live) -> None:
    """Runs after the fuzzing: requests reached the feed itself, pages and 410s both."""
    text = "\n".join(live.log.lines)
    assert f"GET /changes/{USER} 200 " in text
    assert f"GET /changes/{USER} 410 " in text
    r = requests.get(f"{live.url}/changes/{USER}", headers=live.headers, timeout=10)
    assert r.status_code == 200 and len(r.json()["changes"]) >= len(POOL) - 1


def test_served_document_is_the_fuzzed_one(live: Live) -> None:
    r = requests.get(f"{live.url}/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.json() == build_openapi()


def test_fuzzing_logged_no_secret(live: Live) -> None:
    """Runs after the fuzzing (same module, same server): nothing it sent leaked to logs."""
    text = "\n".join(live.log.lines)
    assert live.token not in text
    assert base64.b64encode(f"{USER}:{live.token}".encode()).decode() not in text
    assert "Traceback" not in text
    assert "unexpected error" not in text
