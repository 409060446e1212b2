"""The data dir's lock (issue 10 item 7, follow-up): the process serving the embedded store
holds ``DATA/server.lock`` for its whole life, so a restart after a crash is provably alone
and sweeps every orphan at start-up, before it serves, with the default settings. A second
server (or an import) on the same data dir is refused with one line naming the holder;
``--workers N`` sweeps once, in the master, and the lock outlives a killed master until its
workers have exited. Shared storage (PostgreSQL + S3) keeps the grace at start-up."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil

from blobsync.server.datalock import acquire
from blobsync.server.storage.factory import make_store
from blobsync.server.storage.s3 import S3Payloads
from tests.harness.s3 import S3Endpoint
from tests.helpers.server_cli import (
    add_user,
    call,
    one_line_error,
    orphans,
    start_upload,
    wait_until,
)
from tests.helpers.subproc import ServerProcess, blobsync, cli_env

from .conftest import sealed

ARGS = ("--port", "0", "--local-port", "0")


def plant_orphans(data: Path) -> set[str]:
    """Payloads committed without their rows, as a crash leaves them: seconds old, one
    in the payload db and one file."""

    async def run() -> set[str]:
        store = make_store(str(data), None, None)
        await store.open()
        try:
            made = set()
            for blob_id, size in (("small", 100), ("large", 300_000)):
                writer = await store.payloads.writer("alice", "default", blob_id)
                await writer.write(sealed(blob_id, size))
                made.add(await writer.commit())
            return made
        finally:
            await store.close()

    return asyncio.run(run())


def test_a_second_server_on_the_data_dir_fails_and_names_the_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess("--data", str(data), *ARGS)
    try:
        second = blobsync("server", "--data", str(data), *ARGS)
        assert second.returncode == 1
        err = one_line_error(second)
        assert f"the data directory {data} is in use by blobsync server (pid {first.pid} " \
            f"on {socket.gethostname()}, since " in err, err
        # The same for --workers (the lock comes before anything else), and for an import,
        # which writes payloads too.
        workers = blobsync("server", "--data", str(data), "--workers", "2", *ARGS)
        assert workers.returncode == 1 and f"(pid {first.pid} " in one_line_error(workers)
        soledad = tmp_path / "soledad"
        soledad.mkdir()
        imported = blobsync("admin", "import-soledad", str(soledad), "--data", str(data))
        assert imported.returncode == 1 and f"(pid {first.pid} " in one_line_error(imported)
        # What only writes index rows, or deletes old orphans, runs beside it.
        assert blobsync("user", "add", "bob", "--data", str(data)).returncode == 0
        assert blobsync("admin", "gc", "--data", str(data)).returncode == 0
        assert call("GET", first.url + "/")[0] == 200  # the first one never noticed
    finally:
        assert first.terminate() == 0
    assert (data / "server.lock").stat().st_mode & 0o777 == 0o600
    # Once it is gone, the data dir is free again.
    again = ServerProcess("--data", str(data), *ARGS)
    assert again.terminate() == 0


def test_a_server_is_refused_at_once_while_an_import_holds_the_data_dir(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    lock = acquire(str(data), "blobsync admin import-soledad")
    assert lock is not None
    try:
        started = time.monotonic()
        run = blobsync("server", "--data", str(data), *ARGS)
        assert run.returncode == 1
        assert f"in use by blobsync admin import-soledad (pid {os.getpid()} " \
            in one_line_error(run)
        assert time.monotonic() - started < 15  # at once: the holder is alive
    finally:
        lock.release()


def test_restart_with_default_settings_sweeps_every_orphan_before_serving(
    tmp_path: Path,
) -> None:
    """Young orphans (a crash a moment ago), default grace of an hour: the server is
    alone, so they are gone by the time it serves; stored blobs are untouched."""
    data = tmp_path / "data"
    add_user(data, "alice", "tok")
    server = ServerProcess("--data", str(data), *ARGS)
    try:
        blob = sealed("kept", 300_000)
        assert call("PUT", f"{server.url}/blobs/alice/kept", "alice", "tok", blob)[0] == 200
    finally:
        assert server.terminate() == 0
    made = plant_orphans(data)
    assert orphans(data) == made

    server = ServerProcess("--data", str(data), *ARGS)
    try:
        assert orphans(data) == set()
        assert "sweep at start-up (alone on the data dir, no grace): 2 orphan payloads " \
            "removed" in server.log, server.log
        assert call("GET", f"{server.url}/blobs/alice/kept", "alice", "tok") == (200, blob)
    finally:
        assert server.terminate() == 0
    assert "Traceback" not in server.log


def test_workers_sweep_once_in_the_master_before_any_worker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_user(data, "alice", "tok")
    plant_orphans(data)
    server = ServerProcess("--data", str(data), "--workers", "2", *ARGS)
    try:
        server.wait_for_log("all 2 workers ready", timeout=30)
        assert orphans(data) == set()
        log = server.log
        assert log.count("sweep at start-up (alone on the data dir, no grace): 2 orphan "
                         "payloads removed") == 1, log
        # Before the first worker started, and no worker sweeps again at start-up.
        assert log.index("sweep at start-up") < log.index("started worker 0")
        assert "spared" not in log  # the scheduled sweeps' line
        blob = sealed("w", 5000)
        assert call("PUT", f"{server.url}/blobs/alice/w", "alice", "tok", blob)[0] == 200
        assert call("GET", f"{server.url}/blobs/alice/w", "alice", "tok") == (200, blob)
        # The master holds the lock for its workers.
        second = blobsync("server", "--data", str(data), *ARGS)
        assert second.returncode == 1
        assert f"blobsync server --workers 2 (pid {server.pid} " in one_line_error(second)
    finally:
        assert server.terminate() == 0
    assert "Traceback" not in server.log


def lock_is_held(data: Path) -> bool:
    fd = os.open(data / "server.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_lock_outlives_a_killed_master_until_its_workers_exit(tmp_path: Path) -> None:
    """SIGKILL of the master: its workers get SIGTERM and finish their requests (up to
    5 s) with the data dir's lock still held through the descriptor they inherited, so a
    new server's grace-0 sweep cannot take a payload they are about to index."""
    data = tmp_path / "data"
    add_user(data, "alice", "tok")
    old = ServerProcess("--data", str(data), "--workers", "2", *ARGS)
    sock: socket.socket | None = None
    try:
        old.wait_for_log("all 2 workers ready", timeout=30)
        port = int(old.url.rsplit(":", 1)[1])
        workers = [child.pid for child in psutil.Process(old.pid).children()
                   if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                          for c in child.net_connections(kind="tcp"))]
        assert len(workers) == 2
        # An upload held mid-body keeps its worker draining for 5 s after the SIGTERM.
        big = sealed("slow", 1 << 20)
        sock = start_upload(old.url, "/blobs/alice/slow", "tok", big[:100_000], len(big))
        time.sleep(0.5)
        assert lock_is_held(data)
        old.kill()  # SIGKILL; the kernel sends the workers SIGTERM
        assert lock_is_held(data)  # by the workers now: the master is gone
        assert not psutil.pid_exists(old.pid)
        wait_until(lambda: not any(psutil.pid_exists(p) for p in workers), timeout=30)
        assert not lock_is_held(data)
    finally:
        old.kill()
        if sock is not None:
            sock.close()
    new = ServerProcess("--data", str(data), *ARGS)
    try:
        assert "waiting for its workers" not in new.log
        assert "sweep at start-up (alone on the data dir, no grace)" in new.log
        assert call("GET", f"{new.url}/blobs/alice/slow", "alice", "tok")[0] == 404
    finally:
        assert new.terminate() == 0


