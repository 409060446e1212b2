"""The server alone on small-blob streams: what it can take when the client costs nothing.

    .venv/bin/python bench/stream_micro.py [--count 10000] [--size 10000] [--per-stream 1000]
                                           [--profile DIR] [--repeat 3]

Starts ``blobsync server`` in a temporary directory, pre-seals the blobs in this process,
then sends them in stream uploads of ``--per-stream`` blobs, one request at a time, and
downloads them back the same way. Prints blobs/s and the server's CPU seconds for each
direction (best of ``--repeat``, each repeat on new ids). With ``--profile`` the server is
recorded with py-spy (see profile_view.py). This is the tool for work on the server's
stream path; bench/run.py measures the whole system.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import ServerProc  # noqa: E402

from blobsync.format import encode_upstream_header, seal  # noqa: E402
from blobsync.format.limits import FRAME_HEADER_SIZE  # noqa: E402


async def run(url: str, token: str, ids: list[str], sealed: list[bytes], per: int,
              server: ServerProc, profile: Path | None, tag: str) -> dict[str, float]:
    auth = "Token " + base64.b64encode(f"bench:{token}".encode()).decode()
    out: dict[str, float] = {}
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as s:
        for direction in ("upload", "download"):
            stats: dict[str, float] = {}
            with server.watch(stats, profile / f"{tag}-{direction}.txt" if profile else None):
                t0 = time.perf_counter()
                for i in range(0, len(ids), per):
                    chunk_ids, chunk = ids[i:i + per], sealed[i:i + per]
                    params = {"direction": direction, "namespace": "micro"}
                    if direction == "upload":
                        body = encode_upstream_header(
                            [(b, len(x)) for b, x in zip(chunk_ids, chunk, strict=True)]
                        ) + b"".join(chunk)
                        async with s.post(f"{url}/stream/bench", params=params,
                                          data=body) as r:
                            doc = await r.json()
                            assert r.status == 200 and len(doc["stored"]) == len(chunk), doc
                    else:
                        async with s.post(f"{url}/stream/bench", params=params,
                                          data=json.dumps(chunk_ids).encode()) as r:
                            got = 0
                            async for part in r.content.iter_chunked(1 << 16):
                                got += len(part)
                            want = sum(FRAME_HEADER_SIZE + len(x) for x in chunk)
                            assert r.status == 200 and got == want, (r.status, got, want)
                seconds = time.perf_counter() - t0
            out[f"{direction}_blobs_per_s"] = round(len(ids) / seconds, 1)
            out[f"{direction}_server_cpu_ms_per_blob"] = round(
                1000 * stats["server_cpu_s"] / len(ids), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--size", type=int, default=10_000)
    p.add_argument("--per-stream", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", type=Path)
    p.add_argument("--log-level", default="info")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blobsync-micro-"))
    secret = os.urandom(128)
    plain = os.urandom(args.size)
    results: list[dict[str, float]] = []
    try:
        with ServerProc(work / "data", log_level=args.log_level) as server:
            token = server.add_user("bench")
            for rep in range(args.repeat):
                ids = [f"r{rep}-{os.urandom(16).hex()}" for _ in range(args.count)]
                sealed = [seal(secret, i, plain) for i in ids]
                res = asyncio.run(run(server.url, token, ids, sealed, args.per_stream, server,
                                      args.profile, f"micro-{rep}"))
                print(json.dumps(res), flush=True)
                results.append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: max(r[k] for r in results) if "per_s" in k else min(r[k] for r in results)
            for k in results[0]}
    print("best:", json.dumps(best))


if __name__ == "__main__":
    main()
