"""``blobsync server``, ``user``, ``service`` and ``admin`` as a user runs them: real
processes, driven with plain HTTP from urllib."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from blobsync.cli.main import main
from tests.helpers.net import free_port
from tests.helpers.server_cli import call, ok_token, one_line_error
from tests.helpers.subproc import ServerProcess, blobsync, cli_env, new_data_dir

from .conftest import sealed


def test_server_end_to_end(tmp_path: Path) -> None:
    data = new_data_dir(tmp_path / "data")
    token = ok_token(blobsync("user", "add", "alice", "--data", data))
    port, local_port = free_port(), free_port()
    server = ServerProcess("--data", data, "--port", str(port), "--local-port", str(local_port))
    try:
        url = f"http://127.0.0.1:{port}"
        assert server.url == url and server.local_url == f"http://127.0.0.1:{local_port}"
        status, body = call("GET", url + "/")
        assert status == 200 and json.loads(body)["version"]
        blob = sealed("b1", 3000)
        assert call("PUT", url + "/blobs/alice/b1", "alice", token, blob)[0] == 200
        assert call("GET", url + "/blobs/alice/b1", "alice", token) == (200, blob)
        assert call("GET", url + "/blobs/alice", "alice", "bad")[0] == 401
        status, body = call("GET", url + "/blobs/alice/..", "alice", token)
        assert status in (400, 404) and "error" in json.loads(body)  # urllib may fold `..`

        # Users and services change while the server runs (SQLite in WAL mode).
        bob = ok_token(blobsync("user", "add", "bob", "--data", data))
        assert call("GET", url + "/blobs/bob", "bob", bob) == (200, b"[]")
        assert call("GET", url + "/blobs/alice", "bob", bob)[0] == 403
        listed = blobsync("user", "list", "--data", data)
        assert listed.returncode == 0 and listed.stdout.split() == ["alice", "bob"]
        new = ok_token(blobsync("user", "token", "bob", "--data", data))
        assert call("GET", url + "/blobs/bob", "bob", bob)[0] == 401
        assert call("GET", url + "/blobs/bob", "bob", new)[0] == 200
        assert blobsync("user", "remove", "bob", "--data", data).returncode == 0
        assert call("GET", url + "/blobs/bob", "bob", new)[0] == 401

        service = ok_token(blobsync("service", "add", "incoming", "--data", data))
        assert blobsync("service", "list", "--data", data).stdout.split() == ["incoming"]
        status, _ = call("PUT", server.local_url + "/incoming/alice/m1", "incoming", service,
                         b"payload")
        assert status == 200
        status, body = call("GET", url + "/blobs/alice?namespace=MX&filter_flag=PENDING",
                            "alice", token)
        assert json.loads(body) == ["m1"]
        assert blobsync("service", "remove", "incoming", "--data", data).returncode == 0
        status, _ = call("PUT", server.local_url + "/incoming/alice/m2", "incoming", service,
                         b"payload")
        assert status == 401
        server.wait_for_log("PUT /incoming/alice/m2 401")
    finally:
        code = server.terminate()
    assert code == 0
    log = server.log
    assert "Traceback" not in log
    # One line per request: method, path, status, bytes, time, user; never a token.
    assert "GET /blobs/alice/b1 200" in log and " alice\n" in log
    assert "PUT /incoming/alice/m1 200" in log and "service:incoming" in log
    for secret in (token, bob, new, service, "Authorization", "Token "):
        assert secret not in log
    assert blob[:100].decode("latin-1") not in log


def test_settings_from_env_and_toml(tmp_path: Path) -> None:
    port, local_port = free_port(), free_port()
    toml = tmp_path / "server.toml"
    toml.write_text(f'local_port = {local_port}\nport = 1\nquota = "4K"\n')
    env = cli_env(BLOBSYNC_PORT=str(port), BLOBSYNC_DATA=new_data_dir(tmp_path / "d"),
                  BLOBSYNC_CONFIG=str(toml))
    token = ok_token(blobsync("user", "add", "alice", env=env))  # BLOBSYNC_DATA applies
    server = ServerProcess(env=env)
    try:
        assert server.url == f"http://127.0.0.1:{port}"  # env beats the file
        assert server.local_url == f"http://127.0.0.1:{local_port}"  # from the file
        status, body = call("GET", server.url + "/")
        assert json.loads(body)["limits"]["quota"] == 4096
        assert call("PUT", server.url + "/blobs/alice/b1", "alice", token,
                    sealed("b1", 4000))[0] == 507
    finally:
        assert server.terminate() == 0
    # The command line beats both.
    other = free_port()
    server = ServerProcess("--port", str(other), "--local-port", "0", env=env)
    try:
        assert server.url == f"http://127.0.0.1:{other}"
    finally:
        server.terminate()


@pytest.mark.parametrize(
    "args",
    [
        ["user", "add", "bad.id"],
        ["user", "add", "x" * 255],
        ["user", "remove", "nobody"],
        ["user", "token", "nobody"],
        ["service", "remove", "nothing"],
        ["service", "add", "../x"],
        ["server", "--port", "http"],
        ["server", "--quota", "lots"],
        ["server", "--tls-cert", "cert.pem"],
        ["server", "--config", "missing.toml"],
        ["user"],
        ["user", "add"],
        ["admin", "gc", "--grace", "soon"],
        ["nosuchcommand"],
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    # In process, for speed: main() is exactly what the entry point runs.
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("BLOBSYNC_")]:
        monkeypatch.delenv(key)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    one_line_error(subprocess.CompletedProcess(args, code, captured.out, captured.err))


@pytest.mark.parametrize(
    "args",
    [
        ["--metadata", "mysql://x"],
        ["--tls-cert", "nope.pem", "--tls-key", "nope.key"],
    ],
)
def test_server_start_errors_are_one_line(tmp_path: Path, args: list[str]) -> None:
    proc = blobsync("server", "--data", str(tmp_path / "d"), "--port", "0", "--local-port",
                    "0", *args, cwd=tmp_path)
    one_line_error(proc)


def test_user_exists_and_port_in_use(tmp_path: Path) -> None:
    data = new_data_dir(tmp_path / "d")
    ok_token(blobsync("user", "add", "alice", "--data", data))
    assert "exists" in one_line_error(blobsync("user", "add", "alice", "--data", data))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = one_line_error(blobsync("server", "--data", data, "--port", str(port),
                                      "--local-port", "0"))
    assert "listen" in err


def test_admin_gc(tmp_path: Path) -> None:
    from blobsync.server.storage.factory import make_store

    data = tmp_path / "d"
    ok_token(blobsync("user", "add", "alice", "--data", new_data_dir(data)))

    async def orphans() -> set[str]:
        # What a crash between payload commit and index insert leaves behind: one payload
        # inline in SQLite, one large enough to be a file.
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

    async def stored() -> set[str]:
        store = make_store(str(data), None, None)
        await store.open()
        try:
            return {location async for location, _ in store.payloads.locations()}
        finally:
            await store.close()

    made = asyncio.run(orphans())
    assert any(loc.startswith("db:") for loc in made)
    assert any((data / "blobs" / loc).is_file() for loc in made)
    # Two lines: payloads removed, then feed changes dropped (none: no blob was written).
    assert blobsync("admin", "gc", "--data", str(data)).stdout == "0\n0\n"  # within grace
    # A duration as the config file and --sweep-grace read it (server.md, "Durations").
    assert blobsync("admin", "gc", "--grace", "15m", "--data", str(data)).stdout == "0\n0\n"
    assert asyncio.run(stored()) == made
    out = blobsync("admin", "gc", "--grace", "0", "--data", str(data))
    assert out.returncode == 0 and out.stdout == "2\n0\n", out.stderr
    assert asyncio.run(stored()) == set()
    assert blobsync("admin", "gc", "--grace", "0", "--data", str(data)).stdout == "0\n0\n"


def test_demo_user_for_make_run(tmp_path: Path) -> None:
    def start() -> tuple[ServerProcess, str, str]:
        server = ServerProcess("--demo", "--port", "0", "--local-port", "0", cwd=tmp_path)
        server.wait_for_stdout("blobsync --home")
        text = "".join(server.out_lines)
        uuid = text.split("demo user:")[1].split()[0]
        token = text.split("demo token:")[1].split()[0]
        # The profile's path spelled out (issue 14: pasted into a new shell, elsewhere).
        assert (f"blobsync --home {tmp_path / 'demo-client'} init --server {server.url} "
                f"--user {uuid} --token {token}") in text
        return server, uuid, token

    server, uuid, token = start()
    try:
        assert call("GET", f"{server.url}/blobs/{uuid}", uuid, token) == (200, b"[]")
    finally:
        server.terminate()
    demo_file = tmp_path / "blobsync-data" / "demo-user.txt"  # the default data dir
    assert token in demo_file.read_text()
    assert oct(demo_file.stat().st_mode & 0o777) == "0o600"
    server, uuid2, token2 = start()  # a later run prints the same user again
    try:
        assert (uuid2, token2) == (uuid, token)
        assert call("GET", f"{server.url}/blobs/{uuid}", uuid, token)[0] == 200
    finally:
        server.terminate()
    # `blobsync server` without --demo never makes users.
    listed = blobsync("user", "list", cwd=tmp_path)
    assert listed.stdout.split() == [uuid]


def test_makefile_run_target_uses_demo() -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    run = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "server --demo" in run
