"""In-memory backends: for tests and for trying the server out. Nothing survives a restart.

Every method runs to completion without awaiting, so on one event loop each is atomic,
which is all the MetadataIndex contract asks for.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from blobsync.format.limits import CHUNK_SIZE

from .base import (
    BlobExists,
    BlobInfo,
    BlobNotFound,
    Change,
    ChangePage,
    CursorGone,
    MetadataIndex,
    NewBlob,
    Order,
    PayloadStore,
    PayloadWriter,
    PreconditionFailed,
    Principal,
    QuotaExceeded,
    UserExists,
    UserNotFound,
)

_Space = tuple[str, str]  # (user, namespace)


class MemoryIndex(MetadataIndex):
    def __init__(self) -> None:
        self._users: dict[str, Principal] = {}
        self._services: dict[str, Principal] = {}
        # Per (user, namespace), blob_id -> row. Dicts keep insertion order, and rows are
        # inserted in seq order, so iteration order is the stored order.
        self._blobs: dict[_Space, dict[str, BlobInfo]] = {}
        # Per (user, namespace), blob_id -> None, in deletion order (re-deletion moves it last).
        self._tombstones: dict[_Space, dict[str, None]] = {}
        self._usage: dict[str, int] = {}
        self._seq = 0
        # The change feed: per user, (commit time, change) in seq order, and the horizon
        # (the newest seq retention dropped). A fresh id per index: nothing survives.
        self._changes: dict[str, list[tuple[float, Change]]] = {}
        self._horizon: dict[str, int] = {}
        self._change_seq = 0
        self.feed_id = os.urandom(8).hex()

    def _append(
        self, user: str, namespace: str, blob_id: str, op: str, *, size: int | None = None,
        tag: bytes | None = None, flags: frozenset[str] | None = None, meta: str | None = None,
    ) -> None:
        self._change_seq += 1
        change = Change(self._change_seq, namespace, blob_id, op, size, tag, flags, meta)
        self._changes.setdefault(user, []).append((time.time(), change))

    # users and services -----------------------------------------------------------------
    async def add_user(self, uuid: str, token_hash: str) -> None:
        if uuid in self._users:
            raise UserExists(f"user {uuid} exists")
        self._users[uuid] = Principal(uuid, token_hash)

    async def set_user_token(self, uuid: str, token_hash: str) -> None:
        if uuid not in self._users:
            raise UserNotFound(f"no user {uuid}")
        self._users[uuid] = Principal(uuid, token_hash)

    async def remove_user(self, uuid: str) -> None:
        if self._users.pop(uuid, None) is None:
            raise UserNotFound(f"no user {uuid}")
        for space in [s for s in self._blobs if s[0] == uuid]:
            del self._blobs[space]
        for space in [s for s in self._tombstones if s[0] == uuid]:
            del self._tombstones[space]
        self._usage.pop(uuid, None)
        self._changes.pop(uuid, None)
        self._horizon.pop(uuid, None)

    async def get_user(self, uuid: str) -> Principal | None:
        return self._users.get(uuid)

    async def list_users(self) -> list[Principal]:
        return sorted(self._users.values(), key=lambda p: p.name)

    async def add_service(self, name: str, token_hash: str) -> None:
        self._services[name] = Principal(name, token_hash)

    async def get_service(self, name: str) -> Principal | None:
        return self._services.get(name)

    async def list_services(self) -> list[Principal]:
        return sorted(self._services.values(), key=lambda p: p.name)

    async def remove_service(self, name: str) -> None:
        if self._services.pop(name, None) is None:
            raise UserNotFound(f"no service {name}")

    # blobs ------------------------------------------------------------------------------
    async def insert_blob(
        self,
        user: str,
        namespace: str,
        blob: NewBlob,
        quota: int = 0,
    ) -> BlobInfo:
        blob_id, size = blob.blob_id, blob.size
        rows = self._blobs.setdefault((user, namespace), {})
        if blob_id in rows:
            raise BlobExists(f"blob {blob_id} exists")
        used = self._usage.get(user, 0)
        if quota > 0 and used + size > quota:
            raise QuotaExceeded(f"quota of {quota} bytes exceeded")
        self._seq += 1
        info = BlobInfo(
            user, namespace, blob_id, size, bytes(blob.tag), frozenset(blob.flags), self._seq,
            blob.location, blob.meta,
        )
        rows[blob_id] = info
        self._usage[user] = used + size
        self._tombstones.get((user, namespace), {}).pop(blob_id, None)
        self._append(user, namespace, blob_id, "put", size=size, tag=info.tag, flags=info.flags,
                     meta=info.meta)
        return info

    async def get_blob(self, user: str, namespace: str, blob_id: str) -> BlobInfo | None:
        return self._blobs.get((user, namespace), {}).get(blob_id)

    async def delete_blob(self, user: str, namespace: str, blob_id: str) -> BlobInfo:
        info = self._blobs.get((user, namespace), {}).pop(blob_id, None)
        if info is None:
            raise BlobNotFound(f"no blob {blob_id}")
        self._usage[user] = self._usage.get(user, 0) - info.size
        tombs = self._tombstones.setdefault((user, namespace), {})
        tombs.pop(blob_id, None)  # a second deletion of a re-created id is the newest
        tombs[blob_id] = None
        self._append(user, namespace, blob_id, "delete")
        return info

    async def set_flags(
        self,
        user: str,
        namespace: str,
        blob_id: str,
        flags: frozenset[str],
        expect: str | None = None,
    ) -> None:
        rows = self._blobs.get((user, namespace), {})
        info = rows.get(blob_id)
        if info is None:
            raise BlobNotFound(f"no blob {blob_id}")
        if expect is not None and expect not in info.flags:
            raise PreconditionFailed(f"blob {blob_id} is not flagged {expect}")
        rows[blob_id] = replace(info, flags=frozenset(flags))
        self._append(user, namespace, blob_id, "flags", flags=frozenset(flags))

    def _select(self, user: str, namespace: str, filter_flag: str | None) -> list[str]:
        rows = self._blobs.get((user, namespace), {})
        if filter_flag is None:
            return list(rows)
        return [bid for bid, info in rows.items() if filter_flag in info.flags]

    async def list_blobs(
        self,
        user: str,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order: Order = Order.NONE,
        limit: int | None = None,
    ) -> list[str]:
        ids = self._select(user, namespace, filter_flag)
        if order is Order.NEWEST_FIRST:
            ids.reverse()
        return ids if limit is None else ids[: max(limit, 0)]

    async def count_blobs(
        self, user: str, namespace: str, *, filter_flag: str | None = None
    ) -> int:
        return len(self._select(user, namespace, filter_flag))

    async def list_deleted(self, user: str, namespace: str) -> list[str]:
        return list(self._tombstones.get((user, namespace), {}))

    async def add_tombstone(self, user: str, namespace: str, blob_id: str) -> bool:
        tombs = self._tombstones.setdefault((user, namespace), {})
        if blob_id in self._blobs.get((user, namespace), {}) or blob_id in tombs:
            return False
        tombs[blob_id] = None
        return True

    async def get_blobs(self, user: str, namespace: str, blob_ids: list[str]) -> list[BlobInfo]:
        rows = self._blobs.get((user, namespace), {})
        return [rows[bid] for bid in blob_ids if bid in rows]

    async def usage(self, user: str) -> int:
        return self._usage.get(user, 0)

    async def all_locations(self) -> set[str]:
        return {info.location for rows in self._blobs.values() for info in rows.values()}

    # the change feed --------------------------------------------------------------------
    async def read_changes(
        self, user: str, since: int | None, limit: int, namespace: str | None = None
    ) -> ChangePage:
        horizon = self._horizon.get(user, 0)
        if since is not None and not horizon <= since <= self._change_seq:
            raise CursorGone(f"cursor {since} is outside the feed ({horizon}..{self._change_seq})")
        start = horizon if since is None else since
        log = self._changes.get(user, [])
        out: list[Change] = []
        for _, change in log:
            if change.seq <= start or (namespace is not None and change.namespace != namespace):
                continue
            if len(out) == limit:
                return ChangePage(out, out[-1].seq, False)
            out.append(change)
        return ChangePage(out, max(start, log[-1][1].seq if log else 0), True)

    async def feed_position(self, user: str) -> int:
        log = self._changes.get(user)
        return max(self._horizon.get(user, 0), log[-1][1].seq if log else 0)

    async def compact_changes(
        self, retention_seconds: float | None, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        dropped = 0
        for user, log in self._changes.items():
            kept: list[tuple[float, Change]] = []
            # Newest first: what a later change of the same blob supersedes is dropped.
            replaced: set[tuple[str, str]] = set()  # a put or delete came later
            reflagged: set[tuple[str, str]] = set()  # a flags change came later
            for when, change in reversed(log):
                key = (change.namespace, change.blob_id)
                old = retention_seconds is not None and when < now - retention_seconds
                if old:
                    self._horizon[user] = max(self._horizon.get(user, 0), change.seq)
                if old or key in replaced or (change.op == "flags" and key in reflagged):
                    dropped += 1
                    continue
                kept.append((when, change))
                (reflagged if change.op == "flags" else replaced).add(key)
            kept.reverse()
            log[:] = kept
        return dropped

    async def changed_since(self, seq: int) -> tuple[int, set[str]]:
        users = {u for u, log in self._changes.items() if log and log[-1][1].seq > seq}
        return self._change_seq, users


class _MemoryWriter(PayloadWriter):
    def __init__(self, store: MemoryPayloads, base: str) -> None:
        self._store = store
        self._base = base
        self._buf: bytearray | None = bytearray()
        self._location: str | None = None

    async def write(self, chunk: bytes) -> None:
        if self._buf is None:
            raise RuntimeError("write after commit or abort")
        self._buf += chunk

    async def commit(self) -> str:
        if self._buf is None:
            raise RuntimeError("commit after commit or abort")
        location = self._base
        while location in self._store._data:
            location = f"{self._base}~{os.urandom(8).hex()}"
        self._store._data[location] = (bytes(self._buf), time.time())
        self._buf = None
        self._location = location
        return location

    async def abort(self) -> None:
        # After a commit the location belongs to the caller, who deletes it if needed.
        self._buf = None


class MemoryPayloads(PayloadStore):
    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}

    async def writer(self, user: str, namespace: str, blob_id: str) -> PayloadWriter:
        return _MemoryWriter(self, f"{user}/{namespace}/{blob_id}")

    async def read(
        self, location: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        entry = self._data.get(location)
        if entry is None:
            raise BlobNotFound(f"no payload at {location}")
        data = entry[0]
        end = len(data) if length is None else min(len(data), offset + length)
        view = memoryview(data)
        for start in range(offset, end, CHUNK_SIZE):
            yield bytes(view[start : min(start + CHUNK_SIZE, end)])

    async def delete(self, location: str) -> None:
        self._data.pop(location, None)

    async def locations(self) -> AsyncIterator[tuple[str, float]]:
        for location, (_, mtime) in list(self._data.items()):
            yield location, mtime
