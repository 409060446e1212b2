"""A throwaway PostgreSQL cluster for the test session, and a fresh database per test.

The cluster lives in a temporary directory, listens on 127.0.0.1 on a free port (and on a
unix socket inside that directory), trusts local connections, and runs with fsync off: it
holds nothing worth keeping. PostgreSQL refuses to run as root, so when the tests run as
root the server runs as the ``postgres`` system user (or ``nobody``) through ``runuser``.

Fixtures:
- ``postgres_server`` (session): the running cluster, a ``PostgresServer``.
- ``postgres_dsn`` (session): the superuser DSN of its ``postgres`` database.
- ``postgres_db`` (function): the DSN of a new, empty database, dropped after the test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

__all__ = [
    "PostgresServer",
    "create_database",
    "drop_database",
    "drop_database_later",
    "find_pg_bin",
    "postgres_db",
    "postgres_dsn",
    "postgres_server",
    "running_postgres",
]

SUPERUSER = "postgres"
_START_TRIES = 5


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    socket_dir: Path
    data_dir: Path
    log_file: Path

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")


def find_pg_bin() -> Path:
    """The directory holding initdb and pg_ctl; BLOBSYNC_PG_BIN overrides the search."""
    candidates: list[Path] = []
    if override := os.environ.get("BLOBSYNC_PG_BIN"):
        candidates.append(Path(override))
    # Debian keeps them off PATH, one directory per major version: take the newest.
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/ensure-postgres.sh"
        " or set BLOBSYNC_PG_BIN",
        pytrace=False,
    )


def _server_account() -> pwd.struct_passwd | None:
    """The account to run the server as: None means ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], account: pwd.struct_passwd | None, cwd: Path) -> None:
    if account is not None:
        cmd = ["runuser", "-u", account.pw_name, "--", *cmd]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


def _chown_tree(root: Path, account: pwd.struct_passwd) -> None:
    os.chown(root, account.pw_uid, account.pw_gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), account.pw_uid, account.pw_gid)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Create, start, and at the end stop and remove a PostgreSQL cluster."""
    bindir = find_pg_bin()
    account = _server_account()
    # Not pytest's tmp_path: its parents are private to root, and the server user must
    # reach this directory.
    root = Path(tempfile.mkdtemp(prefix="blobsync-pg-"))
    data_dir, socket_dir, log_file = root / "data", root / "sock", root / "server.log"
    socket_dir.mkdir()
    if account is not None:
        _chown_tree(root, account)
    started = False
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-locale",
                "--encoding=UTF8",
                "--no-sync",
            ],
            account,
            root,
        )
        for attempt in range(_START_TRIES):
            port = _free_port()
            options = " ".join(
                [
                    "-c listen_addresses=127.0.0.1",
                    f"-p {port}",
                    f"-k {socket_dir}",
                    # Throwaway data: durability only costs time here.
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=300",
                ]
            )
            try:
                _run(
                    [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(data_dir),
                        "-l",
                        str(log_file),
                        "-w",
                        "-t",
                        "60",
                        "-o",
                        options,
                        "start",
                    ],
                    account,
                    root,
                )
            except RuntimeError:
                # Most likely someone took the port between our probe and the bind.
                if attempt == _START_TRIES - 1:
                    log = log_file.read_text(errors="replace") if log_file.exists() else ""
                    raise RuntimeError(f"PostgreSQL did not start; its log:\n{log}") from None
                continue
            started = True
            break
        yield PostgresServer("127.0.0.1", port, socket_dir, data_dir, log_file)
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run(
                    [str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"],
                    account,
                    root,
                )
        shutil.rmtree(root, ignore_errors=True)


async def create_database(admin_dsn: str, name: str | None = None) -> str:
    """Create an empty database through ``admin_dsn``'s server; return its DSN."""
    name = name or f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        # FILE_COPY (PostgreSQL 15+) copies the tiny template's files instead of logging
        # every page: about a third faster here, with fsync off.
        strategy = " STRATEGY FILE_COPY" if conn.get_server_version().major >= 15 else ""
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1{strategy}')
    finally:
        await conn.close()
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{name}"


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database ``dsn`` names, cutting off whatever is still connected to it."""
    name = dsn.rpartition("/")[2]
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def drop_database_later(request: pytest.FixtureRequest, admin_dsn: str, dsn: str) -> None:
    """Drop ``dsn``'s database when ``request``'s fixture or test ends.

    For code that creates a database inside a running event loop (where an async fixture
    cannot be requested): the drop runs on a loop of its own in a thread at teardown.
    """

    def drop() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, drop_database(admin_dsn, dsn)).result(timeout=60)

    request.addfinalizer(drop)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.dsn


@pytest.fixture
async def postgres_db(postgres_dsn: str) -> AsyncIterator[str]:
    dsn = await create_database(postgres_dsn)
    try:
        yield dsn
    finally:
        # Bounded: a test that leaked a connection must not hang the session.
        await asyncio.wait_for(drop_database(postgres_dsn, dsn), timeout=30)