def test_a_server_waits_for_the_workers_of_a_killed_master(tmp_path: Path) -> None:
    """The lock held through a master's descriptor by a process that lives on (as its
    workers do), while the holder it names is dead: a new server waits for the lock
    instead of failing, and starts as soon as the last one lets go."""
    data = tmp_path / "data"
    lock = acquire(str(data), "blobsync server --workers 2")
    assert lock is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.ftruncate(lock.fd, 0)
    os.pwrite(lock.fd, json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                   "command": "blobsync server --workers 2",
                                   "since": time.time()}).encode(), 0)
    worker = subprocess.Popen(["sleep", "60"], pass_fds=[lock.fd])
    lock.release()  # the "master" is gone; the "worker" keeps the lock
    # Built in a thread: its constructor returns only once the server is ready.
    new = ServerProcess.__new__(ServerProcess)
    starting = threading.Thread(target=new.__init__, args=("--data", str(data), *ARGS))
    try:
        assert lock_is_held(data)
        starting.start()
        wait_until(lambda: "waiting for its workers to exit" in "".join(
            getattr(new, "log_lines", [])), timeout=30)
        time.sleep(0.5)
        assert not new.url  # not serving while the worker lives
        worker.kill()
        worker.wait()
        starting.join(40)
        assert new.url, new.log
        assert "sweep at start-up (alone on the data dir, no grace)" in new.log
        assert new.terminate() == 0
    finally:
        worker.kill()
        worker.wait()
        if starting.is_alive():
            starting.join(40)
        if hasattr(new, "proc"):
            new.kill()  # only if the test failed: it has exited otherwise


def test_shared_storage_keeps_the_grace_at_start_up(
    postgres_db: str, s3_endpoint: S3Endpoint, s3_bucket: str, tmp_path: Path,
) -> None:
    """PostgreSQL + S3 may be shared by servers on other machines: no lock, and a young
    orphan survives the start-up sweep with the default grace; two servers on one --data
    still run side by side."""

    async def plant() -> str:
        payloads = S3Payloads(s3_bucket, "p", endpoint_url=s3_endpoint.url,
                              access_key=s3_endpoint.access_key,
                              secret_key=s3_endpoint.secret_key)
        await payloads.open()
        try:
            writer = await payloads.writer("alice", "default", "young")
            await writer.write(sealed("young", 1000))
            return await writer.commit()
        finally:
            await payloads.close()

    async def locations() -> set[str]:
        payloads = S3Payloads(s3_bucket, "p", endpoint_url=s3_endpoint.url,
                              access_key=s3_endpoint.access_key,
                              secret_key=s3_endpoint.secret_key)
        await payloads.open()
        try:
            return {loc async for loc, _ in payloads.locations()}
        finally:
            await payloads.close()

    young = asyncio.run(plant())
    env = cli_env(**s3_endpoint.env())
    args = ("--data", str(tmp_path), "--metadata", postgres_db, "--payload",
            f"s3://{s3_bucket}/p", *ARGS)
    a = ServerProcess(*args, env=env)
    try:
        a.wait_for_log("sweep: ", timeout=30)
        assert "sweep: 0 orphan payloads removed, 1 younger than 3600s spared" in a.log, a.log
        assert "sweep at start-up" not in a.log
        assert asyncio.run(locations()) == {young}
        b = ServerProcess(*args, env=env)
        assert b.terminate() == 0
    finally:
        assert a.terminate() == 0
    assert not (tmp_path / "server.lock").exists()
