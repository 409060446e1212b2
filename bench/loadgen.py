"""Load generator: N concurrent clients streaming small blobs at a blobsync server.

    python bench/loadgen.py --url URL --user U --token T [--clients 32] [--seconds 30]

Each client has its own HTTP session (one connection) and loops until the time is up or
the blob budget is spent: one stream upload of ``--batch`` new blobs, then one stream
download of the same blobs. Every request's latency is recorded; an error is any failed
request, a status other than 200, an upload whose answer does not list every blob as
stored, or a download of the wrong length. Prints one JSON document.

Blobs are sealed with a random key of this process: the server checks their preamble, not
their content, so the figures are the server's and the wire's, not the client's crypto.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from dataclasses import dataclass, field

import aiohttp

from blobsync.format import encode_upstream_header, seal
from blobsync.format.limits import FRAME_HEADER_SIZE


@dataclass
class Totals:
    up_latencies: list[float] = field(default_factory=list)
    down_latencies: list[float] = field(default_factory=list)
    blobs_up: int = 0
    blobs_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(text[:300])


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


async def client(
    cid: int, args: argparse.Namespace, deadline: float, budget: list[int], totals: Totals
) -> None:
    secret = os.urandom(128)
    plain = os.urandom(args.size)
    auth = "Token " + base64.b64encode(f"{args.user}:{args.token}".encode()).decode()
    base = args.url.rstrip("/") + f"/stream/{args.user}"
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        headers={"Authorization": auth}, timeout=timeout,
        connector=aiohttp.TCPConnector(limit=1),
    ) as session:
        n = 0
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= args.batch
            ids = [f"load-{cid}-{n}-{j}" for j in range(args.batch)]
            n += 1
            sealed = [seal(secret, i, plain) for i in ids]
            body = encode_upstream_header([(i, len(s)) for i, s in zip(ids, sealed, strict=True)])
            body += b"".join(sealed)
            t0 = time.perf_counter()
            try:
                async with session.post(
                    base, params={"direction": "upload", "namespace": "load"}, data=body
                ) as resp:
                    answer = await resp.read()
                    if resp.status != 200:
                        totals.error(f"upload {resp.status}: {answer[:200]!r}")
                        continue
                    doc = json.loads(answer)
                    if sorted(doc.get("stored", [])) != sorted(ids):
                        totals.error(f"upload stored {len(doc.get('stored', []))} of {len(ids)}")
                        continue
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                totals.error(f"upload: {type(exc).__name__}: {exc}")
                continue
            totals.up_latencies.append(time.perf_counter() - t0)
            totals.blobs_up += len(ids)
            totals.bytes_up += len(body)
            expected = sum(FRAME_HEADER_SIZE + len(s) for s in sealed)
            t0 = time.perf_counter()
            try:
                async with session.post(
                    base, params={"direction": "download", "namespace": "load"},
                    data=json.dumps(ids).encode(), headers={"Content-Type": "application/json"},
                ) as resp:
                    got = 0
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        got += len(chunk)
                    if resp.status != 200 or got != expected:
                        totals.error(f"download {resp.status}: {got} bytes of {expected}")
                        continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                totals.error(f"download: {type(exc).__name__}: {exc}")
                continue
            totals.down_latencies.append(time.perf_counter() - t0)
            totals.blobs_down += len(ids)
            totals.bytes_down += got


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    totals = Totals()
    budget = [args.max_blobs]
    start = time.monotonic()
    deadline = start + args.seconds
    await asyncio.gather(*(client(c, args, deadline, budget, totals) for c in range(args.clients)))
    elapsed = time.monotonic() - start
    lat = totals.up_latencies + totals.down_latencies
    ms = 1000.0
    return {
        "clients": args.clients,
        "seconds": round(elapsed, 2),
        "batch": args.batch,
        "blob_size": args.size,
        "requests": len(lat),
        "blobs_up": totals.blobs_up,
        "blobs_down": totals.blobs_down,
        "blobs_per_s": round((totals.blobs_up + totals.blobs_down) / elapsed, 1),
        "up_blobs_per_s": round(totals.blobs_up / elapsed, 1),
        "down_blobs_per_s": round(totals.blobs_down / elapsed, 1),
        "mb_per_s": round((totals.bytes_up + totals.bytes_down) / elapsed / 1e6, 2),
        "p50_ms": round(quantile(lat, 0.50) * ms, 1),
        "p99_ms": round(quantile(lat, 0.99) * ms, 1),
        "up_p50_ms": round(quantile(totals.up_latencies, 0.50) * ms, 1),
        "up_p99_ms": round(quantile(totals.up_latencies, 0.99) * ms, 1),
        "down_p50_ms": round(quantile(totals.down_latencies, 0.50) * ms, 1),
        "down_p99_ms": round(quantile(totals.down_latencies, 0.99) * ms, 1),
        "errors": totals.errors,
        "error_samples": totals.error_samples,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--token", default=os.environ.get("LOADGEN_TOKEN"))
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--batch", type=int, default=20, help="blobs per stream request")
    p.add_argument("--size", type=int, default=10_000, help="plaintext bytes per blob")
    p.add_argument("--max-blobs", type=int, default=1_000_000,
                   help="stop after uploading this many blobs in all (bounds the disk used)")
    args = p.parse_args()
    if not args.token:
        p.error("--token or LOADGEN_TOKEN is required")
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
