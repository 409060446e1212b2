"""The local store: blob state and sealed payloads, encrypted at rest.

State lives in a SQLCipher database keyed from secret[0:64]. A payload is the sealed blob,
byte for byte what travels to the server. Small ones are rows of a second database,
attached to the first (``pl.payloads``, keyed by the row id of their blob); large ones are
files under ``blobs/`` named by a keyed HMAC of namespace and id. Payloads are sealed
already, so their database is plain SQLite, like the files: a second encryption cost more
than the sealing itself and hid nothing more than the server sees. Namespaces, ids and
states are only in the SQLCipher database. Why the split and where it lies:
docs/client.md, "Local store".

Every database call runs on one dedicated thread: SQLite connections are not to be shared
between threads, and the event loop must not block on disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlcipher3 import dbapi2 as sqlcipher

from .errors import BlobExists, ClientError, NoSpace, is_no_space, no_space
from .model import HAS_PAYLOAD, SyncStatus

T = TypeVar("T")

# Bytes per file read or write: few syscalls and executor hops, still small next to the
# 150 MB memory bound even with several transfers at once.
FILE_CHUNK = 1 << 20
# Bytes written to a file between background flushes to disk (FileWriter).
SYNC_EVERY = 32 << 20
# Inline payloads read per query for a stream upload: few queries, bounded memory.
INLINE_READ_BYTES = 4 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    blob_id TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 1,
    size INTEGER,                 -- plaintext (or external payload) size, once known
    sealed_size INTEGER,          -- once known
    location TEXT,                -- file name under blobs/ when the payload is a file
    inline INTEGER NOT NULL DEFAULT 0,  -- 1: the payload is a row of `pl.payloads`
    external INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    verify_failures INTEGER NOT NULL DEFAULT 0,
    -- Tag of the partial download in tmp/, for Range resume. On a PENDING_DELETE row: the
    -- tag of a blob never confirmed on the server, which is deleted there only while the
    -- server holds that very blob (never another device's blob under the same id).
    partial_tag BLOB,
    created REAL NOT NULL,
    UNIQUE (namespace, blob_id)
);
CREATE INDEX IF NOT EXISTS blobs_work ON blobs (namespace, status, next_attempt);
"""
# In the attached payload database: inline payloads by the row id of their blob.
PAYLOAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS pl.payloads (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""
# Which file each blob was put from (``put`` of a directory run again skips what it
# stored already). Paths are names a user may hold secret: they live here, in the
# encrypted database, and nowhere else. Added by schema 3 (_add_sources).
SOURCES_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    namespace TEXT NOT NULL,
    path TEXT NOT NULL,           -- absolute path of the file, as put saw it
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    blob_id TEXT NOT NULL,
    -- The blob's row: row ids are never handed out twice (AUTOINCREMENT), so a record
    -- outliving its blob never matches a later blob given the same id.
    row_id INTEGER NOT NULL,
    PRIMARY KEY (namespace, path)
);
"""
# 2: inline payloads moved out of the SQLCipher database (which held them in 1).
# 3: the sources table.
SCHEMA_VERSION = "3"

# The payload database, next to the SQLCipher one.
PAYLOADS_DB = "payloads.db"
# Less free room than this when the database fails to open reads as a full disk: SQLite's
# -shm file grows in 32 KiB steps.
_SHM_ROOM = 64 << 10

# Names this store gives files, so that a sweep never touches anything else in the home.
_OUR_BLOB = re.compile(r"[0-9a-f]{40}")
_OUR_PART = re.compile(r"[0-9a-f]{40}\.part")
_OUR_TMP = re.compile(r"[0-9a-f]{32}\.tmp")

_COLUMNS = (
    "id, namespace, blob_id, status, priority, size, sealed_size, location, inline, external, "
    "retries, next_attempt, verify_failures, partial_tag, created"
)


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    namespace: str
    blob_id: str
    status: SyncStatus
    priority: int
    size: int | None
    sealed_size: int | None
    location: str | None
    inline: bool
    external: bool
    retries: int
    next_attempt: float
    verify_failures: int
    partial_tag: bytes | None
    created: float

    @property
    def has_payload(self) -> bool:
        return self.status in HAS_PAYLOAD

    @classmethod
    def from_db(cls, r: tuple[Any, ...]) -> Row:
        return cls(
            r[0], r[1], r[2], SyncStatus(r[3]), r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9]),
            r[10], r[11], r[12], r[13], r[14],
        )


def _no_room(path: Path) -> bool:
    """Whether the file system of ``path`` has less room than SQLite's -shm file takes."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserve
    return blocks * st.f_frsize < _SHM_ROOM


