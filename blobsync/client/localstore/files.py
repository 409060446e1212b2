"""The local store's files: sealed payloads too large for a row, partial downloads and
files being sealed. Written from the event loop without blocking it (``LocalFileWriter``),
made durable before they are kept (``durable_move``), read back in chunks (``read_file``);
a full disk while writing is ``NoSpace`` (``disk_full_is_no_space``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from ..errors import ClientError, is_no_space, no_space

# Bytes per file read or write: few syscalls and executor hops, still small next to the
# 100 MB memory bound even with several transfers at once.
FILE_CHUNK = 1 << 20
# Bytes written to a file between background flushes to disk (LocalFileWriter).
SYNC_EVERY = 32 << 20


@contextlib.contextmanager
def disk_full_is_no_space(where: Path) -> Iterator[None]:
    """ENOSPC while writing under ``where`` becomes NoSpace: one line for a person, and an
    error the sync engine does not mistake for a passing one."""
    try:
        yield
    except OSError as exc:
        if is_no_space(exc):
            raise no_space(exc, str(where)) from None
        raise


def unlink_all(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def durable_move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(src, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(src, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_tail(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - n))
            return f.read(n)
    except FileNotFoundError:
        raise ClientError(f"local payload file {path.name} is missing") from None


async def read_file(path: Path, offset: int = 0) -> AsyncIterator[bytes]:
    """A file's bytes from ``offset``, in chunks, without blocking the event loop."""
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        raise ClientError(f"local payload file {path.name} is missing") from None
    try:
        if offset:
            f.seek(offset)
        while True:
            chunk = await asyncio.to_thread(f.read, FILE_CHUNK)
            if not chunk:
                return
            yield chunk
    finally:
        f.close()


class LocalFileWriter:
    """Buffered writes to a file from the event loop: one thread hop per FILE_CHUNK.

    Pieces are kept as given (no copying into a buffer) and written with one
    ``writelines`` per hop; ``write`` takes ownership of what it is handed.

    Every file written here is made durable before it is kept, and one fsync of a whole
    large file at the end stalls for as long as the disk takes to absorb it (0.4 s for
    1 GiB here). So every SYNC_EVERY bytes a flush to disk starts in the background, and
    the disk works while the network delivers the rest.
    """

    def __init__(self, path: Path, *, append: bool = False) -> None:
        self.path = path
        self._append = append
        self._f: Any = None
        self._pieces: list[bytes] = []
        self._held = 0
        self._unsynced = 0
        # A concurrent future, not an asyncio one: whatever happens to the coroutine that
        # waits for it, the thread that closes the file waits for it first.
        self._sync: concurrent.futures.Future[None] | None = None
        self.written = 0

    async def open(self) -> LocalFileWriter:
        mode = "ab" if self._append else "wb"
        with disk_full_is_no_space(self.path.parent):
            self._f = await asyncio.to_thread(_open_private, self.path, mode)
        self.written = self._f.tell()
        return self

    async def write(self, data: bytes) -> None:
        self._pieces.append(data if isinstance(data, bytes) else bytes(data))
        self._held += len(data)
        self.written += len(data)
        if self._held >= FILE_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        with disk_full_is_no_space(self.path.parent):
            await self._flush()

    async def _flush(self) -> None:
        if self._pieces:
            pieces, self._pieces = self._pieces, []
            self._unsynced += self._held
            self._held = 0
            await asyncio.to_thread(self._f.writelines, pieces)
            if self._unsynced >= SYNC_EVERY and (self._sync is None or self._sync.done()):
                if self._sync is not None:
                    done, self._sync = self._sync, None
                    done.result()  # a flush to disk that failed fails the write, once
                self._unsynced = 0
                self._f.flush()  # a no-op once pieces are large; fdatasync sees the bytes
                self._sync = _FLUSHES.submit(os.fdatasync, self._f.fileno())

    async def close(self) -> None:
        """Write what is held and close; raises the error of a background flush, if any:
        the file is then not what it should be."""
        if self._f is not None:
            try:
                await self.flush()
            finally:
                f, self._f = self._f, None
                sync, self._sync = self._sync, None
                with disk_full_is_no_space(self.path.parent):
                    await asyncio.to_thread(_close_after, f, sync)


# Background flushes to disk of LocalFileWriter files (few at a time: they wait on the disk).
_FLUSHES = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="blobsync-flush")


def _close_after(f: Any, sync: concurrent.futures.Future[None] | None) -> None:
    """Close ``f`` once the flush running on its fd (if any) is over, then report how that
    flush went. The fd must outlive it: closed earlier, its number could be reused."""
    try:
        if sync is not None:
            concurrent.futures.wait([sync])
    finally:
        f.close()
    if sync is not None:
        sync.result()


def _open_private(path: Path, mode: str) -> Any:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    f = os.fdopen(fd, mode)
    f.seek(0, os.SEEK_END)
    return f
