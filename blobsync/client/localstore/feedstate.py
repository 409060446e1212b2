"""The local store's part of the change feed (SPEC 8): the cursor of each server and
namespace, the tags of the blobs held (to compare a feed ``put`` with them without reading
the payload), a cheap "did another process write?" probe, and the one status move that
only the feed makes (a held blob whose id now names another blob on the server), and the
rows of blobs the server has and this device does not yet, with what their metas say."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from blobsync.format import TAG_SIZE, Meta

from ..errors import ClientError
from ..model import SyncStatus
from .core import StoreCore
from .files import read_tail
from .rows import Row, names_columns

# The names columns of a row whose blob has no meta.
_NO_NAMES = (None, None, None, None, None)


class StoreFeed(StoreCore):
    # --- cursors -------------------------------------------------------------------------

    async def cursor(self, server: str, namespace: str) -> str | None:
        def q() -> str | None:
            r = self._conn.execute(
                "SELECT cursor FROM cursors WHERE server = ? AND namespace = ?",
                (server, namespace),
            ).fetchone()
            return None if r is None else str(r[0])

        return await self._run(q)

    async def set_cursor(self, server: str, namespace: str, cursor: str | None) -> None:
        """Remember ``cursor`` (None: forget it, the next sync lists in full)."""

        def q() -> None:
            if cursor is None:
                self._conn.execute(
                    "DELETE FROM cursors WHERE server = ? AND namespace = ?", (server, namespace)
                )
            else:
                self._conn.execute(
                    "INSERT OR REPLACE INTO cursors (server, namespace, cursor) "
                    "VALUES (?, ?, ?)", (server, namespace, cursor),
                )

        await self._run(q)

    # --- what is held --------------------------------------------------------------------

    async def tags(self, rows: Iterable[Row]) -> dict[str, bytes | None]:
        """The sealed tag of each row holding a payload: the ``tag`` column, else the
        payload's last 16 bytes, which are then written to the column (read once). None
        for a payload that cannot be read (the caller treats it as another blob)."""
        wanted = [r for r in rows if r.location or r.inline]

        def q() -> dict[int, bytes | None]:
            found: dict[int, bytes | None] = {}
            for i in range(0, len(wanted), 500):
                part = [r.id for r in wanted[i : i + 500]]
                sql = f"SELECT id, tag FROM blobs WHERE id IN ({','.join('?' * len(part))})"
                found.update((r[0], r[1]) for r in self._conn.execute(sql, part))
            return found

        known = await self._run(q)
        out: dict[str, bytes | None] = {}
        learned: list[tuple[bytes, int]] = []
        for row in wanted:
            tag = known.get(row.id)
            if tag is None:
                try:
                    tag = await self._tail(row)
                except (ClientError, OSError):
                    out[row.blob_id] = None
                    continue
                learned.append((tag, row.id))
            out[row.blob_id] = bytes(tag)
        if learned:
            await self._run(
                lambda: self._conn.executemany("UPDATE blobs SET tag = ? WHERE id = ?", learned)
            )
        return out

    async def _tail(self, row: Row) -> bytes:
        if row.inline:
            def q() -> bytes:
                r = self._conn.execute(
                    "SELECT substr(data, ?) FROM pl.payloads WHERE id = ?", (-TAG_SIZE, row.id)
                ).fetchone()
                if r is None:
                    raise ClientError("local store: an inline payload is missing")
                return bytes(r[0])

            return await self._run(q)
        assert row.location is not None
        return await asyncio.to_thread(read_tail, self.blob_path(row.location), TAG_SIZE)

    async def replace_later(self, namespace: str, blob_ids: Iterable[str]) -> int:
        """Held blobs (SYNCED, or given up downloading) whose id names another blob on the
        server now: PENDING_DOWNLOAD, keeping the old payload until the new one verified
        (``attach_many`` replaces it then). Returns how many moved."""
        ids = list(blob_ids)
        movable = (SyncStatus.SYNCED.value, SyncStatus.FAILED_DOWNLOAD.value)

        def q() -> int:
            n = 0
            with self._tx():
                for b in ids:
                    n += self._conn.execute(
                        "UPDATE blobs SET status = ?, retries = 0, next_attempt = 0, "
                        "verify_failures = 0, partial_tag = NULL "
                        "WHERE namespace = ? AND blob_id = ? AND status IN (?, ?)",
                        (SyncStatus.PENDING_DOWNLOAD.value, namespace, b, *movable),
                    ).rowcount
            return n

        return await self._run(q)

    # --- metas (SPEC 11) -------------------------------------------------------------------

    async def metas(self, namespace: str, blob_ids: list[str]) -> dict[str, str]:
        """The sealed metas of those of ``blob_ids`` that have one, to send with them."""

        def q() -> dict[str, str]:
            (found,) = self._conn.execute(
                "SELECT json_group_object(blob_id, meta) FROM blobs WHERE namespace = ? "
                "AND meta IS NOT NULL AND blob_id IN (SELECT value FROM json_each(?))",
                (namespace, json.dumps(blob_ids)),
            ).fetchone()
            return dict(json.loads(found))

        return await self._run(q)

    async def add_pending_downloads(
        self, namespace: str, blob_ids: Iterable[str],
        names: Mapping[str, tuple[Any, ...]] | None = None,
    ) -> int:
        """Rows PENDING_DOWNLOAD for ids the store does not know; returns how many.
        ``names``: the names columns (``rows.names_columns``) of those that have a meta,
        written with the row: a row made small and grown by an UPDATE later cost a sync
        of 10,000 named blobs a fifth of its time (pages split and written twice)."""
        ids = list(blob_ids)
        if names:
            sql = ("INSERT OR IGNORE INTO blobs (namespace, blob_id, status, created, name, "
                   "mtime, mode, mtype, meta) SELECT ?, value->>0, ?, ?, value->>1, "
                   "value->>2, value->>3, value->>4, value->>5 FROM json_each(?) ORDER BY key")
            doc = json.dumps([[b, *names.get(b, _NO_NAMES)] for b in ids])
        else:
            sql = ("INSERT OR IGNORE INTO blobs (namespace, blob_id, status, created) "
                   "SELECT ?, value, ?, ? FROM json_each(?) ORDER BY key")
            doc = json.dumps(ids)

        def q() -> int:
            now = time.time()
            with self._tx():
                before = self._conn.total_changes
                # One statement (one step of SQLite, see attach_many), rows in list order.
                self._conn.execute(sql, (namespace, SyncStatus.PENDING_DOWNLOAD.value, now, doc))
                return self._conn.total_changes - before

        return await self._run(q)

    async def learn_metas(
        self, namespace: str, opened: list[tuple[str, Meta, str]]
    ) -> int:
        """What the server's metas say of blobs still to come, (blob_id, what it says, the
        sealed text) each: kept on their PENDING_DOWNLOAD rows, so that a listing by name
        shows them on this device too. Returns how many rows took one."""
        pending = SyncStatus.PENDING_DOWNLOAD.value
        values = [(*names_columns(meta, text), namespace, blob_id, pending)
                  for blob_id, meta, text in opened]

        def q() -> int:
            with self._tx():
                before = self._conn.total_changes
                self._conn.executemany(
                    "UPDATE blobs SET name = ?, mtime = ?, mode = ?, mtype = ?, meta = ? "
                    "WHERE namespace = ? AND blob_id = ? AND status = ?",
                    values,
                )
                return self._conn.total_changes - before

        return await self._run(q) if values else 0

    async def remembered(self, key: str) -> str | None:
        """A value this profile keeps about its servers (``remember``)."""

        def q() -> str | None:
            r = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if r is None else str(r[0])

        return await self._run(q)

    async def remember(self, key: str, value: str) -> None:
        await self._run(lambda: self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
        ))

    # --- other processes -----------------------------------------------------------------

    async def data_version(self) -> tuple[int, int]:
        """What changes whenever the state database does: SQLite's ``data_version`` moves
        when ANOTHER connection (another process on this profile) commits, the
        connection's ``total_changes`` when this one writes (a put of this process). A
        watcher polls it to notice a ``blobsync put`` made in another shell; one pragma,
        no row read."""
        def q() -> tuple[int, int]:
            version = int(self._conn.execute("PRAGMA main.data_version").fetchone()[0])
            return version, int(self._conn.total_changes)

        return await self._run(q)
