"""Plain data the client hands out: statuses, priorities, reports and progress; and the
checks of the ids and priorities callers hand in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from blobsync.format import valid_id

from .errors import ClientError

Priority = Literal["low", "medium", "high", "urgent"]
# Stored as integers so that "highest first" is a plain ORDER BY.
PRIORITY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "urgent": 3}
RANK_PRIORITY: dict[int, str] = {v: k for k, v in PRIORITY_RANK.items()}


def priority_rank(priority: str) -> int:
    try:
        return PRIORITY_RANK[priority]
    except KeyError:
        raise ValueError(
            f"priority must be one of {', '.join(PRIORITY_RANK)}, got {priority!r}"
        ) from None


def check_ids(*ids: str) -> None:
    for i in ids:
        if not isinstance(i, str) or not valid_id(i):
            raise ClientError(f"invalid id {i!r}: 1-254 of letters, digits, _ and -")


class SyncStatus(StrEnum):
    SYNCED = "SYNCED"
    PENDING_UPLOAD = "PENDING_UPLOAD"
    PENDING_DOWNLOAD = "PENDING_DOWNLOAD"
    FAILED_UPLOAD = "FAILED_UPLOAD"
    FAILED_DOWNLOAD = "FAILED_DOWNLOAD"
    PENDING_DELETE = "PENDING_DELETE"
    LOCAL_ONLY = "LOCAL_ONLY"


# Statuses whose sealed payload is in the local store.
HAS_PAYLOAD = frozenset(
    {SyncStatus.SYNCED, SyncStatus.PENDING_UPLOAD, SyncStatus.FAILED_UPLOAD, SyncStatus.LOCAL_ONLY}
)


@dataclass
class SyncReport:
    downloaded: int = 0
    uploaded: int = 0
    deleted_local: int = 0
    deleted_remote: int = 0
    failed: list[str] = field(default_factory=list)  # ids that ended FAILED_* in this run
    pending: list[str] = field(default_factory=list)  # still waiting (max_sync_wait passed)
    # Of ``failed``: ids the server holds another blob under (SPEC 7, a 409 conflict).
    taken: list[str] = field(default_factory=list)
    # Of ``failed``: the refusals the server gave for an upload (413 over the maximum blob
    # size, 507 over the user's quota), its words and status, so a user learns which.
    refusals: dict[str, ClientError] = field(default_factory=dict)


@dataclass(frozen=True)
class ForgottenHere:
    """What ``BlobManager.delete`` returns when it forgot a blob on this device only and
    sent no DELETE: the server never held this device's copy (``reason`` says why), and
    whatever it holds under that id belongs to someone else."""

    reason: str


@dataclass
class Progress:
    phase: str  # "seal" | "download" | "upload" | "delete"
    done: int
    total: int
    # Sealed bytes (plaintext bytes for "seal"): those of finished blobs, and those moved
    # so far of the blobs under way.
    bytes_done: int
    bytes_total: int  # sealed bytes known so far; download sizes are learned on the way
    # Of ``total``, the blobs whose size ``bytes_total`` counts (None: all of them).
    sized: int | None = None


ProgressCallback = Callable[[Progress], None]
