"""``python -m blobsync server`` as a subprocess, for tests that need a real process:
the command line itself, SIGKILL, SIGTERM, and memory measured from /proc."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"public API on (\S+), incoming box on (\S+)")
START_TIMEOUT = 30


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBSYNC_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def blobsync(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blobsync", *args], capture_output=True,
                          text=True, env=env or cli_env(), cwd=cwd, timeout=timeout)


def new_data_dir(path: Path | str) -> str:
    """``path`` as a server's first start leaves it: the embedded store made, empty. The
    ``user``, ``service`` and ``admin gc`` commands refuse a data dir without one."""
    from blobsync.server.storage.factory import make_store

    async def make() -> None:
        store = make_store(str(path), None, None)
        await store.open()
        await store.close()

    # A thread of its own: the caller may be inside a running event loop.
    worker = threading.Thread(target=asyncio.run, args=(make(),))
    worker.start()
    worker.join()
    if not (Path(path) / "index.sqlite3").is_file():
        raise RuntimeError(f"no store was made in {path}")
    return str(path)


class ServerProcess:
    """A running ``blobsync server``; its stderr (the log) is collected as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blobsync", "server", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env or cli_env(), cwd=cwd,
        )
        self.log_lines: list[str] = []
        self.out_lines: list[str] = []
        self.url = ""
        self.local_url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.log_lines, True),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.out_lines, False),
                         daemon=True).start()
        if not self._ready.wait(START_TIMEOUT) or not self.url:
            self.kill()
            raise RuntimeError("server did not start:\n" + self.log)

    def _pump(self, stream: object, lines: list[str], watch: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)
            if watch and (m := READY.search(line)):
                self.url, self.local_url = m.group(1), m.group(2)
                self._ready.set()
        if watch:
            self._ready.set()  # exited before it was ready

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    def vm_hwm_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]

    def terminate(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait_for_log(self, needle: str, timeout: float = 10) -> None:
        _wait_for(needle, self.log_lines, timeout)

    def wait_for_stdout(self, needle: str, timeout: float = 10) -> None:
        _wait_for(needle, self.out_lines, timeout)


def _wait_for(needle: str, lines: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in "".join(lines):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in:\n{''.join(lines)}")
        time.sleep(0.02)
