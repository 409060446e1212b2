"""The scale-out deployment of the benchmark: PostgreSQL metadata and S3 payloads (``rclone
serve s3``), both started here with the test harness's own helpers (tests/harness: a
throwaway PostgreSQL cluster, run with fsync off, and rclone on a temporary directory), and
the S3 request counter of a server (``blobsync_s3_requests_total`` on its /metrics).

Not named scaleout.py: the tests import tests/scaleout as a package of that name.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from procs import ServerProc, blobsync_argv, clean_env, run_measured  # noqa: E402

S3_REQUESTS = "blobsync_s3_requests_total"


@dataclass(frozen=True)
class PgS3:
    """One new database and one new bucket on the running PostgreSQL and S3 servers."""

    dsn: str
    bucket: str
    s3_env: dict[str, str]  # the AWS_* variables a server needs to reach the bucket
    postmaster: int = 0  # PostgreSQL's pid: its backends' CPU is the deployment's too

    def server_args(self, prefix: str) -> tuple[str, ...]:
        return ("--metadata", self.dsn, "--payload", f"s3://{self.bucket}/{prefix}")

    def server(self, data: Path, prefix: str, extra: tuple[str, ...] = ()) -> ServerProc:
        data.mkdir(parents=True, exist_ok=True)
        return ServerProc(data, extra=(*self.server_args(prefix), *extra), env=self.s3_env)

    def add_user(self, data: Path, user: str) -> str:
        """A new user in the shared database, through the CLI; returns the token."""
        done = run_measured(
            blobsync_argv("user", "add", user, "--data", str(data), "--metadata", self.dsn),
            env=clean_env(**self.s3_env),
        ).check()
        return done.stdout.strip()


@contextlib.contextmanager
def pg_s3() -> Iterator[PgS3]:
    """Start PostgreSQL and ``rclone serve s3``; stop and remove both at the end."""
    from tests.harness.pg import create_database, running_postgres
    from tests.harness.s3 import create_bucket, running_rclone_s3

    with running_postgres() as pg, running_rclone_s3() as s3:
        dsn = asyncio.run(create_database(pg.dsn_for("postgres")))
        ep = s3.endpoint
        bucket = asyncio.run(create_bucket(ep))
        postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        yield PgS3(dsn, bucket, {
            "AWS_ACCESS_KEY_ID": ep.access_key, "AWS_SECRET_ACCESS_KEY": ep.secret_key,
            "AWS_ENDPOINT_URL": ep.url, "AWS_DEFAULT_REGION": "us-east-1",
        }, postmaster)


def s3_requests(local_url: str) -> dict[str, float]:
    """The server's S3 requests so far, by operation (with ``--workers``, all workers')."""
    with urllib.request.urlopen(local_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return parse_s3_requests(text)


def parse_s3_requests(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(S3_REQUESTS + "{"):
            labels, _, number = line.rpartition(" ")
            op = labels.split('op="', 1)[1].split('"', 1)[0]
            out[op] = out.get(op, 0.0) + float(number)
    return out


def requests_between(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """The requests sent between two readings, by operation (those that moved)."""
    moved = {op: round(after.get(op, 0.0) - before.get(op, 0.0)) for op in after}
    return {op: n for op, n in sorted(moved.items()) if n}
