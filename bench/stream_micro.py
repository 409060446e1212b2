"""The server alone on small-blob streams: what it can take when the client costs nothing.

    .venv/bin/python bench/stream_micro.py [--count 10000] [--size 10000] [--per-stream 1000]
                                           [--profile DIR] [--repeat 3] [--threads]
                                           [--meta CHARS]

Starts ``blobsync server`` in a temporary directory, pre-seals the blobs in this process,
then sends them in stream uploads of ``--per-stream`` blobs, one request at a time, and
downloads them back the same way. Prints blobs/s and the server's CPU seconds for each
direction (best of ``--repeat``, each repeat on new ids). With ``--profile`` the server is
recorded with py-spy (see profile_view.py). ``--threads`` adds the server's CPU per blob
of each thread (user and system, from /proc/<pid>/task; named with py-spy dump), the
event loop apart from the SQLite threads. ``BENCH_SERVER_TREE`` runs the server from
another copy of the package. ``--pg-s3`` runs it on PostgreSQL + ``rclone serve s3``
(bench/pg_s3.py) and adds PostgreSQL's CPU per blob (its backends work for the server, on
the same cores). This is the tool for work on the server's stream path;
bench/run.py measures the whole system. ``--meta CHARS`` gives every blob a meta of that
many characters (SPEC 11: a third element of each pair; a well-formed text the server
checks and keeps, as a device's sealed meta of a name would be).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import ServerProc, py_spy  # noqa: E402

from blobsync.format import encode_upstream_header, seal  # noqa: E402
from blobsync.format.limits import FRAME_HEADER_SIZE  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of each thread of ``pid``, by thread id."""
    out: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) / TICKS, int(fields[12]) / TICKS)
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python's thread names by thread id (py-spy dump), the pool suffix dropped."""
    try:
        text = subprocess.run([py_spy(), "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names: dict[int, str] = {}
    for m in re.finditer(r"^Thread (0x[0-9A-Fa-f]+|\d+) \([^)]*\): \"([^\"]*)\"", text, re.M):
        tid = int(m.group(1), 0)
        names[tid] = re.sub(r"_\d+$", "", m.group(2))
    return names


def per_thread(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]],
               names: dict[int, str], count: int) -> dict[str, str]:
    """us of CPU per blob of each thread group, as "user+system"."""
    groups: dict[str, list[float]] = {}
    for tid, (user, system) in after.items():
        u0, s0 = before.get(tid, (0.0, 0.0))
        name = names.get(tid, f"tid{tid}")
        g = groups.setdefault(name, [0.0, 0.0])
        g[0] += user - u0
        g[1] += system - s0
    return {name: f"{1e6 * u / count:.1f}+{1e6 * s / count:.1f}"
            for name, (u, s) in sorted(groups.items()) if u + s > 0}


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s children (PostgreSQL's backends and helpers)."""
    total = 0.0
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = child.cpu_times()
            total += t.user + t.system
    return total


async def run(url: str, token: str, ids: list[str], sealed: list[bytes], per: int,
              server: ServerProc, profile: Path | None, tag: str,
              threads: bool = False, postmaster: int = 0,
              metas: list[str] | None = None) -> dict[str, object]:
    auth = "Token " + base64.b64encode(f"bench:{token}".encode()).decode()
    out: dict[str, object] = {}
    names = thread_names(server.pid) if threads else {}
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as s:
        for direction in ("upload", "download"):
            stats: dict[str, float] = {}
            before = thread_times(server.pid) if threads else {}
            pg0 = tree_cpu(postmaster) if postmaster else 0.0
            with server.watch(stats, profile / f"{tag}-{direction}.txt" if profile else None):
                t0 = time.perf_counter()
                for i in range(0, len(ids), per):
                    chunk_ids, chunk = ids[i:i + per], sealed[i:i + per]
                    params = {"direction": direction, "namespace": "micro"}
                    if direction == "upload":
                        pairs: list[tuple[object, ...]] = [
                            (b, len(x)) for b, x in zip(chunk_ids, chunk, strict=True)]
                        if metas is not None:
                            pairs = [(*pair, m) for pair, m in zip(pairs, metas[i:i + per],
                                                                   strict=True)]
                        body = encode_upstream_header(pairs) + b"".join(chunk)
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
            if postmaster:
                # Backends that ended meanwhile are not counted: the pool keeps its own.
                out[f"{direction}_pg_cpu_ms_per_blob"] = round(
                    1000 * (tree_cpu(postmaster) - pg0) / len(ids), 3)
            if threads:
                after = thread_times(server.pid)
                if set(after) - set(names):
                    names.update(thread_names(server.pid))
                out[f"{direction}_us_per_blob_by_thread"] = per_thread(
                    before, after, names, len(ids))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--size", type=int, default=10_000)
    p.add_argument("--per-stream", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", type=Path)
    p.add_argument("--log-level", default="info")
    p.add_argument("--threads", action="store_true",
                   help="CPU per blob of each server thread (user+system us)")
    p.add_argument("--pg-s3", action="store_true",
                   help="the server on PostgreSQL + rclone serve s3 (bench/pg_s3.py)")
    p.add_argument("--meta", type=int, default=0,
                   help="a meta of this many characters per blob (a multiple of 4, >= 40)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blobsync-micro-"))
    secret = os.urandom(128)
    plain = os.urandom(args.size)
    results: list[dict[str, object]] = []
    try:
        with contextlib.ExitStack() as stack:
            postmaster = 0
            if args.pg_s3:
                from pg_s3 import pg_s3

                dep = stack.enter_context(pg_s3())
                postmaster = dep.postmaster
                server = stack.enter_context(
                    dep.server(work / "data", "micro"))
                token = dep.add_user(work / "data", "bench")
            else:
                server = stack.enter_context(
                    ServerProc(work / "data", log_level=args.log_level))
                token = server.add_user("bench")
            for rep in range(args.repeat):
                ids = [f"r{rep}-{os.urandom(16).hex()}" for _ in range(args.count)]
                sealed = [seal(secret, i, plain) for i in ids]
                metas = [base64.urlsafe_b64encode(os.urandom(args.meta // 4 * 3)).decode()
                         for _ in ids] if args.meta else None
                res = asyncio.run(run(server.url, token, ids, sealed, args.per_stream, server,
                                      args.profile, f"micro-{rep}", args.threads,
                                      postmaster, metas))
                print(json.dumps(res), flush=True)
                results.append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = [{k: float(v) for k, v in r.items() if isinstance(v, float | int)}
               for r in results]
    best = {k: max(r[k] for r in figures) if "per_s" in k else min(r[k] for r in figures)
            for k in figures[0]}
    print("best:", json.dumps(best))


if __name__ == "__main__":
    main()
