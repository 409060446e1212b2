"""Build the BlobStore a server runs on, from the metadata and payload URLs it is given."""

from __future__ import annotations

import os

from .base import MetadataIndex, PayloadStore
from .blobstore import BlobStore

MEMORY = "memory:"
# The embedded metadata index; its presence is what makes a directory a data directory.
INDEX_FILE = "index.sqlite3"


def make_index(data_dir: str, metadata: str | None) -> MetadataIndex:
    """None: SQLite in ``data_dir``; ``memory:``; or ``postgresql://...``."""
    if metadata is None:
        from .sqlite import SQLiteIndex

        return SQLiteIndex(os.path.join(data_dir, INDEX_FILE))
    if metadata == MEMORY:
        from .memory import MemoryIndex

        return MemoryIndex()
    if _is_postgres(metadata):
        try:
            from .postgres import PostgresIndex
        except ImportError as exc:
            raise ValueError(f"PostgreSQL metadata is not available: {exc}") from exc
        return PostgresIndex(metadata)
    raise ValueError(
        "metadata must be unset (SQLite in the data dir), 'memory:' or a postgresql:// URL"
    )


def _is_postgres(metadata: str | None) -> bool:
    return metadata is not None and metadata.startswith(("postgresql://", "postgres://"))


def make_payloads(
    data_dir: str,
    payload: str | None,
    metadata: str | None = None,
    inline_max: int | None = None,
) -> PayloadStore:
    """None: tiered in ``data_dir``, payloads up to INLINE_MAX in ``payloads.sqlite3`` and
    larger ones as files under ``blobs``; ``memory:``; or ``s3://bucket/prefix``.

    S3 under PostgreSQL ``metadata`` is tiered too: payloads up to ``inline_max`` (None:
    pgpayloads.INLINE_MAX; 0: none, every new payload an S3 object) are rows of the
    metadata database, larger ones S3 objects. The rows tier stays even at 0, so that the
    rows written before it was turned off still read. ``inline_max`` changes nothing
    elsewhere."""
    if payload is None:
        from .files import FilePayloads
        from .sqlitepayloads import SQLitePayloads
        from .tiered import TieredPayloads

        return TieredPayloads(
            SQLitePayloads(os.path.join(data_dir, "payloads.sqlite3")),
            FilePayloads(os.path.join(data_dir, "blobs")),
        )
    if payload == MEMORY:
        from .memory import MemoryPayloads

        return MemoryPayloads()
    if payload.startswith("s3://"):
        bucket, _, prefix = payload[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {payload!r}: use s3://bucket/prefix")
        try:
            from .s3 import S3Payloads
        except ImportError as exc:
            raise ValueError(f"S3 payloads are not available: {exc}") from exc
        objects = S3Payloads(bucket, prefix.strip("/"))
        if not _is_postgres(metadata):
            return objects
        from .pgpayloads import INLINE_MAX, PostgresPayloads
        from .tiered import TieredPayloads

        assert metadata is not None
        limit = INLINE_MAX if inline_max is None else inline_max
        return TieredPayloads(PostgresPayloads(metadata, max_size=limit), objects)
    raise ValueError(
        "payload must be unset (SQLite and files in the data dir), 'memory:' or s3://bucket/prefix"
    )


def make_store(
    data_dir: str,
    metadata: str | None,
    payload: str | None,
    quota: int = 0,
    max_blob_size: int | None = None,
    inline_max: int | None = None,
) -> BlobStore:
    """A BlobStore, not yet opened: call ``await store.open()``. ``inline_max``: see
    ``make_payloads``."""
    return BlobStore(
        make_index(data_dir, metadata),
        make_payloads(data_dir, payload, metadata, inline_max),
        quota=quota,
        max_blob_size=max_blob_size,
    )
