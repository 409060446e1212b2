"""Real ``blobsync server`` processes for the scale-out tests: started on free ports, their
users added straight into the index they share, killed when the test ends (the
``stop_later`` and ``session`` fixtures live in tests/scaleout/conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil

from blobsync.server.auth import hash_token, new_token
from blobsync.server.storage.factory import make_index
from tests.helpers.subproc import ServerProcess, cli_env


async def start(stop_later: list[ServerProcess], *args: str,
                env: dict[str, str] | None = None) -> ServerProcess:
    """A server on free ports with ``args``, killed at the end of the test."""
    argv = ("--port", "0", "--local-port", "0", *args)
    proc = await asyncio.to_thread(ServerProcess, *argv, env=env or cli_env())
    stop_later.append(proc)
    return proc


async def add_user(metadata: str | None, data: Path, uuid: str) -> str:
    """Add ``uuid`` to the index of ``data`` (or the database ``metadata``); its token."""
    index = make_index(str(data), metadata)
    await index.open()
    try:
        token = new_token()
        await index.add_user(uuid, hash_token(token))
        return token
    finally:
        await index.close()


def pg_s3_args(dsn: str, bucket: str, data: Path, prefix: str) -> tuple[str, ...]:
    """The server options of a deployment on PostgreSQL and an S3 bucket."""
    return ("--data", str(data), "--metadata", dsn, "--payload", f"s3://{bucket}/{prefix}")


def listening_children(master: int, port: int) -> set[int]:
    """Pids of the master's children (``--workers``) that listen on ``port``."""
    return {
        child.pid for child in psutil.Process(master).children()
        for conn in child.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    }
