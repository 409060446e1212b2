"""What a tiered store's inline tier is: small payloads kept whole as database rows.

Two implement it: ``SQLitePayloads`` (the default store, ``db:`` locations) and
``PostgresPayloads`` (PostgreSQL + S3, ``pg:`` locations). ``TieredPayloads`` puts every
payload up to the tier's ``max_size`` there and the rest in its large tier (files or S3);
it tells the tiers' locations apart with ``owns``.
"""

from __future__ import annotations

import abc

from blobsync.format.errors import LimitExceeded

from .base import PayloadStore, PayloadWriter


class InlineStore(PayloadStore):
    """A payload store for small payloads, each held whole in memory while it passes."""

    max_size: int  # the largest payload it takes

    @abc.abstractmethod
    def owns(self, location: str) -> bool:
        """Whether ``location`` is one of this store's (never one of the large tier's)."""

    @abc.abstractmethod
    async def _store_all(self, payloads: list[bytes]) -> list[str]:
        """Each payload to a fresh location, all in ONE transaction, durable on return."""


class InlineWriter(PayloadWriter):
    """Buffers one small payload in memory; ``commit`` stores it as one row."""

    def __init__(self, store: InlineStore) -> None:
        self._store = store
        self._buf: bytearray | None = bytearray()

    def fits(self, more: int) -> bool:
        """Whether ``more`` bytes can still be added without passing ``max_size``."""
        return self._buf is not None and len(self._buf) + more <= self._store.max_size

    def take(self) -> bytes:
        """Hand over what was written and end this writer (a tiered writer spills it)."""
        if self._buf is None:
            raise RuntimeError("take after commit or abort")
        data, self._buf = bytes(self._buf), None
        return data

    async def write(self, chunk: bytes) -> None:
        if self._buf is None:
            raise RuntimeError("write after commit or abort")
        if not self.fits(len(chunk)):
            raise LimitExceeded(f"payload is larger than {self._store.max_size} bytes")
        self._buf += chunk

    async def commit(self) -> str:
        if self._buf is None:
            raise RuntimeError("commit after commit or abort")
        [location] = await self._store._store_all([bytes(self._buf)])
        self._buf = None
        return location

    async def abort(self) -> None:
        # After a commit the location belongs to the caller, who deletes it if needed.
        self._buf = None
