"""Crash recovery of the local store: what a process that died, a power cut or a full
disk leaves behind, and how the next open puts it right.

- ``lock_dir``: a process alone with the store (an exclusive flock) may sweep; others not.
- ``sessions`` / ``set_sessions``: opens not yet closed. A count left above zero means a
  process died, or a commit failed, with the store open: the next open alone sweeps.
- ``sweep``: files of ours no row accounts for, and (``sweep_payloads``) rows and inline
  payloads that the two databases' separate commits left apart.
- ``drop_payloads_past_rows``: the one repair cheap enough for every open.
- ``Transaction``: a commit that fails is reported, so that the session stays counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlcipher3 import dbapi2 as sqlcipher

from ..model import SyncStatus
from .files import unlink_all

# Names this store gives files, so that a sweep never touches anything else in the home.
_OUR_BLOB = re.compile(r"[0-9a-f]{40}")
_OUR_PART = re.compile(r"[0-9a-f]{40}\.part")
_OUR_TMP = re.compile(r"[0-9a-f]{32}\.tmp")


def lock_dir(path: Path) -> tuple[int, bool]:
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


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit).

    A COMMIT that fails (a full disk) may have committed one database and not the other
    (see ``sweep_payloads``): ``on_commit_failure`` is told, and the transaction is
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


def sessions(conn: Any) -> int | None:
    """Opens of the store not closed since; None in a store from before the count."""
    r = conn.execute("SELECT value FROM meta WHERE key = 'sessions'").fetchone()
    return int(r[0]) if r else None


def set_sessions(conn: Any, n: int) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('sessions', ?)", (str(max(n, 0)),)
    )


def drop_payloads_past_rows(conn: Any, tx: Callable[[], Transaction]) -> None:
    """Payloads with ids past every row id the state database ever gave out: left by a
    power cut that took the state database's last commits (NORMAL) but not the payload
    database's (FULL), which also took the sessions count that would have asked for a
    sweep. Row ids would be handed out again, onto those payloads. Two lookups by
    primary key and a range delete: cheap enough for every open, alone or not."""
    with tx():
        conn.execute(
            "DELETE FROM pl.payloads WHERE id > max("
            "coalesce((SELECT seq FROM main.sqlite_sequence WHERE name = 'blobs'), 0), "
            "coalesce((SELECT max(id) FROM main.blobs), 0))"
        )


def sweep(
    conn: Any,
    tx: Callable[[], Transaction],
    blobs_dir: Path,
    tmp_dir: Path,
    file_name: Callable[[str, str], str],
) -> None:
    """Remove files of ours that no row accounts for (``blobs_dir``: payload files,
    ``tmp_dir``: temp files and partial downloads of blobs no longer waiting for one, whose
    names ``file_name`` gives), and repair rows and inline payloads that a crash left apart.
    Only for a process alone with the store (see ``lock_dir``): another one may be between
    writing a file and committing its row right now."""
    sweep_payloads(conn, tx)
    located = {
        r[0]
        for r in conn.execute("SELECT location FROM blobs WHERE location IS NOT NULL")
    }
    waiting = {
        f"{file_name(r[0], r[1])}.part"
        for r in conn.execute(
            "SELECT namespace, blob_id FROM blobs WHERE status IN (?, ?)",
            (SyncStatus.PENDING_DOWNLOAD.value, SyncStatus.FAILED_DOWNLOAD.value),
        )
    }
    stray: list[Path] = []
    with os.scandir(blobs_dir) as subdirs:
        for sub in subdirs:
            if len(sub.name) == 2 and sub.is_dir(follow_symlinks=False):
                with os.scandir(sub.path) as files:
                    stray += [
                        Path(f.path) for f in files
                        if _OUR_BLOB.fullmatch(f.name) and f.name.startswith(sub.name)
                        and f.name not in located and f.is_file(follow_symlinks=False)
                    ]
    with os.scandir(tmp_dir) as files:
        for f in files:
            if (_OUR_TMP.fullmatch(f.name) or (
                    _OUR_PART.fullmatch(f.name) and f.name not in waiting)):
                stray.append(Path(f.path))
    unlink_all(stray)


def sweep_payloads(conn: Any, tx: Callable[[], Transaction]) -> None:
    """A transaction spans both databases, but with the main one in WAL mode SQLite
    commits each on its own: a crash (or a power cut, which may lose the main one's
    last commits) can keep one half. A payload no row claims goes. A row that lost its
    payload is a blob half-kept: one stored here and never uploaded is gone (as if its
    put had not happened), one the server has is fetched again."""
    with tx():
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
