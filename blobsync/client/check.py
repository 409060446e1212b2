"""check: what is wrong with a profile's local store, and with ``remote`` between it and
the server (``BlobManager.check``; the CLI's ``blobsync check``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from blobsync.format import TAG_SIZE, InvalidBlob

from .errors import BlobNotFound, ClientError
from .localstore import Row
from .model import SyncStatus
from .parts import Parts, UsesParts
from .verified import open_into


class CheckProblem(str):
    """One line of ``check``; ``repaired`` when ``check(repair=True)`` fixed it."""

    repaired: bool

    def __new__(cls, text: str, *, repaired: bool = False) -> CheckProblem:
        self = super().__new__(cls, text)
        self.repaired = repaired
        return self


class Checker(UsesParts):
    """One profile's check. ``verify_local`` opens a local blob, keeping nothing, and
    raises InvalidBlob (or ClientError) when it does not verify."""

    def __init__(self, parts: Parts, verify_local: Callable[[Row], Awaitable[None]]) -> None:
        super().__init__(parts)
        self._verify_local = verify_local

    async def run(self, *, remote: bool, repair: bool) -> list[str]:
        """See ``BlobManager.check``."""
        problems: list[str] = [
            CheckProblem(f"database: {p}") for p in await self.store.check_integrity()
        ]
        rows = await self.store.rows(None)
        referenced = {r.location for r in rows if r.location}
        verified: dict[tuple[str, str], Row] = {}  # SYNCED and verified here
        found: list[tuple[Row, str]] = []  # in the order of the rows
        for row in rows:
            if row.has_payload:
                try:
                    await self._verify_local(row)
                except InvalidBlob as exc:
                    found.append((row, f"local copy does not verify ({exc})"))
                except ClientError as exc:
                    found.append((row, str(exc)))
                else:
                    if row.status is SyncStatus.SYNCED:
                        verified[(row.namespace, row.blob_id)] = row
            if row.status in (SyncStatus.FAILED_DOWNLOAD, SyncStatus.FAILED_UPLOAD):
                found.append((row, row.status.value))
        damaged = [r for r, _ in found if r.has_payload]
        moved: set[int] = set()
        if repair:
            async with self.lock.hold("check --repair"):
                moved = {r.id for r in await self.store.refetch(damaged)}
            referenced -= {r.location for r in damaged if r.id in moved}
        for row, reason in found:
            line = f"{row.namespace}/{row.blob_id}: {reason}"
            if row.id in moved:
                problems.append(CheckProblem(
                    f"{line}; repaired: it is downloaded again at the next sync",
                    repaired=True,
                ))
            elif repair and row.has_payload and row.status is not SyncStatus.SYNCED:
                problems.append(CheckProblem(
                    f"{line}; lost: it was never uploaded, so no other copy exists "
                    f"('blobsync rm {row.blob_id}' forgets it)"
                ))
            else:
                problems.append(CheckProblem(line))
        for path in await asyncio.to_thread(lambda: list(self.store.blobs_dir.rglob("*"))):
            if path.is_file() and path.name not in referenced:
                problems.append(
                    CheckProblem(f"stray file {path.relative_to(self.home)}")
                )
        if remote:
            by_ns: dict[str, dict[str, Row]] = {}
            for row in rows:
                by_ns.setdefault(row.namespace, {})[row.blob_id] = row
            for ns, local in by_ns.items():
                listed = await self.transport.list_blobs(ns)
                there = set(listed)
                for blob_id, row in local.items():
                    if row.status is SyncStatus.SYNCED and blob_id not in there:
                        problems.append(
                            CheckProblem(f"{ns}/{blob_id}: SYNCED here but not on the server")
                        )
                for blob_id in sorted(there - set(local)):
                    problems.append(
                        CheckProblem(f"{ns}/{blob_id}: on the server, not known here (sync)")
                    )
                for blob_id in listed:
                    mine = verified.get((ns, blob_id))
                    if mine is not None:
                        reason = await self._compare_remote(mine)
                    else:
                        reason = await self._verify_remote(ns, blob_id)
                    if reason:
                        problems.append(CheckProblem(f"{ns}/{blob_id}: the server's copy {reason}"))
        return problems

    async def _compare_remote(self, row: Row) -> str | None:
        """The server's tag against the verified local copy's: 16 bytes instead of the
        whole blob. Only when they differ is the server's copy downloaded, to tell a
        damaged copy from another blob under the same id."""
        theirs = await self.transport.blob_tail(row.namespace, row.blob_id)
        if theirs is None or theirs == await self.store.tail(row, TAG_SIZE):
            return None  # None: deleted since the listing
        reason = await self._verify_remote(row.namespace, row.blob_id)
        return reason or "is another blob under the same id (this device holds other bytes)"

    async def _verify_remote(self, namespace: str, blob_id: str) -> str | None:
        """Download the server's copy and open it, keeping nothing; a reason if it fails."""
        try:
            async with self.transport.get_blob(namespace, blob_id) as dl:
                await open_into(self._secret, blob_id, dl.chunks(), None)
        except InvalidBlob as exc:
            return f"does not verify ({exc})"
        except BlobNotFound:
            return None  # deleted since the listing
        return None
