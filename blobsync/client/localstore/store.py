"""``LocalStore``: the local store's life cycle (open, with crash recovery when alone;
close) on top of its reads and writes. What each part holds: ``blobsync.client.localstore``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

from sqlcipher3 import dbapi2 as sqlcipher

from ..errors import ClientError, NoSpace
from . import recovery, schema
from .feedstate import StoreFeed
from .reads import StoreReads
from .writes import StoreWrites

# Less free room than this when the database fails to open reads as a full disk: SQLite's
# -shm file grows in 32 KiB steps.
_SHM_ROOM = 64 << 10


def _no_room(path: Path) -> bool:
    """Whether the file system of ``path`` has less room than SQLite's -shm file takes."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserve
    return blocks * st.f_frsize < _SHM_ROOM


class LocalStore(StoreReads, StoreWrites, StoreFeed):
    # --- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        self.blobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd, alone = await asyncio.to_thread(recovery.lock_dir, self.blobs_dir)
        try:
            await self._run(self._open, alone)
            if alone:  # swept; now let others in (and know they are not alone)
                await asyncio.to_thread(fcntl.flock, self._lock_fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise

    def _open(self, alone: bool) -> None:
        # Created private before SQLite sees them: SQLite gives -wal and -shm files the
        # mode of their database file, so they are never readable by others, not even once.
        for path in (self.db_path, self.payloads_path):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        conn = sqlcipher.connect(str(self.db_path), check_same_thread=False, isolation_level=None)
        try:
            # SQLCipher would print its own lines on stderr for a damaged or foreign file;
            # the error raised below says it once, in our words.
            conn.execute("PRAGMA cipher_log_level = NONE")
            conn.execute(f"PRAGMA key = \"x'{self._db_key.hex()}'\"")
            # The first real read is where a wrong key shows.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher.DatabaseError as exc:
            conn.close()
            if _no_room(self.db_path):
                if self.read_only_fallback:
                    self._open_reading()
                    return
                # SQLite says "disk I/O error" when it cannot grow its -shm file: that is
                # a full disk, not a wrong secret.
                raise NoSpace(f"no space left on device (opening {self.db_path}: {exc})") from None
            raise ClientError(
                f"{self.db_path} cannot be opened with this storage secret"
            ) from None
        try:
            schema.prepare(conn, self.db_path, self.payloads_path)
            self._conn = conn
            # Sessions opened and not closed: a process died. Its debris (files moved into
            # blobs/ before their row committed, temp files, partial downloads of blobs
            # since deleted) is swept, but only by a process alone with the store: another
            # one may be between writing a file and committing its row right now.
            sessions = recovery.sessions(conn)
            if sessions is None:  # a store from before the count: sweep once
                sessions = 1
            if alone and sessions != 0:
                recovery.sweep(conn, self._tx, self.blobs_dir, self.tmp_dir, self.file_name)
                sessions = 0
            else:
                recovery.drop_payloads_past_rows(conn, self._tx)
            recovery.set_sessions(conn, sessions + 1)
        except BaseException:
            self._conn = None
            conn.close()
            raise

    async def peek(self) -> bool:
        """Open for a look only (client/quicksync.py): one reading connection, no crash
        recovery, no sessions count, nothing written; closed by ``close`` as usual.
        False when the store needs more than a look (a migration, another key, a damaged
        file): the real ``open`` then does it or says why."""

        def q() -> bool:
            conn = sqlcipher.connect(str(self.db_path), check_same_thread=False,
                                     isolation_level=None)
            try:
                conn.execute("PRAGMA cipher_log_level = NONE")
                conn.execute(f"PRAGMA key = \"x'{self._db_key.hex()}'\"")
                conn.execute("PRAGMA query_only = ON")
                if schema.version(conn) != schema.SCHEMA_VERSION:
                    conn.close()
                    return False
                conn.execute("ATTACH DATABASE ? AS pl KEY ''", (str(self.payloads_path),))
            except sqlcipher.DatabaseError:
                conn.close()
                return False
            self._conn = conn
            self.reading_only = True
            return True

        if not self.db_path.exists():
            return False
        return await self._run(q)

    def _open_reading(self) -> None:
        """Open for reading on a full disk. In WAL mode every connection maps the -shm
        file, which a full disk cannot grow (read-only opens, ``mode=ro``, fail the same
        way); in EXCLUSIVE locking mode SQLite keeps that index in memory instead and needs
        no room. The price: other processes are locked out while this one reads (they
        could not write on this disk anyway). Nothing is written: no sweep, no sessions
        count, no migration; a store that would need one fails as before."""
        conn = sqlcipher.connect(str(self.db_path), check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA cipher_log_level = NONE")
            conn.execute(f"PRAGMA key = \"x'{self._db_key.hex()}'\"")
            conn.execute("PRAGMA main.locking_mode = EXCLUSIVE")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute("ATTACH DATABASE ? AS pl KEY ''", (str(self.payloads_path),))
            if schema.version(conn) != schema.SCHEMA_VERSION:
                raise NoSpace(f"no space left on device (opening {self.db_path})")
        except sqlcipher.DatabaseError as exc:
            conn.close()
            raise NoSpace(f"no space left on device (opening {self.db_path}: {exc})") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.reading_only = True

    def _set_sessions(self, n: int) -> None:
        """Set the count of open sessions (on the database thread): tests use it to
        stand for processes that died with the store open."""
        recovery.set_sessions(self._conn, n)

    async def close(self) -> None:
        try:
            if self._conn is not None:
                conn, self._conn = self._conn, None

                def q() -> None:
                    try:
                        if self._torn or self.reading_only:
                            # Leave the session counted, as a crash would: the next open
                            # alone sweeps what the failure left apart (recovery.sweep).
                            return
                        n = recovery.sessions(conn)
                        recovery.set_sessions(conn, 0 if n is None else n - 1)
                    finally:
                        conn.close()

                await self._run(q)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None
            self._thread.shutdown(wait=True)

    async def check_integrity(self) -> list[str]:
        def q() -> list[str]:
            out = [r[0] for r in self._conn.execute("PRAGMA integrity_check")]
            out += [r[0] for r in self._conn.execute("PRAGMA cipher_integrity_check")]
            return [line for line in out if line != "ok"]

        return await self._run(q)
