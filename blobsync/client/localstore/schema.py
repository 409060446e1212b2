"""The local store's schema: the tables of both databases, how a connection is set up
(``prepare``), and the migrations from older versions of the store.

The state database (SQLCipher) holds ``meta``, ``blobs`` and ``sources``; the payload
database (plain SQLite, attached as ``pl``) holds ``payloads``. Why the split and where it
lies: docs/client.md, "Local store".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    -- The sealed blob's tag (its last 16 bytes) where known without reading it (schema 4):
    -- a feed ``put`` is compared with it. NULL: read the payload's last 16 bytes.
    tag BLOB,
    UNIQUE (namespace, blob_id)
);
CREATE INDEX IF NOT EXISTS blobs_work ON blobs (namespace, status, next_attempt);
"""
# What the blob's meta says (SPEC 11; schema 5): its name and times, readable here only
# (this database is encrypted), and the sealed meta as it travels, sent with the blob.
# All NULL for a blob without a meta (stored before metas existed, or by an old client).
NAMES_COLUMNS = (
    ("name", "TEXT"),      # a relative path, '/' between parts
    ("mtime", "REAL"),     # seconds since the epoch
    ("mode", "INTEGER"),   # permission bits
    ("mtype", "TEXT"),     # media type
    ("meta", "TEXT"),      # the sealed meta (base64url), as the server keeps it
)
NAMES_INDEX = "CREATE INDEX IF NOT EXISTS blobs_names ON blobs (namespace, name)"
# In the attached payload database: inline payloads by the row id of their blob.
PAYLOAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS pl.payloads (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""
# Which file each blob was put from (``put`` of a directory run again skips what it
# stored already). Paths are names a user may hold secret: they live here, in the
# encrypted database, and nowhere else. Added by schema 3 (add_sources).
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
# Where the change feed of each server and namespace was read up to (SPEC 8): the cursor
# the server gave, opaque here. Added by schema 4 (add_feed_state).
CURSORS_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    server TEXT NOT NULL,         -- the server's URL, as the profile names it
    namespace TEXT NOT NULL,
    cursor TEXT NOT NULL,
    PRIMARY KEY (server, namespace)
);
"""
# 2: inline payloads moved out of the SQLCipher database (which held them in 1).
# 3: the sources table.
# 4: the cursors table, and the tag of each blob.
# 5: the names columns (NAMES_COLUMNS) and their index.
SCHEMA_VERSION = "5"

# The payload database, next to the SQLCipher one.
PAYLOADS_DB = "payloads.db"


# The page size of a new payload database (an existing one keeps its own).
PAYLOAD_PAGE_SIZE = 32768


def prepare(conn: Any, db_path: Path, payloads_path: Path) -> None:
    """Attach the payload database, set both databases' journaling, create what is
    missing and migrate an older store, on a connection just keyed."""
    # An empty key: the payload database is not encrypted (its rows are sealed blobs).
    conn.execute("ATTACH DATABASE ? AS pl KEY ''", (str(payloads_path),))
    # A new payload database takes larger pages (an existing one keeps its own): a sealed
    # 10 KB blob spans a leaf cell and three overflow pages on 4 KiB pages, and its own
    # part of one page on 32 KiB pages; the server's payload database does the same.
    conn.execute(f"PRAGMA pl.page_size = {PAYLOAD_PAGE_SIZE}")
    conn.execute("PRAGMA main.journal_mode = WAL")
    # NORMAL in WAL mode: a power cut may lose the last commits, never consistency;
    # a lost commit only means a blob is fetched or sent again. The two databases
    # may lose different commits: sweep_payloads (recovery.py) repairs that.
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
        conn.executescript(SOURCES_SCHEMA + CURSORS_SCHEMA)
        _add_names_columns(conn)
    move_payloads_out(conn)
    add_sources(conn)
    add_feed_state(conn)
    add_names(conn)
    os.chmod(db_path, 0o600)
    os.chmod(payloads_path, 0o600)


def version(conn: Any) -> str | None:
    """The schema version a store says it has; None before it says any."""
    r = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return None if r is None else r[0]


def move_payloads_out(conn: Any) -> None:
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


def _bump(conn: Any, before: str, change: Callable[[], None]) -> None:
    """Run ``change`` and move the schema from ``before`` to the next version, in one
    transaction; nothing when the store is not at ``before``."""
    if version(conn) != before:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        change()
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(int(before) + 1),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def add_sources(conn: Any) -> None:
    """Schema 2 to 3: the sources table."""
    _bump(conn, "2", lambda: conn.execute(SOURCES_SCHEMA))


def add_feed_state(conn: Any) -> None:
    """Schema 3 to 4: the cursors table and the tag column. Existing rows keep a NULL
    tag: it is read from the payload when needed."""

    def change() -> None:
        # A store rolled back to 3 by hand (tests do) may have the column already.
        if "tag" not in {r[1] for r in conn.execute("PRAGMA main.table_info(blobs)")}:
            conn.execute("ALTER TABLE blobs ADD COLUMN tag BLOB")
        conn.execute(CURSORS_SCHEMA)

    _bump(conn, "3", change)


def add_names(conn: Any) -> None:
    """Schema 4 to 5: the names columns and their index. Existing rows have no meta:
    their names stay NULL (shown empty)."""
    _bump(conn, "4", lambda: _add_names_columns(conn))


def _add_names_columns(conn: Any) -> None:
    # A store rolled back by hand (tests do) may have some of them already.
    have = {r[1] for r in conn.execute("PRAGMA main.table_info(blobs)")}
    for name, kind in NAMES_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE blobs ADD COLUMN {name} {kind}")
    conn.execute(NAMES_INDEX)
