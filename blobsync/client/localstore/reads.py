"""The local store's reads: blob state (one row, many, by status, counts) and the sealed
payloads (inline rows and files, whole, in chunks or their tag alone). Every query runs on
the store's database thread (``StoreCore._run``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from ..errors import ClientError
from ..model import SyncStatus
from .core import StoreCore
from .files import FILE_CHUNK, read_file, read_tail
from .rows import (
    COLUMNS,
    JSON_COLUMNS,
    NAMED_COLUMNS,
    Named,
    Row,
    Source,
    named_from_db,
    row_from_json,
)

# Inline payloads read per query for a stream upload: few queries, bounded memory.
INLINE_READ_BYTES = 4 << 20


class StoreReads(StoreCore):
    # --- reading state -------------------------------------------------------------------

    async def get(self, namespace: str, blob_id: str) -> Row | None:
        return await self._run(self._get, namespace, blob_id)

    async def get_many(self, namespace: str, blob_ids: Iterable[str]) -> dict[str, Row]:
        """The rows of ``blob_ids`` that exist, by id, read in one go."""
        ids = list(blob_ids)

        def q() -> dict[str, Row]:
            # One step of SQLite for them all (core.py, ``_json_rows``).
            rows = self._json_rows(
                f"SELECT json_group_array({JSON_COLUMNS}) FROM blobs WHERE namespace = ? "
                "AND blob_id IN (SELECT value FROM json_each(?))",
                (namespace, json.dumps(ids)),
            )
            return {row.blob_id: row for row in map(row_from_json, rows)}

        return await self._run(q)

    async def named(
        self, namespace: str, prefix: str = "", *, whole_parts: bool = False,
        name: str | None = None,
    ) -> list[Named]:
        """The blobs of ``namespace`` (not those being deleted) in name order, then id
        order; those without a name first. ``prefix``: only names that start with it
        (``whole_parts``: only the name itself or names under it as a directory, so that
        ``photos`` takes ``photos/a.jpg`` and not ``photos2/b.jpg``). ``name``: only that
        exact name."""
        sql = f"SELECT {NAMED_COLUMNS} FROM blobs WHERE namespace = ? AND status != ?"
        args: list[Any] = [namespace, SyncStatus.PENDING_DELETE.value]
        if name is not None:
            sql += " AND name = ?"
            args.append(name)
        elif prefix and whole_parts:
            base = prefix.rstrip("/")
            sql += " AND (name = ? OR (name >= ? AND name < ?))"
            args += [base, base + "/", base + "0"]  # '0' follows '/'
        elif prefix:
            # A range, not LIKE: the index on (namespace, name) serves it, and no
            # character of the prefix is a wildcard.
            sql += " AND name >= ?"
            args.append(prefix)
            above = _after(prefix)
            if above is not None:
                sql += " AND name < ?"
                args.append(above)
        sql += " ORDER BY name, id"

        def q() -> list[Named]:
            return [named_from_db(r) for r in self._conn.execute(sql, args)]

        return await self._run(q)

    async def rows(
        self, namespace: str | None, statuses: Iterable[SyncStatus] | None = None
    ) -> list[Row]:
        return await self._run(self._rows, namespace, None if statuses is None else list(statuses))

    def _rows(self, namespace: str | None, statuses: list[SyncStatus] | None) -> list[Row]:
        sql = f"SELECT {COLUMNS} FROM blobs WHERE 1"
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
                f"SELECT {COLUMNS} FROM blobs WHERE namespace = ? AND status = ? "
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

    async def planned(self, namespace: str, status: SyncStatus) -> tuple[int, int, int]:
        """The blobs in ``status``, the sum of their known sealed sizes, and how many have
        one: what a sync phase has before it, for its progress (one row, not the rows)."""

        def q() -> tuple[int, int, int]:
            r = self._conn.execute(
                "SELECT count(*), coalesce(sum(sealed_size), 0), count(sealed_size) "
                "FROM blobs WHERE namespace = ? AND status = ?", (namespace, status.value),
            ).fetchone()
            return int(r[0]), int(r[1]), int(r[2])

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

    async def has_names(self, namespace: str) -> bool:
        """Whether any blob of ``namespace`` has a name: one step down the names index."""

        def q() -> bool:
            return self._conn.execute(
                "SELECT 1 FROM blobs WHERE namespace = ? AND name IS NOT NULL LIMIT 1",
                (namespace,),
            ).fetchone() is not None

        return await self._run(q)

    async def named_copies(
        self, namespace: str, wanted: list[tuple[str, int, float]],
        statuses: Iterable[SyncStatus],
    ) -> dict[str, str]:
        """Blob ids by name, for the (name, size, mtime) of ``wanted`` that a blob of
        ``namespace`` in one of ``statuses`` already has in its meta (SPEC 11: a put of a
        file whose name, size and mtime are stored skips it, whichever device stored it).
        Several blobs with one name: the first that matches."""
        by_name = {name: (size, mtime) for name, size, mtime in wanted}
        sts = {s.value for s in statuses}

        def q() -> dict[str, str]:
            out: dict[str, str] = {}
            for name, size, mtime, blob_id, status in self._select_in(
                "SELECT name, size, mtime, blob_id, status FROM blobs "
                "WHERE namespace = ? AND name IN ({}) ORDER BY id",
                (namespace,), list(by_name),
            ):
                if name not in out and by_name[name] == (size, mtime) and status in sts:
                    out[name] = blob_id
            return out

        return await self._run(q)

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
        return await asyncio.to_thread(read_tail, self.blob_path(row.location), n)


def _after(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (in SQLite's
    BINARY order of UTF-8, which is code point order); None when there is none."""
    while prefix:
        c = ord(prefix[-1]) + 1
        if 0xD800 <= c <= 0xDFFF:  # surrogates are not characters SQLite can hold
            c = 0xE000
        if c <= 0x10FFFF:
            return prefix[:-1] + chr(c)
        prefix = prefix[:-1]
    return None