@dataclass(frozen=True, slots=True)
class Attach:
    """A verified download waiting to be kept: inline ``payload`` or a file ``location``."""

    blob_id: str
    size: int
    sealed_size: int
    external: bool
    payload: bytes | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """The file a blob was put from: absolute path, size and mtime when it was read."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Sealed:
    """A blob sealed in memory, to be kept inline: ``size`` is its plaintext size,
    ``source`` the file it came from (recorded with it)."""

    blob_id: str
    size: int
    payload: bytes
    source: Source | None = None


class LocalStore:
    def __init__(
        self,
        db_path: Path,
        blobs_dir: Path,
        tmp_dir: Path,
        *,
        db_key: bytes,
        names_key: bytes,
        inline_max: int,
        payloads_path: Path | None = None,
    ) -> None:
        if len(db_key) != 32:
            raise ValueError("db_key must be 32 bytes")
        self.db_path = db_path
        self.payloads_path = payloads_path or db_path.with_name(PAYLOADS_DB)
        self.blobs_dir = blobs_dir
        self.tmp_dir = tmp_dir
        self.inline_max = inline_max
        self._db_key = db_key
        self._names_key = names_key
        self._conn: Any = None
        self._lock_fd: int | None = None
        # A commit failed midway, or the disk was full: the two databases may disagree,
        # or files may lie in blobs/ that no row claims. Closed as after a crash.
        self._torn = False
        # Set by a caller that only reads: on a disk too full to open the database as
        # usual, open it for reading alone (``reading_only``) rather than fail.
        self.read_only_fallback = False
        self.reading_only = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blobsync-db")

    # --- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        self.blobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd, alone = await asyncio.to_thread(_lock_dir, self.blobs_dir)
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
            self._prepare(conn)
            self._conn = conn
            # Sessions opened and not closed: a process died. Its debris (files moved into
            # blobs/ before their row committed, temp files, partial downloads of blobs
            # since deleted) is swept, but only by a process alone with the store: another
            # one may be between writing a file and committing its row right now.
            r = conn.execute("SELECT value FROM meta WHERE key = 'sessions'").fetchone()
            sessions = int(r[0]) if r else 1  # a store from before the count: sweep once
            if alone and sessions != 0:
                self._sweep()
                sessions = 0
            else:
                self._drop_payloads_past_rows()
            self._set_sessions(sessions + 1)
        except BaseException:
            self._conn = None
            conn.close()
            raise

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
            r = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if r is None or r[0] != SCHEMA_VERSION:
                raise NoSpace(f"no space left on device (opening {self.db_path})")
        except sqlcipher.DatabaseError as exc:
            conn.close()
            raise NoSpace(f"no space left on device (opening {self.db_path}: {exc})") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.reading_only = True

    def _prepare(self, conn: Any) -> None:
        # An empty key: the payload database is not encrypted (its rows are sealed blobs).
        conn.execute("ATTACH DATABASE ? AS pl KEY ''", (str(self.payloads_path),))
        conn.execute("PRAGMA main.journal_mode = WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits, never consistency;
        # a lost commit only means a blob is fetched or sent again. The two databases
        # may lose different commits: _sweep_payloads repairs that.
        conn.execute("PRAGMA main.synchronous = NORMAL")
        # Payloads are written once and mostly in bulk: a rollback journal writes their
        # pages once, where WAL writes them twice (log, then checkpoint). 10,000 payloads
        # of 10 KB in 22 commits took 0.23 s against 0.43 s here; FULL keeps a power cut
        # from ever damaging the file, for ~0.4 ms more per commit.
        conn.execute("PRAGMA pl.journal_mode = TRUNCATE")
        conn.execute("PRAGMA pl.synchronous = FULL")
        conn.executescript(SCHEMA + PAYLOAD_SCHEMA)
        fresh = conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
        ).rowcount
        if fresh:
            conn.executescript(SOURCES_SCHEMA)
        _move_payloads_out(conn)
        _add_sources(conn)
        os.chmod(self.db_path, 0o600)
        os.chmod(self.payloads_path, 0o600)

    def _drop_payloads_past_rows(self) -> None:
        """Payloads with ids past every row id the state database ever gave out: left by a
        power cut that took the state database's last commits (NORMAL) but not the payload
        database's (FULL), which also took the sessions count that would have asked for a
        sweep. Row ids would be handed out again, onto those payloads. Two lookups by
        primary key and a range delete: cheap enough for every open, alone or not."""
        with self._tx():
            self._conn.execute(
                "DELETE FROM pl.payloads WHERE id > max("
                "coalesce((SELECT seq FROM main.sqlite_sequence WHERE name = 'blobs'), 0), "
                "coalesce((SELECT max(id) FROM main.blobs), 0))"
            )

    def _set_sessions(self, n: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('sessions', ?)", (str(max(n, 0)),)
        )

    def _sweep(self) -> None:
        """Remove files of ours that no row accounts for (see ``_open``), and repair rows
        and inline payloads that a crash left apart."""
        self._sweep_payloads()
        located = {
            r[0]
            for r in self._conn.execute("SELECT location FROM blobs WHERE location IS NOT NULL")
        }
        waiting = {
            f"{self.file_name(r[0], r[1])}.part"
            for r in self._conn.execute(
                "SELECT namespace, blob_id FROM blobs WHERE status IN (?, ?)",
                (SyncStatus.PENDING_DOWNLOAD.value, SyncStatus.FAILED_DOWNLOAD.value),
            )
        }
        stray: list[Path] = []
        with os.scandir(self.blobs_dir) as subdirs:
            for sub in subdirs:
                if len(sub.name) == 2 and sub.is_dir(follow_symlinks=False):
                    with os.scandir(sub.path) as files:
                        stray += [
                            Path(f.path) for f in files
                            if _OUR_BLOB.fullmatch(f.name) and f.name.startswith(sub.name)
                            and f.name not in located and f.is_file(follow_symlinks=False)
                        ]
        with os.scandir(self.tmp_dir) as files:
            for f in files:
                if (_OUR_TMP.fullmatch(f.name) or (
                        _OUR_PART.fullmatch(f.name) and f.name not in waiting)):
                    stray.append(Path(f.path))
        _unlink_all(stray)

    def _sweep_payloads(self) -> None:
        """A transaction spans both databases, but with the main one in WAL mode SQLite
        commits each on its own: a crash (or a power cut, which may lose the main one's
        last commits) can keep one half. A payload no row claims goes. A row that lost its
        payload is a blob half-kept: one stored here and never uploaded is gone (as if its
        put had not happened), one the server has is fetched again."""
        conn = self._conn
        with self._tx():
            conn.execute(
                "DELETE FROM pl.payloads WHERE id NOT IN "
                "(SELECT id FROM main.blobs WHERE inline = 1)"
            )
            lost = "inline = 1 AND id NOT IN (SELECT id FROM pl.payloads)"
            local = [SyncStatus.PENDING_UPLOAD, SyncStatus.FAILED_UPLOAD, SyncStatus.LOCAL_ONLY]
            conn.execute(
                f"DELETE FROM blobs WHERE {lost} AND status IN (?, ?, ?)",
                [s.value for s in local],
            )
            conn.execute(
                f"UPDATE blobs SET status = ?, retries = 0, next_attempt = 0 "
                f"WHERE {lost} AND status = ?",
                (SyncStatus.PENDING_DOWNLOAD.value, SyncStatus.SYNCED.value),
            )
            conn.execute(f"UPDATE blobs SET inline = 0 WHERE {lost}")

    async def close(self) -> None:
        try:
            if self._conn is not None:
                conn, self._conn = self._conn, None

                def q() -> None:
                    try:
                        if self._torn or self.reading_only:
                            # Leave the session counted, as a crash would: the next open
                            # alone sweeps what the failure left apart (``_sweep``).
                            return
                        r = conn.execute("SELECT value FROM meta WHERE key = 'sessions'")
                        row = r.fetchone()
                        conn.execute(
                            "INSERT OR REPLACE INTO meta (key, value) VALUES ('sessions', ?)",
                            (str(max(int(row[0]) - 1, 0) if row else 0),),
                        )
                    finally:
                        conn.close()

                await self._run(q)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None
            self._thread.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except (sqlcipher.OperationalError, OSError) as exc:
            if is_no_space(exc):
                self._torn = True
                raise no_space(exc, str(self.db_path.parent)) from None
            raise

    # --- names ---------------------------------------------------------------------------

    def file_name(self, namespace: str, blob_id: str) -> str:
        msg = f"{namespace}\0{blob_id}".encode()
        return hmac.new(self._names_key, msg, hashlib.sha256).hexdigest()[:40]

    def blob_path(self, location: str) -> Path:
        return self.blobs_dir / location[:2] / location

    def partial_path(self, namespace: str, blob_id: str) -> Path:
        return self.tmp_dir / f"{self.file_name(namespace, blob_id)}.part"

    def temp_path(self) -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}.tmp"

    # --- reading state -------------------------------------------------------------------

    async def get(self, namespace: str, blob_id: str) -> Row | None:
        return await self._run(self._get, namespace, blob_id)

    def _get(self, namespace: str, blob_id: str) -> Row | None:
        r = self._conn.execute(
            f"SELECT {_COLUMNS} FROM blobs WHERE namespace = ? AND blob_id = ?",
            (namespace, blob_id),
        ).fetchone()
        return Row.from_db(r) if r else None

    async def get_many(self, namespace: str, blob_ids: Iterable[str]) -> dict[str, Row]:
        """The rows of ``blob_ids`` that exist, by id, read in one go."""
        ids = list(blob_ids)

        def q() -> dict[str, Row]:
            rows = self._select_in(
                f"SELECT {_COLUMNS} FROM blobs WHERE namespace = ? AND blob_id IN ({{}})",
                (namespace,), ids,
            )
            return {row.blob_id: row for row in map(Row.from_db, rows)}

        return await self._run(q)

    async def rows(
        self, namespace: str | None, statuses: Iterable[SyncStatus] | None = None
    ) -> list[Row]:
        return await self._run(self._rows, namespace, None if statuses is None else list(statuses))

    def _rows(self, namespace: str | None, statuses: list[SyncStatus] | None) -> list[Row]:
        sql = f"SELECT {_COLUMNS} FROM blobs WHERE 1"
        args: list[Any] = []
        if namespace is not None:
            sql += " AND namespace = ?"
            args.append(namespace)
        if statuses is not None:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += [s.value for s in statuses]
        return [Row.from_db(r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    async def with_status(
        self, namespace: str, blob_ids: Iterable[str], status: SyncStatus
    ) -> list[str]:
        """Those of ``blob_ids`` whose row has ``status``: one narrow query, no rows built."""
        ids = list(blob_ids)

        def q() -> list[str]:
            return [r[0] for r in self._select_in(
                "SELECT blob_id FROM blobs WHERE namespace = ? AND status = ? "
                "AND blob_id IN ({})",
                (namespace, status.value), ids,
            )]

        return await self._run(q)

    async def statuses(self, namespace: str) -> tuple[set[str], dict[str, str]]:
        """(every id, status value of those not SYNCED) in a namespace: the narrow read of
        reconcile, which must stay cheap for 100,000 unchanged blobs. The ids come as one
        string from the (namespace, blob_id) index, split in C: ~3x faster than a row per
        blob. Ids holding the separator (never valid ones, but a server could list them)
        make it read row by row. The statuses come from the ``blobs_work`` index, for the few rows
        not SYNCED."""
        others = [s.value for s in SyncStatus if s is not SyncStatus.SYNCED]

        def q() -> tuple[set[str], dict[str, str]]:
            conn = self._conn
            conn.execute("BEGIN")  # one snapshot for the three reads
            try:
                return read(conn)
            finally:
                conn.execute("COMMIT")

        def read(conn: Any) -> tuple[set[str], dict[str, str]]:
            joined, odd = conn.execute(
                "SELECT group_concat(blob_id, char(10)), sum(instr(blob_id, char(10)) > 0) "
                "FROM blobs WHERE namespace = ?",
                (namespace,),
            ).fetchone()
            if odd:
                ids = {r[0] for r in conn.execute(
                    "SELECT blob_id FROM blobs WHERE namespace = ?", (namespace,)
                )}
            else:
                ids = set(joined.split("\n")) if joined else set()
            unsynced = dict(conn.execute(
                "SELECT blob_id, status FROM blobs "
                f"WHERE namespace = ? AND status IN ({','.join('?' * len(others))})",
                (namespace, *others),
            ).fetchall())
            return ids, unsynced

        return await self._run(q)

    async def ids_larger(self, namespace: str, status: SyncStatus, sealed_max: int) -> set[str]:
        """Ids in ``status`` whose sealed size is known and above ``sealed_max``."""

        def q() -> set[str]:
            cur = self._conn.execute(
                "SELECT blob_id FROM blobs WHERE namespace = ? AND status = ? "
                "AND sealed_size > ?",
                (namespace, status.value, sealed_max),
            )
            return {r[0] for r in cur}

        return await self._run(q)

    async def due(self, namespace: str, status: SyncStatus, now: float) -> list[Row]:
        """Rows in ``status`` whose next attempt has come, highest priority first."""

        def q() -> list[Row]:
            cur = self._conn.execute(
                f"SELECT {_COLUMNS} FROM blobs WHERE namespace = ? AND status = ? "
                "AND next_attempt <= ? ORDER BY priority DESC, id",
                (namespace, status.value, now),
            )
            return [Row.from_db(r) for r in cur]

        return await self._run(q)

    async def next_wake(self, namespace: str, statuses: Iterable[SyncStatus]) -> float | None:
        """The earliest next attempt among rows in ``statuses``; None when there are none."""
        sts = [s.value for s in statuses]

        def q() -> float | None:
            r = self._conn.execute(
                f"SELECT min(next_attempt) FROM blobs WHERE namespace = ? "
                f"AND status IN ({','.join('?' * len(sts))})",
                (namespace, *sts),
            ).fetchone()
            return r[0]

        return await self._run(q)

    async def size_stats(self, namespace: str, max_size: int) -> tuple[int, int]:
        """(total, count) of the known sealed sizes up to ``max_size`` in ``namespace``."""

        def q() -> tuple[int, int]:
            r = self._conn.execute(
                "SELECT coalesce(sum(sealed_size), 0), count(*) FROM blobs "
                "WHERE namespace = ? AND sealed_size IS NOT NULL AND sealed_size <= ?",
                (namespace, max_size),
            ).fetchone()
            return int(r[0]), int(r[1])

        return await self._run(q)

    async def counts(self, namespace: str | None) -> dict[SyncStatus, int]:
        def q() -> dict[SyncStatus, int]:
            out = {s: 0 for s in SyncStatus}
            if namespace is None:
                cur = self._conn.execute("SELECT status, count(*) FROM blobs GROUP BY status")
            else:
                cur = self._conn.execute(
                    "SELECT status, count(*) FROM blobs WHERE namespace = ? GROUP BY status",
                    (namespace,),
                )
            for status, n in cur:
                out[SyncStatus(status)] = n
            return out

        return await self._run(q)

    async def namespaces(self) -> list[str]:
        def q() -> list[str]:
            cur = self._conn.execute("SELECT DISTINCT namespace FROM blobs ORDER BY namespace")
            return [r[0] for r in cur]

        return await self._run(q)

    # --- writing state -------------------------------------------------------------------

    async def insert(
        self,
        namespace: str,
        blob_id: str,
        status: SyncStatus,
        *,
        priority: int = 1,
        size: int | None = None,
        sealed_size: int | None = None,
        location: str | None = None,
        payload: bytes | None = None,
        external: bool = False,
        source: Source | None = None,
    ) -> None:
        """Add a row (and its inline payload, and the file it came from) in one
        transaction; BlobExists if present."""

        def q() -> None:
            with self._tx():
                try:
                    cur = self._conn.execute(
                        "INSERT INTO blobs (namespace, blob_id, status, priority, size, "
                        "sealed_size, location, inline, external, created) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (namespace, blob_id, status.value, priority, size, sealed_size,
                         location, int(payload is not None), int(external), time.time()),
                    )
                except sqlcipher.IntegrityError:
                    raise BlobExists(
                        f"blob {blob_id} already exists in namespace {namespace}"
                    ) from None
                if payload is not None:
                    self._conn.execute(
                        # OR REPLACE: a payload already at a new row's id is an orphan
                        # (_drop_payloads_past_rows), never a live one.
                        "INSERT OR REPLACE INTO pl.payloads (id, data) VALUES (?, ?)",
                        (cur.lastrowid, payload),
                    )
                if source is not None:
                    self._record_sources(namespace, [(source, blob_id, cur.lastrowid)])

        await self._run(q)

    async def insert_many(
        self, namespace: str, status: SyncStatus, priority: int, items: list[Sealed]
    ) -> None:
        """``insert`` of many inline blobs in one transaction: all of them or none, and one
        commit instead of one per blob. BlobExists (nothing inserted) if one is present."""

        def q() -> None:
            now = time.time()
            conn = self._conn
            sources: list[tuple[Source, str, int]] = []
            with self._tx():
                for it in items:
                    try:
                        cur = conn.execute(
                            "INSERT INTO blobs (namespace, blob_id, status, priority, size, "
                            "sealed_size, inline, created) VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
                            (namespace, it.blob_id, status.value, priority, it.size,
                             len(it.payload), now),
                        )
                    except sqlcipher.IntegrityError:
                        raise BlobExists(
                            f"blob {it.blob_id} already exists in namespace {namespace}"
                        ) from None
                    conn.execute(
                        "INSERT OR REPLACE INTO pl.payloads (id, data) VALUES (?, ?)",
                        (cur.lastrowid, it.payload),
                    )
                    if it.source is not None:
                        sources.append((it.source, it.blob_id, cur.lastrowid))
                self._record_sources(namespace, sources)

        await self._run(q)

    def _record_sources(self, namespace: str, found: list[tuple[Source, str, int]]) -> None:
        # Inside the caller's transaction: the blob and where it came from, or neither.
        self._conn.executemany(
            "INSERT OR REPLACE INTO sources (namespace, path, size, mtime_ns, blob_id, "
            "row_id) VALUES (?, ?, ?, ?, ?, ?)",
            [(namespace, src.path, src.size, src.mtime_ns, b, r) for src, b, r in found],
        )

    async def stored_sources(
        self, namespace: str, sources: list[Source], statuses: Iterable[SyncStatus]
    ) -> dict[str, str]:
        """Blob ids by path, for the files of ``sources`` already put into ``namespace``
        unchanged (same size and mtime) whose blob is still here in one of ``statuses``."""
        wanted = {src.path: src for src in sources}
        sts = {s.value for s in statuses}

        def q() -> dict[str, str]:
            out: dict[str, str] = {}
            for path, size, mtime_ns, blob_id, status in self._select_in(
                "SELECT s.path, s.size, s.mtime_ns, s.blob_id, b.status FROM sources s "
                "JOIN blobs b ON b.id = s.row_id AND b.blob_id = s.blob_id "
                "WHERE s.namespace = ? AND s.path IN ({})",
                (namespace,), list(wanted),
            ):
                src = wanted[path]
                if size == src.size and mtime_ns == src.mtime_ns and status in sts:
                    out[path] = blob_id
            return out

        return await self._run(q)

    async def add_pending_downloads(self, namespace: str, blob_ids: Iterable[str]) -> int:
        """Rows PENDING_DOWNLOAD for ids the store does not know; returns how many."""
        ids = list(blob_ids)

        def q() -> int:
            now = time.time()
            with self._tx():
                before = self._conn.total_changes
                self._conn.executemany(
                    "INSERT OR IGNORE INTO blobs (namespace, blob_id, status, created) "
                    "VALUES (?, ?, ?, ?)",
                    [(namespace, b, SyncStatus.PENDING_DOWNLOAD.value, now) for b in ids],
                )
                return self._conn.total_changes - before

        return await self._run(q)

    async def update(
        self,
        namespace: str,
        blob_id: str,
        *,
        only_if: Iterable[SyncStatus] | None = None,
        **fields: Any,
    ) -> bool:
        """Set ``fields`` on a row, only while its status is in ``only_if`` when given.

        The condition keeps a transfer that ends late from undoing what happened meanwhile
        (a delete during an upload, say). Returns whether a row changed.
        """
        cols = []
        args: list[Any] = []
        for k, v in fields.items():
            cols.append(f"{k} = ?")
            args.append(v.value if isinstance(v, SyncStatus) else v)
        sql = f"UPDATE blobs SET {', '.join(cols)} WHERE namespace = ? AND blob_id = ?"
        args += [namespace, blob_id]
        if only_if is not None:
            sts = [s.value for s in only_if]
            sql += f" AND status IN ({','.join('?' * len(sts))})"
            args += sts

        def q() -> bool:
            return self._conn.execute(sql, args).rowcount > 0

        return await self._run(q)

    async def set_many(
        self, namespace: str, blob_ids: Iterable[str], only_if: Iterable[SyncStatus], **fields: Any
    ) -> int:
        """``update`` for many ids in one transaction."""
        ids = list(blob_ids)
        sts = [s.value for s in only_if]
        cols = ", ".join(f"{k} = ?" for k in fields)
        vals = [v.value if isinstance(v, SyncStatus) else v for v in fields.values()]
        sql = (
            f"UPDATE blobs SET {cols} WHERE namespace = ? AND blob_id = ? "
            f"AND status IN ({','.join('?' * len(sts))})"
        )

        def q() -> int:
            with self._tx():
                n = 0
                for b in ids:
                    n += self._conn.execute(sql, [*vals, namespace, b, *sts]).rowcount
                return n

        return await self._run(q)

    async def attach_payload(
        self,
        namespace: str,
        blob_id: str,
        *,
        size: int,
        sealed_size: int,
        external: bool,
        payload: bytes | None = None,
        location: str | None = None,
    ) -> bool:
        """A verified download is in: keep it and mark the row SYNCED.

        Only a row still waiting for its payload takes it, so a blob deleted while it was
        on its way is not brought back. Returns whether the payload was kept.
        """
        item = Attach(blob_id, size, sealed_size, external, payload=payload, location=location)
        return (await self.attach_many(namespace, [item]))[0]

    async def remove_many(
        self,
        namespace: str,
        blob_ids: Iterable[str],
        *,
        only_if: Iterable[SyncStatus] | None = None,
    ) -> list[Row]:
        """``remove`` for many ids in one transaction, only rows in ``only_if`` when given;
        returns the rows removed."""
        ids = list(blob_ids)
        allowed = None if only_if is None else set(only_if)

        def q() -> list[Row]:
            out = []
            with self._tx():
                for b in ids:
                    row = self._get(namespace, b)
                    if row is None or (allowed is not None and row.status not in allowed):
                        continue
                    self._conn.execute("DELETE FROM pl.payloads WHERE id = ?", (row.id,))
                    self._conn.execute("DELETE FROM blobs WHERE id = ?", (row.id,))
                    out.append(row)
            return out

        rows = await self._run(q)
        for row in rows:
            await self.discard_files(row)
        return rows

    async def schedule_retry(
        self,
        namespace: str,
        blob_ids: Iterable[str],
        status: SyncStatus,
        *,
        delay: Callable[[int], float],
        verify_failed: bool = False,
        max_verify_failures: int = 3,
        failed_status: SyncStatus | None = None,
    ) -> list[str]:
        """Count a failed attempt on rows still in ``status`` and set their next attempt.

        With ``verify_failed`` the failure was a blob that did not verify: at
        ``max_verify_failures`` such failures the row turns ``failed_status`` and is left
        alone. Returns the ids that turned failed.
        """
        ids = list(blob_ids)

        def q() -> list[str]:
            now = time.time()
            failed: list[str] = []
            with self._tx():
                for b in ids:
                    r = self._conn.execute(
                        "SELECT retries, verify_failures FROM blobs "
                        "WHERE namespace = ? AND blob_id = ? AND status = ?",
                        (namespace, b, status.value),
                    ).fetchone()
                    if r is None:
                        continue
                    retries, vf = r[0] + 1, r[1] + int(verify_failed)
                    new_status = status
                    if verify_failed and failed_status and vf >= max_verify_failures:
                        new_status = failed_status
                        failed.append(b)
                    self._conn.execute(
                        "UPDATE blobs SET status = ?, retries = ?, verify_failures = ?, "
                        "next_attempt = ? WHERE namespace = ? AND blob_id = ?",
                        (new_status.value, retries, vf, now + delay(retries), namespace, b),
                    )
            return failed

        return await self._run(q)

    async def attach_many(self, namespace: str, items: list[Attach]) -> list[bool]:
        """``attach_payload`` for many verified downloads: one commit per batch instead of
        one per blob is what makes thousands of small blobs cheap.

        Two transactions, payloads first: SQLite commits a transaction over both databases
        one database after the other (the main one is in WAL mode: no super-journal), the
        main one first. A disk full while the payload database committed left rows SYNCED
        without their payload. So the payloads are committed (FULL) before any row says
        SYNCED; a crash between the two leaves payloads no row claims, which the sweep
        drops and the next download replaces. Files were made durable by ``keep_file``.
        """
        waiting = (SyncStatus.PENDING_DOWNLOAD.value, SyncStatus.FAILED_DOWNLOAD.value)
        synced = SyncStatus.SYNCED.value

        def waiting_rows() -> dict[str, int]:
            # One lookup for the batch, not one query a blob.
            return {
                r[0]: r[1] for r in self._select_in(
                    "SELECT blob_id, id, status FROM blobs WHERE namespace = ? "
                    "AND blob_id IN ({})",
                    (namespace,), [it.blob_id for it in items],
                ) if r[2] in waiting
            }

        def q() -> list[bool]:
            conn = self._conn
            before = waiting_rows()
            written = {before[it.blob_id]: it.payload for it in items
                       if it.payload is not None and it.blob_id in before}
            if written:
                with self._tx():
                    conn.executemany(
                        "INSERT OR REPLACE INTO pl.payloads (id, data) VALUES (?, ?)",
                        list(written.items()),
                    )
            out: list[bool] = []
            updates: list[tuple[Any, ...]] = []
            with self._tx():
                found = waiting_rows()  # another process may have moved some meanwhile
                for it in items:
                    row_id = found.pop(it.blob_id, None)  # twice in a batch: kept once
                    if row_id is None or (it.payload is not None and row_id not in written):
                        out.append(False)
                        continue
                    updates.append((synced, it.size, it.sealed_size, it.location,
                                    int(it.payload is not None), int(it.external), row_id))
                    out.append(True)
                conn.executemany(
                    "UPDATE blobs SET status = ?, size = ?, sealed_size = ?, location = ?, "
                    "inline = ?, external = ?, retries = 0, next_attempt = 0, "
                    "verify_failures = 0, partial_tag = NULL WHERE id = ?",
                    updates,
                )
                # Payloads written for rows that stopped waiting, unless such a row took
                # a payload of its own meanwhile (same id, same verified blob).
                unclaimed = set(written) - {u[-1] for u in updates}
                if unclaimed:
                    conn.executemany(
                        "DELETE FROM pl.payloads WHERE id = ? AND id NOT IN "
                        "(SELECT id FROM main.blobs WHERE inline = 1)",
                        [(i,) for i in unclaimed],
                    )
            return out

        return await self._run(q)

    async def refetch(self, rows: list[Row]) -> list[Row]:
        """Rows still SYNCED whose local payload is missing or damaged go back to
        PENDING_DOWNLOAD, their payload forgotten: the next sync fetches them again.
        Returns the rows moved (their files are removed here)."""
        synced = SyncStatus.SYNCED.value

        def q() -> list[Row]:
            conn = self._conn
            moved: list[Row] = []
            with self._tx():
                for row in rows:
                    if conn.execute(
                        "UPDATE blobs SET status = ?, location = NULL, inline = 0, "
                        "retries = 0, next_attempt = 0, verify_failures = 0, "
                        "partial_tag = NULL WHERE id = ? AND status = ?",
                        (SyncStatus.PENDING_DOWNLOAD.value, row.id, synced),
                    ).rowcount:
                        moved.append(row)
            # The row no longer claims the payload: what is left of it goes, on its own.
            with self._tx():
                conn.executemany(
                    "DELETE FROM pl.payloads WHERE id = ?", [(r.id,) for r in moved]
                )
            return moved

        moved = await self._run(q)
        await asyncio.to_thread(
            _unlink_all, [self.blob_path(r.location) for r in moved if r.location]
        )
        return moved

    async def drop_payload(
        self, namespace: str, blob_id: str, status: SyncStatus, *, expect_tag: bytes | None = None
    ) -> Row | None:
        """Forget the payload but keep the row in ``status`` (PENDING_DELETE). Returns the
        row as it was, so the caller can remove its file. ``expect_tag``: the blob was never
        confirmed on the server, and only a server copy with this tag may be deleted."""

        def q() -> Row | None:
            with self._tx():
                row = self._get(namespace, blob_id)
                if row is None:
                    return None
                self._conn.execute("DELETE FROM pl.payloads WHERE id = ?", (row.id,))
                self._conn.execute(
                    "UPDATE blobs SET status = ?, location = NULL, inline = 0, retries = 0, "
                    "next_attempt = 0, partial_tag = ? WHERE id = ?",
                    (status.value, expect_tag, row.id),
                )
                return row

        return await self._run(q)

    async def remove(self, namespace: str, blob_id: str) -> Row | None:
        """Delete the row and its inline payload; returns the row so its file can go too."""

        def q() -> Row | None:
            with self._tx():
                row = self._get(namespace, blob_id)
                if row is None:
                    return None
                self._conn.execute("DELETE FROM pl.payloads WHERE id = ?", (row.id,))
                self._conn.execute("DELETE FROM blobs WHERE id = ?", (row.id,))
                return row

        row = await self._run(q)
        if row is not None:
            await self.discard_files(row)
        return row

    async def discard_files(self, row: Row) -> None:
        """Remove the payload file and any partial download of a row."""
        paths = [self.partial_path(row.namespace, row.blob_id)]
        if row.location:
            paths.append(self.blob_path(row.location))
        await asyncio.to_thread(_unlink_all, paths)

    def _select_in(self, sql: str, args: tuple[Any, ...], keys: list[Any]) -> Iterator[Any]:
        """The rows of ``sql`` (its ``{}`` standing for the placeholders of ``keys``), a
        query per 500 keys: under SQLite's bound-parameter limit."""
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            yield from self._conn.execute(sql.format(",".join("?" * len(part))), (*args, *part))

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn, self._commit_failed)

    def _commit_failed(self) -> None:
        self._torn = True

    # --- payloads ------------------------------------------------------------------------

    async def read_inline(self, row_id: int) -> bytes:
        def q() -> bytes:
            r = self._conn.execute(
                "SELECT data FROM pl.payloads WHERE id = ?", (row_id,)
            ).fetchone()
            if r is None:
                raise ClientError("local store: an inline payload is missing")
            return bytes(r[0])

        return await self._run(q)

    async def read_inline_many(self, row_ids: list[int]) -> dict[int, bytes]:
        """Inline payloads by row id, in one query; ClientError if one is missing."""

        def q() -> dict[int, bytes]:
            out = {r[0]: bytes(r[1]) for r in self._select_in(
                "SELECT id, data FROM pl.payloads WHERE id IN ({})", (), row_ids
            )}
            if len(out) != len(set(row_ids)):
                raise ClientError("local store: an inline payload is missing")
            return out

        return await self._run(q)

    async def read_sealed_many(self, rows: list[Row]) -> AsyncIterator[bytes]:
        """The sealed bytes of local blobs one after the other, in chunks: the inline
        ones read many per query (one query per blob dominated stream uploads), at most
        ``INLINE_READ_BYTES`` of them held at once."""
        i = 0
        while i < len(rows):
            if not rows[i].inline:
                async for chunk in self.read_sealed(rows[i]):
                    yield chunk
                i += 1
                continue
            group: list[Row] = []
            size = 0
            while i < len(rows) and rows[i].inline and (
                not group or size + (rows[i].sealed_size or 0) <= INLINE_READ_BYTES
            ):
                group.append(rows[i])
                size += rows[i].sealed_size or 0
                i += 1
            data = await self.read_inline_many([r.id for r in group])
            for r in group:
                yield data[r.id]

    async def read_sealed(self, row: Row) -> AsyncIterator[bytes]:
        """The sealed bytes of a local blob, in chunks."""
        if row.inline:
            data = await self.read_inline(row.id)
            for i in range(0, len(data), FILE_CHUNK):
                yield data[i : i + FILE_CHUNK]
            return
        if not row.location:
            raise ClientError(f"blob {row.blob_id} has no local payload")
        async for chunk in read_file(self.blob_path(row.location)):
            yield chunk

    async def tail(self, row: Row, n: int) -> bytes:
        """The last ``n`` bytes of a local sealed blob (its tag), read alone."""
        if row.inline:

            def q() -> bytes:
                r = self._conn.execute(
                    "SELECT substr(data, ?) FROM pl.payloads WHERE id = ?", (-n, row.id)
                ).fetchone()
                if r is None:
                    raise ClientError("local store: an inline payload is missing")
                return bytes(r[0])

            return await self._run(q)
        if not row.location:
            raise ClientError(f"blob {row.blob_id} has no local payload")
        return await asyncio.to_thread(_read_tail, self.blob_path(row.location), n)

    async def keep_file(self, namespace: str, blob_id: str, src: Path) -> str:
        """Move a complete sealed file into blobs/; returns its location.

        Every file gets a name of its own, never derived from the blob: two writers of the
        same blob (a get() and a stream download at once) each keep their copy under its
        own name, the one whose row update wins stays, and the loser removes only its
        own file. The name is random, so it tells nothing about namespace or id either.
        """
        del namespace, blob_id  # the name depends on neither, on purpose
        location = secrets.token_hex(20)
        try:
            with _disk_full_is_no_space(self.blobs_dir):
                await asyncio.to_thread(_durable_move, src, self.blob_path(location))
        except BaseException:
            self._torn = True
            raise
        return location

    async def check_integrity(self) -> list[str]:
        def q() -> list[str]:
            out = [r[0] for r in self._conn.execute("PRAGMA integrity_check")]
            out += [r[0] for r in self._conn.execute("PRAGMA cipher_integrity_check")]
            return [line for line in out if line != "ok"]

        return await self._run(q)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit).

    A COMMIT that fails (a full disk) may have committed one database and not the other
    (see ``_sweep_payloads``): ``on_commit_failure`` is told, and the transaction is
    rolled back if SQLite left it open, so that the connection stays usable."""

    def __init__(self, conn: Any, on_commit_failure: Callable[[], None]) -> None:
        self._conn = conn
        self._on_commit_failure = on_commit_failure

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._rollback_if_open()
            return
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            self._on_commit_failure()
            self._rollback_if_open()
            raise

    def _rollback_if_open(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL does): a second ROLLBACK would
        # fail and hide the error that matters, the one being raised.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlcipher.Error):
                self._conn.execute("ROLLBACK")


@contextlib.contextmanager
def _disk_full_is_no_space(where: Path) -> Iterator[None]:
    """ENOSPC while writing under ``where`` becomes NoSpace: one line for a person, and an
    error the sync engine does not mistake for a passing one."""
    try:
        yield
    except OSError as exc:
        if is_no_space(exc):
            raise no_space(exc, str(where)) from None
        raise


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _lock_dir(path: Path) -> tuple[int, bool]:
    """Lock the store: exclusive when no other process has it open (True: then, and only
    then, sweeping debris is safe; the caller downgrades to shared after), else shared."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd, True
        except BlockingIOError:
            # Blocking: an exclusive holder only sweeps, which is quick.
            fcntl.flock(fd, fcntl.LOCK_SH)
            return fd, False
        except OSError:
            # No flock here (some network file systems): never sure to be alone, so
            # never sweep; everything else works without the lock.
            return fd, False
    except BaseException:
        os.close(fd)
        raise


