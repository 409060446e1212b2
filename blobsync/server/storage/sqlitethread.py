"""One SQLite connection in a thread of its own, for the server's SQLite databases.

sqlite3 blocks, and the event loop must not: every call runs in the connection's thread,
one at a time, so a connection is never shared between threads and no transaction spans
an await. WAL mode (server workers share the files; readers never wait for the writer)
and a busy timeout (a writer waits for the write lock instead of failing). The database,
its -wal and -shm are 0600 and its directory 0700 (``modes``), and a checkpoint truncates
a -wal grown past JOURNAL_SIZE_LIMIT (a big transaction, a reclaim) back to that size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from .modes import FILE_MODE, private_dir, private_file, tighten

T = TypeVar("T")

# SQLite limits host parameters per statement (32766 in recent builds, 999 in old ones):
# an ``IN (...)`` list goes in runs of at most this many.
IN_BATCH = 500

BUSY_TIMEOUT_MS = 30_000
JOURNAL_SIZE_LIMIT = 32 << 20
CHECKPOINT_BYTES = 1000 * 4096


class SQLiteThread:
    def __init__(
        self,
        path: str,
        *,
        synchronous: str,
        name: str,
        incremental_vacuum: bool = False,
        page_size: int | None = None,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        # Only takes effect on a new database (or at the next VACUUM): see sqlitepayloads.
        self._incremental_vacuum = incremental_vacuum
        self._page_size = page_size  # likewise: a database in WAL mode keeps its page size
        self.created = False  # whether our open() made the database file
        self._name = name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError(f"{self._name}: the database is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(func, *args))

    def db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def write(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(conn, *args)`` in one BEGIN IMMEDIATE transaction (in the thread)."""
        conn = self.db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = func(conn, *args)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=self._name
        )
        try:
            await self.run(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> None:
        private_dir(os.path.dirname(os.path.abspath(self.path)))
        # Made 0600 before SQLite opens it: SQLite gives a new file 0644, and its -wal and
        # -shm take the mode of the database file.
        self.created = private_file(self.path)
        for suffix in ("-wal", "-shm"):
            tighten(self.path + suffix, FILE_MODE)  # left by an older blobsync
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, the module adds nothing.
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self._page_size is not None:
                conn.execute(f"PRAGMA page_size = {int(self._page_size)}")
            if self._incremental_vacuum:
                # Before WAL mode: on a new database, journal_mode writes the header and
                # fixes auto_vacuum for good.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"SQLite at {self.path} refused WAL mode ({mode})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            # Checkpoint after about as many bytes as the default 1,000 pages of 4 KiB, not
            # 1,000 pages of whatever size the database has.
            conn.execute(f"PRAGMA wal_autocheckpoint = {max(CHECKPOINT_BYTES // size, 1)}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self.run(self._disconnect)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
