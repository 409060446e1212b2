"""The local store's writes: rows in and out, status changes, verified downloads kept
(``attach_many``), payloads forgotten and files kept or removed. Every query runs on the
store's database thread (``StoreCore._run``), a change of more than one row in one
transaction (``StoreCore._tx``)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlcipher3 import dbapi2 as sqlcipher

from blobsync.format import TAG_SIZE, Meta

from ..errors import BlobExists
from ..model import SyncStatus
from .core import StoreCore
from .files import disk_full_is_no_space, durable_move, unlink_all
from .rows import Attach, Row, Sealed, Source, names_columns


class StoreWrites(StoreCore):
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
        meta: Meta | None = None,
        meta_text: str | None = None,
    ) -> None:
        """Add a row (and its inline payload, the file it came from, and what its meta
        says) in one transaction; BlobExists if present."""

        def q() -> None:
            with self._tx():
                try:
                    cur = self._conn.execute(
                        "INSERT INTO blobs (namespace, blob_id, status, priority, size, "
                        "sealed_size, location, inline, external, created, tag, "
                        "name, mtime, mode, mtype, meta) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (namespace, blob_id, status.value, priority, size, sealed_size,
                         location, int(payload is not None), int(external), time.time(),
                         None if payload is None else bytes(payload[-TAG_SIZE:]),
                         *names_columns(meta, meta_text)),
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
            with self._tx():
                # The row ids given here, not by SQLite one INSERT at a time: then each
                # table takes the batch in a few multi-row INSERTs. Past both the highest id
                # ever given out and the highest in use, as AUTOINCREMENT picks them
                # (the write lock is held: nobody else picks meanwhile), and the INSERT
                # with an id moves sqlite_sequence past it.
                base = conn.execute(
                    "SELECT max(coalesce((SELECT seq FROM main.sqlite_sequence "
                    "WHERE name = 'blobs'), 0), coalesce((SELECT max(id) FROM main.blobs), 0))"
                ).fetchone()[0]
                value = status.value
                rows = [(i, namespace, it.blob_id, value, priority, it.size, len(it.payload),
                         now, it.payload[-TAG_SIZE:], *names_columns(it.meta, it.meta_text))
                        for i, it in enumerate(items, base + 1)]
                try:
                    self._insert_rows(
                        "INSERT INTO blobs (id, namespace, blob_id, status, priority, size, "
                        "sealed_size, inline, created, tag, name, mtime, mode, mtype, meta) "
                        "VALUES ", "(?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)", rows,
                    )
                except sqlcipher.IntegrityError:
                    raise BlobExists(
                        f"blob {self._first_present(namespace, items)} already exists in "
                        f"namespace {namespace}"
                    ) from None
                # OR REPLACE: a payload already at a new row's id is an orphan
                # (_drop_payloads_past_rows), never a live one.
                self._put_payloads([(i, it.payload) for i, it in enumerate(items, base + 1)])
                self._record_sources(namespace, [
                    (it.source, it.blob_id, i) for i, it in enumerate(items, base + 1)
                    if it.source is not None
                ])

        await self._run(q)

    def _record_sources(self, namespace: str, found: list[tuple[Source, str, int]]) -> None:
        # Inside the caller's transaction: the blob and where it came from, or neither.
        self._insert_rows(
            "INSERT OR REPLACE INTO sources (namespace, path, size, mtime_ns, blob_id, "
            "row_id) VALUES ", "(?, ?, ?, ?, ?, ?)",
            [(namespace, src.path, src.size, src.mtime_ns, b, r) for src, b, r in found],
        )

    def _first_present(self, namespace: str, items: list[Sealed]) -> str:
        """The first of ``items`` whose id the store holds (after a failed insert_many)."""
        held = {b for (b,) in self._select_in(
            "SELECT blob_id FROM blobs WHERE namespace = ? AND blob_id IN ({})",
            (namespace,), [it.blob_id for it in items],
        )}
        seen: set[str] = set()
        for it in items:  # held before, or twice in the batch
            if it.blob_id in held or it.blob_id in seen:
                return it.blob_id
            seen.add(it.blob_id)
        return items[0].blob_id

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
        # Driven from the ids (CROSS JOIN keeps that order) through the (namespace,
        # blob_id) index: left to itself the planner scanned every row of the namespace
        # in the wanted status (blobs_work), which made one-by-one uploads quadratic.
        sql = (
            f"UPDATE blobs SET {cols} WHERE id IN (SELECT b.id FROM json_each(?) AS k "
            f"CROSS JOIN blobs AS b WHERE b.namespace = ? AND b.blob_id = k.value "
            f"AND b.status IN ({','.join('?' * len(sts))}))"
        )

        def q() -> int:
            with self._tx():
                # One statement, one step of SQLite for the batch (see attach_many).
                return self._conn.execute(sql, (*vals, json.dumps(ids), namespace, *sts)).rowcount

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
        # Every statement below handles the whole batch in one step. SQLite lets go of the
        # GIL at each step (a row read or written): a step per blob made this thread wait
        # for the GIL thousands of times while the event loop parsed and verified the next
        # frames, which tripled the time of a batch (docs/performance.md).
        keys = json.dumps([it.blob_id for it in items])

        def waiting_rows() -> dict[str, int]:
            return dict(self._json_rows(
                "SELECT json_group_array(json_array(b.blob_id, b.id)) FROM json_each(?) AS k "
                "CROSS JOIN blobs AS b WHERE b.namespace = ? AND b.blob_id = k.value "
                "AND b.status IN (?, ?)",
                (keys, namespace, *waiting),
            ))

        old_files: list[Path] = []

        def q() -> list[bool]:
            conn = self._conn
            before = waiting_rows()
            written = {before[it.blob_id]: it.payload for it in items
                       if it.payload is not None and it.blob_id in before}
            if written:
                with self._tx():
                    self._put_payloads(list(written.items()))
            out: list[bool] = []
            updates: list[list[Any]] = []
            with self._tx():
                found = waiting_rows()  # another process may have moved some meanwhile
                for it in items:
                    row_id = found.pop(it.blob_id, None)  # twice in a batch: kept once
                    if row_id is None or (it.payload is not None and row_id not in written):
                        out.append(False)
                        continue
                    tag = it.tag if it.payload is None else it.payload[-TAG_SIZE:]
                    updates.append([row_id, it.size, it.sealed_size, it.location,
                                    int(it.payload is not None), int(it.external),
                                    None if tag is None else bytes(tag).hex()])
                    out.append(True)
                updated = json.dumps([u[0] for u in updates])
                # A row the feed moved back to waiting (another blob under its id) still
                # holds its old payload: a file goes once the new one is kept, an inline
                # one is replaced above or goes here.
                replaced = self._json_rows(
                    "SELECT json_group_array(json_array(b.id, b.location, b.inline)) "
                    "FROM json_each(?) AS k CROSS JOIN blobs AS b WHERE b.id = k.value "
                    "AND (b.location IS NOT NULL OR b.inline)",
                    (updated,),
                )
                conn.execute(
                    "UPDATE blobs SET status = ?, size = v.value ->> 1, "
                    "sealed_size = v.value ->> 2, location = v.value ->> 3, "
                    "inline = v.value ->> 4, external = v.value ->> 5, "
                    "tag = unhex(v.value ->> 6), retries = 0, next_attempt = 0, "
                    "verify_failures = 0, partial_tag = NULL "
                    "FROM json_each(?) AS v WHERE blobs.id = v.value ->> 0",
                    (synced, json.dumps(updates)),
                )
                gone = [r[0] for r in replaced if r[0] not in written]
                if gone:
                    conn.execute(
                        "DELETE FROM pl.payloads WHERE id IN (SELECT value FROM json_each(?))",
                        (json.dumps(gone),),
                    )
                old_files.extend(self.blob_path(r[1]) for r in replaced if r[1] is not None)
                # Payloads written for rows that stopped waiting, unless such a row took
                # a payload of its own meanwhile (same id, same verified blob).
                unclaimed = set(written) - {u[0] for u in updates}
                if unclaimed:
                    conn.execute(
                        "DELETE FROM pl.payloads WHERE id IN (SELECT value FROM json_each(?)) "
                        "AND id NOT IN (SELECT id FROM main.blobs WHERE inline = 1)",
                        (json.dumps(sorted(unclaimed)),),
                    )
            return out

        kept = await self._run(q)
        if old_files:
            await asyncio.to_thread(unlink_all, old_files)
        return kept

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
            unlink_all, [self.blob_path(r.location) for r in moved if r.location]
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

    # --- payload files -------------------------------------------------------------------

    async def discard_files(self, row: Row) -> None:
        """Remove the payload file and any partial download of a row."""
        paths = [self.partial_path(row.namespace, row.blob_id)]
        if row.location:
            paths.append(self.blob_path(row.location))
        await asyncio.to_thread(unlink_all, paths)

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
            with disk_full_is_no_space(self.blobs_dir):
                await asyncio.to_thread(durable_move, src, self.blob_path(location))
        except BaseException:
            self._torn = True
            raise
        return location