def _durable_move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(src, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(src, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_tail(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - n))
            return f.read(n)
    except FileNotFoundError:
        raise ClientError(f"local payload file {path.name} is missing") from None


async def read_file(path: Path, offset: int = 0) -> AsyncIterator[bytes]:
    """A file's bytes from ``offset``, in chunks, without blocking the event loop."""
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        raise ClientError(f"local payload file {path.name} is missing") from None
    try:
        if offset:
            f.seek(offset)
        while True:
            chunk = await asyncio.to_thread(f.read, FILE_CHUNK)
            if not chunk:
                return
            yield chunk
    finally:
        f.close()


class FileWriter:
    """Buffered writes to a file from the event loop: one thread hop per FILE_CHUNK.

    Pieces are kept as given (no copying into a buffer) and written with one
    ``writelines`` per hop; ``write`` takes ownership of what it is handed.

    Every file written here is made durable before it is kept, and one fsync of a whole
    large file at the end stalls for as long as the disk takes to absorb it (0.4 s for
    1 GiB here). So every SYNC_EVERY bytes a flush to disk starts in the background, and
    the disk works while the network delivers the rest.
    """

    def __init__(self, path: Path, *, append: bool = False) -> None:
        self.path = path
        self._append = append
        self._f: Any = None
        self._pieces: list[bytes] = []
        self._held = 0
        self._unsynced = 0
        # A concurrent future, not an asyncio one: whatever happens to the coroutine that
        # waits for it, the thread that closes the file waits for it first.
        self._sync: concurrent.futures.Future[None] | None = None
        self.written = 0

    async def open(self) -> FileWriter:
        mode = "ab" if self._append else "wb"
        with _disk_full_is_no_space(self.path.parent):
            self._f = await asyncio.to_thread(_open_private, self.path, mode)
        self.written = self._f.tell()
        return self

    async def write(self, data: bytes) -> None:
        self._pieces.append(data if isinstance(data, bytes) else bytes(data))
        self._held += len(data)
        self.written += len(data)
        if self._held >= FILE_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        with _disk_full_is_no_space(self.path.parent):
            await self._flush()

    async def _flush(self) -> None:
        if self._pieces:
            pieces, self._pieces = self._pieces, []
            self._unsynced += self._held
            self._held = 0
            await asyncio.to_thread(self._f.writelines, pieces)
            if self._unsynced >= SYNC_EVERY and (self._sync is None or self._sync.done()):
                if self._sync is not None:
                    done, self._sync = self._sync, None
                    done.result()  # a flush to disk that failed fails the write, once
                self._unsynced = 0
                self._f.flush()  # a no-op once pieces are large; fdatasync sees the bytes
                self._sync = _FLUSHES.submit(os.fdatasync, self._f.fileno())

    async def close(self) -> None:
        """Write what is held and close; raises the error of a background flush, if any:
        the file is then not what it should be."""
        if self._f is not None:
            try:
                await self.flush()
            finally:
                f, self._f = self._f, None
                sync, self._sync = self._sync, None
                with _disk_full_is_no_space(self.path.parent):
                    await asyncio.to_thread(_close_after, f, sync)


# Background flushes to disk of FileWriter files (few at a time: they wait on the disk).
_FLUSHES = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="blobsync-flush")


