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
    if metadata.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresIndex
        except ImportError as exc:
            raise ValueError(f"PostgreSQL metadata is not available: {exc}") from exc
        return PostgresIndex(metadata)
    raise ValueError(
        "metadata must be unset (SQLite in the data dir), 'memory:' or a postgresql:// URL"
    )


def make_payloads(data_dir: str, payload: str | None) -> PayloadStore:
    """None: tiered in ``data_dir``, payloads up to INLINE_MAX in ``payloads.sqlite3`` and
    larger ones as files under ``blobs``; ``memory:``; or ``s3://bucket/prefix``."""
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
        return S3Payloads(bucket, prefix.strip("/"))
    raise ValueError(
        "payload must be unset (SQLite and files in the data dir), 'memory:' or s3://bucket/prefix"
    )


def make_store(
    data_dir: str,
    metadata: str | None,
    payload: str | None,
    quota: int = 0,
    max_blob_size: int | None = None,
) -> BlobStore:
    """A BlobStore, not yet opened: call ``await store.open()``."""
    return BlobStore(
        make_index(data_dir, metadata),
        make_payloads(data_dir, payload),
        quota=quota,
        max_blob_size=max_blob_size,
    )
