"""How fast a change reaches a watching device (issue 12), through two server processes on
one PostgreSQL and one S3 bucket (``rclone serve s3``), both started here.

Device A (this process) talks to server 1; device B (bench/watcher.py, a process of its own)
watches through server 2. A puts small blobs one at a time, a little apart; for each, the
time from the start of A's put to B's "downloaded" event. Then the incoming box: a service
delivers messages through server 1's local port, and B's consumer, watching through server
2, takes them; the time from the start of each delivery to the consumer holding it.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from procs import PASSPHRASE, ServerProc, blobsync_argv, clean_env, run_measured  # noqa: E402


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _summary(ms: list[float]) -> dict[str, Any]:
    return {
        "count": len(ms),
        "p50_ms": round(_pct(ms, 50), 1),
        "p90_ms": round(_pct(ms, 90), 1),
        "p99_ms": round(_pct(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


class Watcher:
    """bench/watcher.py in a process of its own, its events on a queue."""

    def __init__(self, home: Path) -> None:
        env = clean_env(BLOBSYNC_PASSPHRASE=PASSPHRASE)
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "watcher.py"), str(home)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(home / "watcher.log", "w"),  # noqa: SIM115
            env=env, text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def wait_for(self, kind: str, ids: set[str], timeout: float) -> dict[str, float]:
        """{id: time} of the ``kind`` events of ``ids``, waiting up to ``timeout`` s."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < len(ids):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"watcher saw {len(seen)} of {len(ids)} {kind} events")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev["kind"] == kind and ev["id"] in ids:
                seen[ev["id"]] = ev["t"]
        return seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _puts(home: Path, count: int) -> tuple[dict[str, float], dict[str, float]]:
    """Put ``count`` blobs; (start of each put, end of each put) by id."""
    from blobsync.client import BlobManager

    manager = await BlobManager.open(home, passphrase=PASSPHRASE)
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    try:
        for i in range(count):
            blob_id = f"prop-{i:04d}-{os.urandom(4).hex()}"
            started[blob_id] = time.time()
            await manager.put(blob_id, os.urandom(2000))
            ended[blob_id] = time.time()
            # A little apart, at random, so that puts do not line up with anything.
            await asyncio.sleep(random.uniform(0.02, 0.06))
    finally:
        await manager.close()
    return started, ended


async def _deliveries(local_url: str, user: str, service: str, token: str,
                      count: int) -> dict[str, float]:
    import base64

    auth = base64.b64encode(f"{service}:{token}".encode()).decode()
    started: dict[str, float] = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Token {auth}"}) as s:
        for i in range(count):
            blob_id = f"mail-{i:04d}-{os.urandom(4).hex()}"
            started[blob_id] = time.time()
            async with s.put(f"{local_url}/incoming/{user}/{blob_id}",
                             data=os.urandom(3000)) as r:
                if r.status != 200:
                    raise RuntimeError(f"delivery refused: {r.status} {await r.text()}")
            await asyncio.sleep(random.uniform(0.02, 0.06))
    return started


def measure(work: Path, count: int = 300, mails: int = 100, log: Any = print) -> dict[str, Any]:
    from tests.harness.pg import create_database, running_postgres
    from tests.harness.s3 import create_bucket, running_rclone_s3

    out: dict[str, Any] = {"puts": count, "mails": mails}
    with running_postgres() as pg, running_rclone_s3() as s3:
        dsn = asyncio.run(create_database(pg.dsn_for("postgres")))
        ep = s3.endpoint
        bucket = asyncio.run(create_bucket(ep))
        s3_env = {"AWS_ACCESS_KEY_ID": ep.access_key, "AWS_SECRET_ACCESS_KEY": ep.secret_key,
                  "AWS_ENDPOINT_URL": ep.url, "AWS_DEFAULT_REGION": "us-east-1"}
        args = ("--metadata", dsn, "--payload", f"s3://{bucket}/bench")
        servers = []
        try:
            for i in (1, 2):
                data = work / f"prop-server-{i}"
                data.mkdir(parents=True, exist_ok=True)
                servers.append(ServerProc(data, extra=args, env=s3_env))
            one, two = servers
            admin = clean_env(**s3_env)
            token = run_measured(blobsync_argv("user", "add", "bench", "--data", str(one.data),
                                               "--metadata", dsn), env=admin).check().stdout.strip()
            service_token = run_measured(
                blobsync_argv("service", "add", "incoming", "--data", str(one.data),
                              "--metadata", dsn), env=admin,
            ).check().stdout.strip()
            env = clean_env(BLOBSYNC_PASSPHRASE=PASSPHRASE, BLOBSYNC_TOKEN=token)
            home_a, home_b = work / "prop-A", work / "prop-B"
            run_measured(blobsync_argv("--home", str(home_a), "init", "--server", one.url,
                                       "--user", "bench"), env=env).check()
            run_measured(blobsync_argv("--home", str(home_b), "init", "--server", two.url,
                                       "--user", "bench", "--recover"), env=env).check()
            watcher = Watcher(home_b)
            try:
                watcher.wait_for("ready", {None}, 60)  # type: ignore[arg-type]
                # Warm up: the first full listing, the connections, the imports.
                warm, _ = asyncio.run(_puts(home_a, 5))
                watcher.wait_for("downloaded", set(warm), 60)
                log(f"  propagation: {count} puts on server 1, watched through server 2")
                started, ended = asyncio.run(_puts(home_a, count))
                arrived = watcher.wait_for("downloaded", set(started), 120)
                # From the start of the put (sealing and upload included), and from its
                # end (the blob committed on server 1) to B holding it.
                out["put_to_device"] = _summary(
                    [(arrived[b] - started[b]) * 1000 for b in started])
                out["commit_to_device"] = _summary(
                    [(arrived[b] - ended[b]) * 1000 for b in started])
                out["put_itself"] = _summary([(ended[b] - started[b]) * 1000 for b in started])
                log(f"    p50 {out['put_to_device']['p50_ms']} ms, "
                    f"p99 {out['put_to_device']['p99_ms']} ms from the put's start "
                    f"(the put itself: p50 {out['put_itself']['p50_ms']} ms)")
                log(f"  propagation: {mails} deliveries to the incoming box")
                started = asyncio.run(_deliveries(one.local_url, "bench", "incoming",
                                                  service_token, mails))
                arrived = watcher.wait_for("consumed", set(started), 120)
                ms = [(arrived[b] - started[b]) * 1000 for b in started]
                out["delivery_to_consumer"] = _summary(ms)
                log(f"    p50 {out['delivery_to_consumer']['p50_ms']} ms, "
                    f"p99 {out['delivery_to_consumer']['p99_ms']} ms")
            finally:
                watcher.stop()
        finally:
            for s in servers:
                s.stop()
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 300),
                         indent=1))
