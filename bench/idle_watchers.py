"""What idle watchers cost a server (issue 12): N open event streams, nothing happening.

Starts ``blobsync server`` on the default store as a subprocess, opens ``count`` SSE
streams to it (``GET /changes/{uuid}`` with ``Accept: text/event-stream``) from a separate,
light client process (raw asyncio sockets: no HTTP library per stream), lets them settle,
then measures the SERVER process over ``seconds``: CPU time from /proc/PID/stat and RSS
from /proc/PID/status, before the streams and with them. Heartbeats included: the
server writes a comment line on every idle stream each ``heartbeat`` seconds.

    python bench/idle_watchers.py --count 1000 --seconds 30

prints one JSON object. Targets: at most 1% of one core, under 20 KB of RSS per waiter.
``measure(count, seconds)`` returns the same dict, for bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"public API on http://(\S+):(\d+), incoming box")
USER = "idle"
DEFAULT_HEARTBEAT = 15.0
CONNECT_BATCH = 100  # streams opened at once by the client, so the listen queue keeps up
SETTLE_SECONDS = 3.0  # after the last stream opened, before measuring


def raise_nofile(wanted: int) -> None:
    """Open files for ``wanted`` sockets and then some (children inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + 256
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(target, need), max(hard, need)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOBSYNC_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Server:
    def __init__(self, data: Path, heartbeat: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blobsync", "server", "--data", str(data), "--port", "0",
             "--local-port", "0", "--sweep-interval", "0", "--feed-heartbeat", str(heartbeat)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
            cwd=ROOT,  # `-m blobsync` looks in the current directory first
        )
        self.host = ""
        self.port = 0
        ready = threading.Event()
        self.log: list[str] = []

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                if (m := READY.search(line)) and not ready.is_set():
                    self.host, self.port = m.group(1), int(m.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60) or not self.port:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(count: int = 1000, seconds: float = 30.0,
            heartbeat: float = DEFAULT_HEARTBEAT) -> dict[str, Any]:
    raise_nofile(count)
    with tempfile.TemporaryDirectory(prefix="idle-watchers-") as tmp:
        data = Path(tmp) / "data"
        server = Server(data, heartbeat)
        client: subprocess.Popen[str] | None = None
        try:
            add = subprocess.run(
                [sys.executable, "-m", "blobsync", "user", "add", USER, "--data", str(data)],
                capture_output=True, text=True, env=_env(), check=True, cwd=ROOT,
            )
            token = add.stdout.strip()
            pid = server.proc.pid
            time.sleep(SETTLE_SECONDS)
            before_mb = rss_mb(pid)
            cpu0 = cpu_seconds(pid)
            time.sleep(min(seconds, 10.0))
            idle_cpu = (cpu_seconds(pid) - cpu0) / min(seconds, 10.0)

            client = subprocess.Popen(
                [sys.executable, __file__, "--client", server.host, str(server.port),
                 token, str(count)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(),
                cwd=ROOT,
            )
            assert client.stdout is not None and client.stdin is not None
            opened = json.loads(client.stdout.readline())
            if opened["open"] != count:
                raise RuntimeError(f"only {opened['open']} of {count} streams opened")
            time.sleep(SETTLE_SECONDS)
            with_start_mb = rss_mb(pid)
            cpu0 = cpu_seconds(pid)
            t0 = time.monotonic()
            time.sleep(seconds)
            cpu1 = cpu_seconds(pid)
            window = time.monotonic() - t0
            with_mb = rss_mb(pid)
            client.stdin.write("report\n")
            client.stdin.flush()
            report = json.loads(client.stdout.readline())
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait()
            server.stop()
    return {
        "count": count,
        "seconds": round(window, 2),
        "heartbeat_seconds": heartbeat,
        "cpu_percent_of_one_core": round((cpu1 - cpu0) / window * 100, 3),
        "cpu_percent_with_no_streams": round(idle_cpu * 100, 3),
        "rss_mb_before": round(before_mb, 1),
        "rss_mb_with": round(with_mb, 1),
        "rss_mb_settled": round(with_start_mb, 1),
        "kb_per_waiter": round((with_mb - before_mb) * 1024 / count, 2),
        "streams_open_at_end": report["open"],
        "heartbeats_received": report["heartbeats"],
    }


# --------------------------------------------------------------------------- client


async def _client(host: str, port: int, token: str, count: int) -> None:
    cred = base64.b64encode(f"{USER}:{token}".encode()).decode()
    request = (
        f"GET /changes/{USER} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Token {cred}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    stats = {"open": 0, "heartbeats": 0}

    async def watch(opened: asyncio.Future[None]) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        stats["open"] += 1
        opened.set_result(None)
        try:
            while chunk := await reader.read(4096):
                stats["heartbeats"] += chunk.count(b": keep-alive")
        finally:
            stats["open"] -= 1
            writer.close()

    loop = asyncio.get_running_loop()
    tasks = []
    for start in range(0, count, CONNECT_BATCH):
        futures = [loop.create_future() for _ in range(min(CONNECT_BATCH, count - start))]
        tasks += [asyncio.ensure_future(watch(f)) for f in futures]
        await asyncio.gather(*futures)
    print(json.dumps({"open": stats["open"]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    print(json.dumps(stats), flush=True)
    for task in tasks:
        task.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="open event streams")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT,
                        help="the server's --feed-heartbeat")
    parser.add_argument("--client", nargs=4, metavar=("HOST", "PORT", "TOKEN", "COUNT"),
                        help=argparse.SUPPRESS)  # the client process's own entry
    args = parser.parse_args()
    if args.client:
        host, port, token, count = args.client
        raise_nofile(int(count))
        asyncio.run(_client(host, int(port), token, int(count)))
        return 0
    print(json.dumps(measure(args.count, args.seconds, args.heartbeat), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
