"""What CLI tests share: a real server on loopback in a thread of its own, accounts on it,
and devices (profile directories) driven only through the real CLI as subprocesses.
The fixtures around them are in tests/cli/conftest.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.servers import make_service, make_user, start_server

ROOT = Path(__file__).resolve().parents[2]
# The CLI's commands take well under a second each; this only stops a hung test.
TIMEOUT = 120
T = TypeVar("T")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBSYNC_")}
    # Retries of 10..60 s become 0.1..0.6 s: a failing transfer does not stall the suite.
    env["BLOBSYNC_RETRY_SCALE"] = "0.01"
    env["PYTHONPATH"] = str(ROOT)
    return env


def blobsync(*args: str, env: dict[str, str] | None = None, input: bytes | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "blobsync", *args],
        env=env or base_env(), input=input, capture_output=True, timeout=TIMEOUT,
        cwd=cwd or ROOT,
        # No controlling terminal, as under cron: a passphrase prompt can never block.
        start_new_session=True,
    )


class Server:
    """The real server (tests/helpers/servers.py) on loopback, in its own thread and loop.

    A server in the test's own event loop could not answer the CLI, which runs as blocking
    subprocesses; in a thread it does, and users are created straight in its store
    instead of costing a `blobsync user add` process each.
    """

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "srv"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._running = self._call(start_server(tmp))
        self.url: str = self._running.url
        self.local_url: str = self._running.local_url

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    def add_user(self, user: str) -> str:
        return self._call(make_user(self._running.store, user))

    def add_service(self, name: str) -> str:
        return self._call(make_service(self._running.store, name))

    def stop(self) -> None:
        try:
            self._call(self._running.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()


@dataclass
class Account:
    server: Server
    user: str
    token: str

    def auth(self) -> str:
        return "Token " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()


@dataclass
class Device:
    """One profile directory: a device of the user, driven only through the CLI."""

    home: Path
    account: Account
    passphrase: str = PASSPHRASE
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, passphrase: str | None = None) -> dict[str, str]:
        env = base_env()
        env["BLOBSYNC_PASSPHRASE"] = passphrase or self.passphrase
        env.update(self.extra_env)
        return env

    def run(self, *args: str, passphrase: str | None = None, input: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return blobsync("--home", str(self.home), *args, env=self.env(passphrase),
                        input=input, cwd=cwd)

    def ok(self, *args: str, **kwargs: object) -> str:
        proc = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr.decode())
        assert b"Traceback" not in proc.stderr
        return proc.stdout.decode()

    def json(self, *args: str, **kwargs: object) -> object:
        return json.loads(self.ok("--json", *args, **kwargs))

    def init(self, *extra: str, token: str | None = None, server: str | None = None,
             passphrase: str | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.run("init", "--server", server or self.account.server.url,
                        "--user", self.account.user, "--token", token or self.account.token,
                        *extra, passphrase=passphrase)


def assert_one_line_error(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The error contract: exit code, exactly one line on stderr, never a traceback."""
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("blobsync: error: "), err
    return lines[0]


def http(method: str, url: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def deliver(account: Account, token: str, blob_id: str, payload: bytes) -> None:
    """What a mail service does: PUT the message into the user's incoming box."""
    auth = "Token " + base64.b64encode(f"incoming:{token}".encode()).decode()
    status, body = http(
        "PUT", f"{account.server.local_url}/incoming/{account.user}/{blob_id}",
        body=payload, headers={"Authorization": auth},
    )
    assert status == 200, body