def _close_after(f: Any, sync: concurrent.futures.Future[None] | None) -> None:
    """Close ``f`` once the flush running on its fd (if any) is over, then report how that
    flush went. The fd must outlive it: closed earlier, its number could be reused."""
    try:
        if sync is not None:
            concurrent.futures.wait([sync])
    finally:
        f.close()
    if sync is not None:
        sync.result()


def _move_payloads_out(conn: Any) -> None:
    """Schema 1 kept inline payloads in the SQLCipher database: move them over, once."""
    if not conn.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'payloads'"
    ).fetchone():
        return
    # Two transactions, each writing one database: SQLite does not commit one spanning
    # both atomically (the main database is in WAL mode), and a copy rolled back after
    # its DROP committed would lose every payload. A crash between the two leaves both
    # copies, and the first step can run again.
    for steps in (
        [("INSERT OR REPLACE INTO pl.payloads SELECT id, data FROM main.payloads", ())],
        [("DROP TABLE main.payloads", ()),
         ("UPDATE meta SET value = '2' WHERE key = 'schema'", ())],
    ):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in steps:
                conn.execute(sql, args)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _add_sources(conn: Any) -> None:
    """Schema 2 to 3: the sources table, in one transaction with the version bump."""
    r = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if r is None or r[0] != "2":
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(SOURCES_SCHEMA)
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _open_private(path: Path, mode: str) -> Any:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    f = os.fdopen(fd, mode)
    f.seek(0, os.SEEK_END)
    return f
