"""The rows the local store hands out and takes in: a blob's state (``Row``), a verified
download to keep (``Attach``), a blob sealed in memory (``Sealed``) and the file it was put
from (``Source``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blobsync.format import Meta

from ..model import HAS_PAYLOAD, SyncStatus

# The columns of ``blobs`` that ``Row.from_db`` reads, in its order.
COLUMNS = (
    "id, namespace, blob_id, status, priority, size, sealed_size, location, inline, external, "
    "retries, next_attempt, verify_failures, partial_tag, created"
)


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    namespace: str
    blob_id: str
    status: SyncStatus
    priority: int
    size: int | None
    sealed_size: int | None
    location: str | None
    inline: bool
    external: bool
    retries: int
    next_attempt: float
    verify_failures: int
    partial_tag: bytes | None
    created: float

    @property
    def has_payload(self) -> bool:
        return self.status in HAS_PAYLOAD

    @classmethod
    def from_db(cls, r: tuple[Any, ...]) -> Row:
        return cls(
            r[0], r[1], r[2], SyncStatus(r[3]), r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9]),
            r[10], r[11], r[12], r[13], r[14],
        )

# COLUMNS as one JSON array per row (``Row.from_json``), for reads of many rows in one
# step of SQLite: reals printed in full (JSON's own form keeps 15 digits), the BLOB in hex.
JSON_COLUMNS = (
    "json_array(id, namespace, blob_id, status, priority, size, sealed_size, location, "
    "inline, external, retries, printf('%.17g', next_attempt), verify_failures, "
    "CASE WHEN partial_tag IS NULL THEN NULL ELSE hex(partial_tag) END, "
    "printf('%.17g', created))"
)


def row_from_json(r: list[Any]) -> Row:
    """A Row from one array of JSON_COLUMNS."""
    return Row(
        r[0], r[1], r[2], SyncStatus(r[3]), r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9]),
        r[10], float(r[11]), r[12], None if r[13] is None else bytes.fromhex(r[13]),
        float(r[14]),
    )


@dataclass(frozen=True, slots=True)
class Attach:
    """A verified download waiting to be kept: inline ``payload`` or a file ``location``."""

    blob_id: str
    size: int
    sealed_size: int
    external: bool
    payload: bytes | None = None
    location: str | None = None
    tag: bytes | None = None  # for a file, when known (an inline payload ends with it)


@dataclass(frozen=True, slots=True)
class Source:
    """The file a blob was put from: absolute path, size and mtime when it was read."""

    path: str
    size: int
    mtime_ns: int
    # Permission bits, for a meta; not part of what identifies the file's content.
    mode: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A blob sealed in memory, to be kept inline: ``size`` is its plaintext size,
    ``source`` the file it came from (recorded with it)."""

    blob_id: str
    size: int
    payload: bytes
    source: Source | None = None
    meta: Meta | None = None  # what the meta says, kept readable in the encrypted store
    meta_text: str | None = None  # the sealed meta, as it travels


@dataclass(frozen=True, slots=True)
class Named:
    """A blob as a listing by name shows it: what its meta says (``name`` empty for a
    blob without one), with its state here."""

    blob_id: str
    status: SyncStatus
    size: int | None
    name: str
    mtime: float | None
    mode: int | None
    mtype: str | None
    created: float


# The columns ``Named.from_db`` reads, in its order.
NAMED_COLUMNS = "blob_id, status, size, coalesce(name, ''), mtime, mode, mtype, created"


def named_from_db(r: tuple[Any, ...]) -> Named:
    return Named(r[0], SyncStatus(r[1]), r[2], r[3], r[4], r[5], r[6], r[7])


def names_columns(meta: Meta | None, meta_text: str | None) -> tuple[Any, ...]:
    """The names columns of a row (schema.NAMES_COLUMNS) for what a meta says."""
    if meta is None:
        return (None, None, None, None, meta_text)
    return (meta.name, meta.mtime, meta.mode, meta.type, meta_text)
