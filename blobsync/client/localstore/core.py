"""What every part of the local store stands on: its connection and the one thread that
runs every database call (``_run``), transactions (``_tx``), the names of its files, and
the lookup of one row. The queries (reads.py, writes.py) and the life cycle (store.py)
are built on ``StoreCore``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlcipher3 import dbapi2 as sqlcipher

from ..errors import is_no_space, no_space
from .recovery import Transaction
from .rows import COLUMNS, Row
from .schema import PAYLOADS_DB

T = TypeVar("T")

# Rows of one multi-row INSERT: 1,000 bound values, under any SQLite's limit.
PAYLOADS_PER_STATEMENT = 500
# Values bound to one multi-row INSERT of ``_insert_rows``: well under SQLite's limit
# (32,766 since 3.32), large enough that a batch of 500 rows is one or two statements.
MAX_BOUND_VALUES = 4_500


class StoreCore:
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

    # --- one row and many keys -----------------------------------------------------------

    def _get(self, namespace: str, blob_id: str) -> Row | None:
        r = self._conn.execute(
            f"SELECT {COLUMNS} FROM blobs WHERE namespace = ? AND blob_id = ?",
            (namespace, blob_id),
        ).fetchone()
        return Row.from_db(r) if r else None

    def _select_in(self, sql: str, args: tuple[Any, ...], keys: list[Any]) -> Iterator[Any]:
        """The rows of ``sql`` (its ``{}`` standing for the placeholders of ``keys``), a
        query per 500 keys: under SQLite's bound-parameter limit."""
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            yield from self._conn.execute(sql.format(",".join("?" * len(part))), (*args, *part))

    def _json_rows(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """The rows of ``sql``, a query whose one row is a ``json_group_array``: read in one
        step of SQLite, which lets go of the GIL once instead of once a row (writes.py,
        ``attach_many``)."""
        found = self._conn.execute(sql, args).fetchone()
        return json.loads(found[0]) if found and found[0] else []

    def _put_payloads(self, pairs: list[tuple[int, bytes]]) -> None:
        """``(row id, sealed payload)`` pairs into ``pl.payloads``, many rows a statement
        (one step of SQLite each, not one a payload: see ``_json_rows``)."""
        for i in range(0, len(pairs), PAYLOADS_PER_STATEMENT):
            part = pairs[i : i + PAYLOADS_PER_STATEMENT]
            self._conn.execute(
                "INSERT OR REPLACE INTO pl.payloads (id, data) VALUES "
                + ",".join(["(?, ?)"] * len(part)),
                [v for pair in part for v in pair],
            )

    def _insert_rows(self, head: str, row: str, rows: list[tuple[Any, ...]]) -> None:
        """``head`` (an ``INSERT ... VALUES``) for ``rows``, many rows a statement with
        ``row`` the placeholders of one: one step of SQLite each, not one a row."""
        if not rows:
            return
        per = max(1, MAX_BOUND_VALUES // len(rows[0]))
        for i in range(0, len(rows), per):
            part = rows[i : i + per]
            self._conn.execute(head + ",".join([row] * len(part)), [v for r in part for v in r])

    def _tx(self) -> Transaction:
        return Transaction(self._conn, self._commit_failed)

    def _commit_failed(self) -> None:
        self._torn = True
