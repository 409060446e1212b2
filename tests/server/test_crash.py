"""SIGKILL of a server in the middle of uploads: after a restart every blob is complete or
absent, the dead process's temp files are gone, the orphan payloads are swept, and earlier
blobs are intact. And the background sweep, which must never take a live upload's payload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from blobsync.format import encode_upstream_header
from blobsync.server.storage.factory import make_store
from tests.helpers.server_cli import add_user, call, orphans, start_upload, wait_until
from tests.helpers.subproc import ServerProcess

from .conftest import sealed


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


def payload_count(data: Path) -> int:
    """Committed payloads: rows of the payload db and files in the shard dirs."""
    conn = sqlite3.connect(data / "payloads.sqlite3")
    try:
        rows = int(conn.execute("SELECT count(*) FROM payloads").fetchone()[0])
    finally:
        conn.close()
    return rows + sum(1 for p in (data / "blobs" / "alice").rglob("*") if p.is_file())


@contextlib.contextmanager
def index_write_lock(data: Path) -> Iterator[None]:
    """Hold the index's write lock: the server's uploads commit their payloads, then wait
    for it to insert their rows (its busy timeout is 30 s)."""
    conn = sqlite3.connect(data / "index.sqlite3", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


def start_held(url: str, token: str, bodies: dict[str, tuple[bytes, int]]) -> list[socket.socket]:
    """Start an upload per path with only ``body[:cut]`` sent, and return once each is
    past its index lookups (authentication, the id and quota checks): under the index
    write lock, the first row insert to wait holds the index's one thread, and a lookup
    queued behind it would never let its payload be committed. A stream is cut after its
    header: a pause between its blobs would flush the blobs before it on their own."""
    socks = [start_upload(url, path, token, body[:cut], len(body))
             for path, (body, cut) in bodies.items()]
    time.sleep(1)  # a lookup takes a millisecond; a body on loopback, a few
    # The index's jobs run in order on its one thread: once a lookup asked after theirs
    # is answered, theirs are too (reads pass the write lock: WAL).
    assert call("GET", f"{url}/blobs/alice", "alice", token)[0] == 200
    return socks


def response_status(sock: socket.socket) -> int:
    sock.settimeout(40)
    head = b""
    while b"\r\n" not in head:
        more = sock.recv(4096)
        assert more, "connection closed before a status line"
        head += more
    return int(head.split()[1])


def test_orphans_of_a_sigkill_are_swept_at_start_up(tmp_path: Path) -> None:
    """A SIGKILL between payload commits and their index rows leaves orphans in both
    tiers; the restarted server's start-up sweep removes exactly those, and every blob
    that was acknowledged before is intact. With the default settings (an hour's grace):
    the restarted server holds the data dir's lock, so it is alone and sweeps with no
    grace, before it serves (issue 10 item 7)."""
    data = tmp_path / "data"
    token = "tok"
    add_user(data, "alice", token)
    args = ("--data", str(data), "--port", "0", "--local-port", "0")
    server = ServerProcess(*args)
    socks: list[socket.socket] = []
    try:
        earlier = {"early-small": sealed("early-small", 500),
                   "early-big": sealed("early-big", 1 << 20)}
        for blob_id, blob in earlier.items():
            assert call("PUT", f"{server.url}/blobs/alice/{blob_id}", "alice", token,
                        blob)[0] == 200
        committed = payload_count(data)
        small, big = sealed("lost-small", 500), sealed("lost-big", 600_000)
        run = {f"lost-s{i}": sealed(f"lost-s{i}", 300) for i in range(3)}
        stream = encode_upstream_header([(b, len(d)) for b, d in run.items()])
        stream += b"".join(run.values())
        header = len(stream) - sum(map(len, run.values()))
        bodies = {"/blobs/alice/lost-small": (small, len(small) - 1),
                  "/blobs/alice/lost-big": (big, len(big) - 1),
                  "/stream/alice?direction=upload": (stream, header)}
        with index_write_lock(data):
            # Each payload is committed, then its row waits for the lock.
            socks += start_held(server.url, token, bodies)
            for sock, (body, cut) in zip(socks, bodies.values(), strict=True):
                sock.sendall(body[cut:])
            wait_until(lambda: payload_count(data) == committed + 5)
            server.kill()  # SIGKILL between the payloads and their rows
    finally:
        server.kill()
        for s in socks:
            s.close()
    left = orphans(data)
    assert len(left) == 5  # 4 in the payload db, 1 file
    assert sum(loc.startswith("db:") for loc in left) == 4

    server = ServerProcess(*args)  # at once, the orphans a second old: far within the grace
    try:
        # Swept before the ready line: gone as soon as the server serves.
        assert orphans(data) == set()
        assert ("sweep at start-up (alone on the data dir, no grace): 5 orphan payloads "
                "removed") in server.log, server.log
        assert "spared" not in server.log  # no scheduled sweep yet: they wait an interval
        ids = json.loads(call("GET", f"{server.url}/blobs/alice?order_by=date", "alice",
                              token)[1])
        assert ids == list(earlier)
        for blob_id, blob in earlier.items():
            assert call("GET", f"{server.url}/blobs/alice/{blob_id}", "alice",
                        token) == (200, blob)
        assert call("GET", f"{server.url}/blobs/alice/lost-big", "alice", token)[0] == 404
    finally:
        assert server.terminate() == 0
    assert "Traceback" not in server.log


def test_background_sweep_spares_live_uploads_and_removes_old_orphans(tmp_path: Path) -> None:
    """Sweeps every 0.1 s: orphans go once older than the grace (2 s), uploads under way
    keep their payloads: one held mid-body for less than the grace, and some whose
    payloads are committed but whose rows wait (on the index lock) longer than it."""
    data = tmp_path / "data"
    token = "tok"
    add_user(data, "alice", token)

    async def plant_inline() -> str:
        store = make_store(str(data), None, None)
        await store.open()
        try:
            [inline] = await store.payloads.inline.store_many(
                "alice", "default", [("o1", b"x" * 99)])
            return inline
        finally:
            await store.close()

    async def plant_file() -> str:
        store = make_store(str(data), None, None)
        await store.open()
        try:
            writer = await store.payloads.files.writer("alice", "default", "o2")
            await writer.write(b"y" * 99)
            return await writer.commit()
        finally:
            await store.close()

    old_inline = asyncio.run(plant_inline())
    conn = sqlite3.connect(data / "payloads.sqlite3", isolation_level=None)
    conn.execute("UPDATE payloads SET mtime = mtime - 7200 WHERE location = ?", (old_inline,))
    conn.close()
    assert orphans(data) == {old_inline}

    server = ServerProcess("--data", str(data), "--port", "0", "--local-port", "0",
                           "--sweep-interval", "0.1", "--sweep-grace", "2")
    socks: list[socket.socket] = []

    def sweeps() -> int:
        return server.log.count("sweep: ")

    try:
        wait_until(lambda: orphans(data) == set())  # the old one at start-up
        # A young orphan beside the running server: the scheduled sweeps keep the grace.
        # (Planted after start-up: the start-up sweep, alone, takes orphans of any age.)
        young_file = asyncio.run(plant_file())
        assert orphans(data) == {young_file}

        # A PUT held mid-body for 1 s (less than the grace) while sweeps run.
        big = sealed("slow", 1 << 20)
        sock = start_upload(server.url, "/blobs/alice/slow", token, big[:400_000], len(big))
        socks.append(sock)
        seen = sweeps()
        time.sleep(1)
        assert sweeps() >= seen + 2
        sock.sendall(big[400_000:])
        assert response_status(sock) == 200

        wait_until(lambda: orphans(data) == set())  # the young file orphan aged out too
        # Payloads committed, rows held back for longer than the grace.
        committed = payload_count(data)
        small = sealed("held", 500)
        run = {f"run{i}": sealed(f"run{i}", 300) for i in range(3)}
        body = encode_upstream_header([(b, len(d)) for b, d in run.items()])
        body += b"".join(run.values())
        header = len(body) - sum(map(len, run.values()))
        with index_write_lock(data):
            held, stream = start_held(server.url, token, {
                "/blobs/alice/held": (small, len(small) - 1),
                "/stream/alice?direction=upload": (body, header),
            })
            socks += [held, stream]
            held.sendall(small[-1:])
            stream.sendall(body[header:])
            wait_until(lambda: payload_count(data) == committed + 4)
            seen = sweeps()
            time.sleep(3)  # older than the grace now: only the in-process record saves them
            assert sweeps() >= seen + 5
            assert payload_count(data) == committed + 4
        assert response_status(held) == 200
        assert response_status(stream) == 200
        assert orphans(data) == set()
        for blob_id, blob in {"slow": big, "held": small, **run}.items():
            assert call("GET", f"{server.url}/blobs/alice/{blob_id}", "alice",
                        token) == (200, blob)
    finally:
        for s in socks:
            s.close()
        assert server.terminate() == 0
    assert "Traceback" not in server.log
    assert "sweep failed" not in server.log
