"""SIGKILL of a server in the middle of uploads: after a restart every blob is complete or
absent, the dead process's temp files are gone, and earlier blobs are intact."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from blobsync.format import encode_upstream_header
from blobsync.server.auth import hash_token
from blobsync.server.storage.factory import make_store

from .conftest import sealed
from .subproc import ServerProcess
from .test_server_cli import call


def add_user(data: Path, uuid: str, token: str) -> None:
    async def run() -> None:
        store = make_store(str(data), None, None)
        await store.index.open()
        try:
            await store.index.add_user(uuid, hash_token(token))
        finally:
            await store.index.close()

    asyncio.run(run())


def start_upload(url: str, path: str, token: str, body: bytes, total: int) -> socket.socket:
    """Send the head and ``body`` of a request whose Content-Length is ``total``."""
    import base64

    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    cred = base64.b64encode(f"alice:{token}".encode()).decode()
    sock.sendall(
        f"{'PUT' if path.startswith('/blobs') else 'POST'} {path} HTTP/1.1\r\n"
        f"Host: {host}\r\nAuthorization: Token {cred}\r\nContent-Length: {total}\r\n\r\n"
        .encode() + body
    )
    return sock


def wait_until(predicate, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def test_sigkill_during_uploads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = "tok"
    add_user(data, "alice", token)
    server = ServerProcess("--data", str(data), "--port", "0", "--local-port", "0")
    socks: list[socket.socket] = []
    try:
        earlier = {f"early{i}": sealed(f"early{i}", 10_000 * (i + 1)) for i in range(3)}
        for blob_id, blob in earlier.items():
            assert call("PUT", f"{server.url}/blobs/alice/{blob_id}", "alice", token,
                        blob)[0] == 200
        # A single PUT, cut after 3 MiB of 8 MiB.
        big = sealed("half", 8 << 20)
        socks.append(start_upload(server.url, "/blobs/alice/half", token, big[: 3 << 20],
                                  len(big)))
        # A stream whose first blob is whole and whose second is cut.
        s0, s1 = sealed("s0", 5000), sealed("s1", 4 << 20)
        header = encode_upstream_header([("s0", len(s0)), ("s1", len(s1))])
        body = header + s0 + s1
        socks.append(start_upload(server.url, "/stream/alice?direction=upload", token,
                                  body[: len(header) + len(s0) + (1 << 20)], len(body)))

        def listed() -> list[str]:
            return json.loads(call("GET", f"{server.url}/blobs/alice", "alice", token)[1])

        wait_until(lambda: "s0" in listed())
        tmp_dir = data / "blobs" / ".tmp" / str(server.pid)

        def temp_bytes() -> int:
            return sum(f.stat().st_size for f in tmp_dir.iterdir()) if tmp_dir.exists() else 0

        # Both cut uploads have reached the disk (1 MiB of s1, 3 MiB of half).
        wait_until(lambda: temp_bytes() >= (3 << 20) + (1 << 19))
        dead_pid = server.pid
    finally:
        server.kill()  # SIGKILL: no cleanup of any kind
        for s in socks:
            s.close()
    assert (data / "blobs" / ".tmp" / str(dead_pid)).exists()  # the crash left it

    server = ServerProcess("--data", str(data), "--port", "0", "--local-port", "0")
    try:
        assert not (data / "blobs" / ".tmp" / str(dead_pid)).exists()
        ids = json.loads(call("GET", f"{server.url}/blobs/alice?order_by=date", "alice",
                              token)[1])
        assert ids == [*earlier, "s0"]
        for blob_id, blob in {**earlier, "s0": s0}.items():
            assert call("GET", f"{server.url}/blobs/alice/{blob_id}", "alice",
                        token) == (200, blob)
        for blob_id in ("half", "s1"):
            assert call("GET", f"{server.url}/blobs/alice/{blob_id}", "alice", token)[0] == 404
        # The ids are free: the client's retry succeeds.
        assert call("PUT", f"{server.url}/blobs/alice/half", "alice", token, big)[0] == 200
    finally:
        assert server.terminate() == 0
    assert "Traceback" not in server.log
