"""Client settings, and the retry schedule of SPEC 7."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# SPEC 7: 10, 20, 30, 40, 50, then 60 seconds, and every 60 seconds after.
RETRY_STEP = 10.0
RETRY_MAX = 60.0

# Sealed payloads up to this size live inside the encrypted database, larger ones as sealed
# files beside it. Measured (docs/client.md, bench/client_localstore.py): for 10 KB blobs
# the database writes ~3x faster (no fsync and rename per file) and reads ~1.5x faster;
# past ~64 KB reads from files win, past ~300 KB writes too, and only files stream in
# chunks and resume with Range.
DEFAULT_INLINE_MAX = 64 << 10


@dataclass
class ClientSettings:
    concurrency: int = 3  # concurrent transfers (a stream batch counts as one)
    stream: bool = True  # False: one request per blob (--no-stream)
    stream_threshold: int = 1 << 20  # blobs up to this plaintext size travel in streams
    stream_max_count: int = 1000  # blobs per stream request
    stream_max_bytes: int = 16 << 20  # sealed bytes per stream request
    retry_scale: float = 1.0  # multiplies the 10..60 s retry schedule (tests use ~0.01)
    max_verify_failures: int = 3  # then FAILED_DOWNLOAD
    # Additions beyond the contract:
    inline_max: int = DEFAULT_INLINE_MAX  # sealed size kept inside the database
    max_sync_wait: float | None = None  # give up waiting for retries after this (None: never)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # silence on an open connection counts as a dropped one
    ca_file: str | None = None  # CA bundle for a server with a private certificate
    lock_wait: float = 5.0  # seconds a writer waits for another process's lock (lock.py)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.stream_max_count < 1 or self.stream_max_bytes < 1:
            raise ValueError("stream_max_count and stream_max_bytes must be positive")
        if self.retry_scale < 0:
            raise ValueError("retry_scale must not be negative")
        if self.max_verify_failures < 1:
            raise ValueError("max_verify_failures must be at least 1")
        if self.lock_wait < 0:
            raise ValueError("lock_wait must not be negative")

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        return min(RETRY_STEP * max(attempt, 1), RETRY_MAX) * self.retry_scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ClientSettings:
        # Unknown keys are ignored so that an older library can read a newer config.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})
