"""Issue 13, scale-out: small payloads on PostgreSQL + S3, inline rows or packs, measured.

    /work/main/.venv/bin/python bench/scaleout_choice.py [--count 10000] [--reps 3]
    /work/main/.venv/bin/python bench/scaleout_choice.py --e2e [--server-tree DIR]

Storage level (the default): a real PostgreSQL (durable: fsync and synchronous_commit on,
unlike the test harness's) and a real ``rclone serve s3``, both from tests/harness. It
stores ``--count`` sealed ~10 KB payloads in batches of ``--batch`` (a stream upload's
batch), then reads them back in batches, through

- (a) ``inline``: the product's tier, ``TieredPayloads(PostgresPayloads, S3Payloads)``:
  one INSERT per batch up, one SELECT per batch down;
- (b) ``packs``: a minimal segment prototype kept here: a batch is one S3 object (a PUT and
  the HEAD that verifies it, as S3Payloads does), a location names (segment, offset,
  length), and a read groups its locations by segment, one ranged GET each. No
  compaction, no gc: the costs those add are not measured here (docs/storage.md);
- (b) again with the reads in shuffled order (``packs-shuffled``): a download whose order
  is not the upload's, e.g. after other devices' uploads interleaved.

Each prints seconds, blobs/s and S3 requests (HTTP requests the S3 client sent, counted on
botocore's ``before-send`` event) per blob, each way, per repetition, and the median.

``--e2e``: the ``small`` flow of bench/sections.py on a PostgreSQL + S3 server (a
``blobsync put`` of the small files on device A, a ``sync`` on device B), with the S3
objects in the bucket counted after each; ``--server-tree`` runs another copy of the
package as the server (a before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import asyncpg  # noqa: E402

from blobsync.format import seal  # noqa: E402
from blobsync.server.storage.pgpayloads import PostgresPayloads  # noqa: E402
from blobsync.server.storage.s3 import S3Payloads  # noqa: E402
from blobsync.server.storage.tiered import TieredPayloads  # noqa: E402
from tests.harness.pg import create_database, running_postgres  # noqa: E402
from tests.harness.s3 import S3Endpoint, create_bucket, running_rclone_s3  # noqa: E402

USER, NS = "bench", "default"


def durable(admin_dsn: str) -> None:
    """The harness runs PostgreSQL with fsync off; a fair comparison needs it on."""

    async def run() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            for setting in ("fsync = on", "synchronous_commit = on", "full_page_writes = on"):
                await conn.execute(f"ALTER SYSTEM SET {setting}")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    asyncio.run(run())


class Counter:
    """S3 HTTP requests sent by one client, retries included."""

    def __init__(self) -> None:
        self.n = 0

    def attach(self, s3: S3Payloads) -> None:
        s3.client.meta.events.register("before-send.s3", self._count)

    def _count(self, **_: Any) -> None:
        self.n += 1


def s3_store(endpoint: S3Endpoint, bucket: str) -> S3Payloads:
    return S3Payloads(bucket, "blobs", endpoint_url=endpoint.url,
                      access_key=endpoint.access_key, secret_key=endpoint.secret_key)


# (b) the segment prototype -------------------------------------------------------------
class Packs:
    """A batch is one S3 object; ``seg:{key}:{offset}:{length}`` names a payload in it."""

    def __init__(self, s3: S3Payloads) -> None:
        self.s3 = s3

    async def store_many(self, items: list[tuple[str, bytes]]) -> list[str]:
        key = f"{self.s3.prefix}seg/{uuid.uuid4().hex}"
        body = b"".join(data for _, data in items)
        await self.s3.client.put_object(Bucket=self.s3.bucket, Key=key, Body=body)
        head = await self.s3.client.head_object(Bucket=self.s3.bucket, Key=key)
        assert int(head["ContentLength"]) == len(body)
        out, offset = [], 0
        for _, data in items:
            out.append(f"seg:{key}:{offset}:{len(data)}")
            offset += len(data)
        return out

    async def read_many(self, locations: list[str]) -> list[bytes]:
        by_segment: dict[str, list[tuple[int, int, int]]] = {}
        for i, loc in enumerate(locations):
            _, key, off, length = loc.split(":")  # keys hold no ':'
            by_segment.setdefault(key, []).append((i, int(off), int(length)))
        out: list[bytes] = [b""] * len(locations)
        for key, parts in by_segment.items():
            lo = min(off for _, off, _ in parts)
            hi = max(off + length for _, off, length in parts)
            got = await self.s3.client.get_object(
                Bucket=self.s3.bucket, Key=key, Range=f"bytes={lo}-{hi - 1}"
            )
            async with got["Body"] as body:
                data = await body.read()
            for i, off, length in parts:
                out[i] = data[off - lo : off - lo + length]
        return out


# the storage-level runs --------------------------------------------------------------
def payloads(count: int) -> list[tuple[str, bytes]]:
    secret = os.urandom(128)
    return [(f"b{i:06d}", seal(secret, f"b{i:06d}", os.urandom(10_000))) for i in range(count)]


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def one_rep(way: str, dsn: str, endpoint: S3Endpoint, items: list[tuple[str, bytes]],
                  batch: int) -> dict[str, Any]:
    bucket = await create_bucket(endpoint)
    s3 = s3_store(endpoint, bucket)
    counter = Counter()
    inline = PostgresPayloads(dsn)
    tiered = TieredPayloads(inline, s3)
    await tiered.open()
    counter.attach(s3)
    packs = Packs(s3)
    try:
        t0, before = time.perf_counter(), counter.n
        locations: list[str] = []
        for run in batches(items, batch):
            if way == "inline":
                locations += await tiered.store_many(USER, NS, run)
            else:
                locations += await packs.store_many(run)
        up_s, up_req = time.perf_counter() - t0, counter.n - before
        order = list(range(len(items)))
        if way == "packs-shuffled":
            random.Random(13).shuffle(order)
        t0, before = time.perf_counter(), counter.n
        for run in batches(order, batch):
            wanted = [locations[i] for i in run]
            got = await (tiered.read_many(wanted) if way == "inline"
                         else packs.read_many(wanted))
            if got != [items[i][1] for i in run]:
                raise RuntimeError(f"{way}: read back other bytes")
        down_s, down_req = time.perf_counter() - t0, counter.n - before
        conn = await asyncpg.connect(dsn)
        try:
            pg_bytes = await conn.fetchval("SELECT pg_total_relation_size('payloads')")
            await conn.execute("TRUNCATE payloads")
        finally:
            await conn.close()
    finally:
        await tiered.close()
    n = len(items)
    return {
        "up_s": round(up_s, 3), "up_blobs_s": round(n / up_s), "up_req_blob": up_req / n,
        "down_s": round(down_s, 3), "down_blobs_s": round(n / down_s),
        "down_req_blob": down_req / n, "pg_table_mb": round(pg_bytes / 1e6, 1),
    }


def storage_level(args: argparse.Namespace) -> dict[str, Any]:
    items = payloads(args.count)
    sealed_mb = sum(len(d) for _, d in items) / 1e6
    print(f"{args.count} sealed payloads, {sealed_mb:.1f} MB, batches of {args.batch}")
    results: dict[str, list[dict[str, Any]]] = {}
    with running_postgres() as pg, running_rclone_s3() as s3server:
        durable(pg.dsn)
        dsn = asyncio.run(create_database(pg.dsn))
        for rep in range(args.reps):
            for way in ("inline", "packs", "packs-shuffled"):  # alternated, rep by rep
                r = asyncio.run(one_rep(way, dsn, s3server.endpoint, items, args.batch))
                results.setdefault(way, []).append(r)
                print(f"rep {rep + 1} {way:15} up {r['up_s']:6.2f} s {r['up_blobs_s']:6}/s "
                      f"{r['up_req_blob']:.4f} req/blob | down {r['down_s']:6.2f} s "
                      f"{r['down_blobs_s']:6}/s {r['down_req_blob']:.4f} req/blob | "
                      f"PostgreSQL table {r['pg_table_mb']} MB", flush=True)
    print("medians:")
    summary: dict[str, Any] = {}
    for way, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        summary[way] = med
        print(f"  {way:15} up {med['up_s']:.2f} s ({med['up_blobs_s']:.0f}/s, "
              f"{med['up_req_blob']:.4f} req/blob), down {med['down_s']:.2f} s "
              f"({med['down_blobs_s']:.0f}/s, {med['down_req_blob']:.4f} req/blob)")
    return {"runs": results, "medians": summary}


# end to end --------------------------------------------------------------------------
def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    import sections
    from procs import ServerProc, blobsync_argv, clean_env, run_measured

    if args.server_tree:
        os.environ["BENCH_SERVER_TREE"] = str(Path(args.server_tree).resolve())
    work = Path(args.work or f"/tmp/scaleout-e2e-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    ctx = sections.Context(work, sections.FULL if args.count == 10_000 else sections.Scale(
        "custom", args.count, 10_000, 1 << 20, 1000, 1.0, 1),
        Path(args.profile).resolve() if args.profile else None)
    files = ctx.small_files()
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        pg = stack.enter_context(running_postgres())
        s3server = stack.enter_context(running_rclone_s3())
        durable(pg.dsn)
        dsn = asyncio.run(create_database(pg.dsn))
        bucket = asyncio.run(create_bucket(s3server.endpoint))
        env = {"BLOBSYNC_METADATA": dsn, "BLOBSYNC_PAYLOAD": f"s3://{bucket}/blobs",
               **s3server.endpoint.env()}
        if args.default_store:
            env = {}  # the data dir's SQLite and files, for the 0.7x ratio
        server = stack.enter_context(ServerProc(work / "server", env=env))

        def add_user(user: str) -> str:
            argv = blobsync_argv("user", "add", user, "--data", str(server.data))
            return run_measured(argv, env=clean_env(**env)).check().stdout.strip()

        server.add_user = add_user  # type: ignore[method-assign]

        def objects() -> int:
            return sum(len(f) for _, _, f in os.walk(s3server.root / bucket))

        token = add_user("bench")
        a = sections._device(ctx, server, token, "A")
        b = sections._device(ctx, server, token, "B", recover=True)
        n = args.count
        up = sections._put(ctx, server, a, files, "small", [], n, "up")
        out["up"] = {"seconds": up["seconds"], "files_per_s": round(n / up["seconds"]),
                     "objects_after": objects(), "server_cpu_s": up.get("server_cpu_s"),
                     "client_cpu_s": up.get("client_cpu_s")}
        down, _ = sections._sync(ctx, server, b, "small", [], n, "down")
        out["down"] = {"seconds": down["seconds"], "files_per_s": round(n / down["seconds"]),
                       "server_cpu_s": down.get("server_cpu_s"),
                       "client_cpu_s": down.get("client_cpu_s")}
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--e2e", action="store_true", help="the small flow through a server")
    p.add_argument("--server-tree", help="with --e2e: another copy of the package as server")
    p.add_argument("--default-store", action="store_true",
                   help="with --e2e: the default store instead, for the ratio")
    p.add_argument("--profile", help="with --e2e: record the server with py-spy here")
    p.add_argument("--work", help="with --e2e: work directory (default /tmp/...)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    run: Callable[[argparse.Namespace], dict[str, Any]] = (
        end_to_end if args.e2e else storage_level)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
