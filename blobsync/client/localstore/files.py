"""The local store's files: sealed payloads too large for a row, partial downloads and
files being sealed. Written from the event loop without blocking it (``LocalFileWriter``),
made durable before they are kept (``durable_move``), read back in chunks (``read_file``);
a full disk while writing is ``NoSpace`` (``disk_full_is_no_space``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import mmap
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
    ``writelines`` per hop; ``write`` takes ownership of what it is handed. A hop runs
    while the caller goes on (the next piece decrypted while the last is written): one
    hop at a time, so the order holds and at most one FILE_CHUNK more is held; its error
    comes out of the next ``write`` or of ``close``.

    Every file written here is made durable before it is kept, and one fsync of a whole
    large file at the end stalls for as long as the disk takes to absorb it (0.4 s for
    1 GiB here). So every SYNC_EVERY bytes a flush to disk starts in the background, and
    the disk works while the network delivers the rest.

    ``direct``: for a large file that nobody reads soon (a download kept sealed), whole
    blocks go to the disk with O_DIRECT, past the page cache (``DirectWriter``).
    """

    def __init__(self, path: Path, *, append: bool = False, direct: bool = False) -> None:
        self.path = path
        self._append = append
        self._want_direct = direct
        self._direct: DirectWriter | None = None
        self._f: Any = None
        self._pieces: list[bytes] = []
        self._held = 0
        self._unsynced = 0
        # Concurrent futures, not asyncio ones: whatever happens to the coroutine that
        # waits for them, the thread that closes the file waits for them first.
        self._writing: concurrent.futures.Future[None] | None = None
        self._sync: concurrent.futures.Future[None] | None = None
        self._broken = False  # a hop failed
        self.written = 0

    async def open(self) -> LocalFileWriter:
        mode = "ab" if self._append else "wb"
        with disk_full_is_no_space(self.path.parent):
            self._f = await asyncio.to_thread(_open_private, self.path, mode)
        self.written = self._f.tell()
        if self._want_direct:
            self._direct = DirectWriter(self._f.fileno(), self.written)
        return self

    async def write(self, data: bytes) -> None:
        self._pieces.append(data if isinstance(data, bytes) else bytes(data))
        self._held += len(data)
        self.written += len(data)
        if self._held >= FILE_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        """Hand what is held to the writing thread (after the hop before it landed)."""
        with disk_full_is_no_space(self.path.parent):
            await self._flush()

    async def _flush(self) -> None:
        await self._landed()
        if self._broken:
            # After a hop that failed nothing more is written: the file stays a prefix of
            # what was given (a partial download resumes from its end).
            self._pieces, self._held = [], 0
        if self._pieces:
            pieces, self._pieces = self._pieces, []
            self._unsynced += self._held
            self._held = 0
            self._writing = WRITE_HOPS.submit(_write_hop, self._f, self._direct, pieces)
            if self._unsynced >= SYNC_EVERY and (self._sync is None or self._sync.done()):
                if self._sync is not None:
                    done, self._sync = self._sync, None
                    done.result()  # a flush to disk that failed fails the write, once
                self._unsynced = 0
                # Behind the hop just handed over: what it writes is (mostly) not in yet.
                self._sync = _FLUSHES.submit(_datasync_after, self._f, self._writing)

    async def _landed(self) -> None:
        """Wait for the hop under way, if any; its error is raised once."""
        fut = self._writing
        if fut is None:
            return
        try:
            # Shielded: a cancelled waiter must not cancel a hop still queued, which would
            # leave a hole before the ones after it.
            await asyncio.shield(asyncio.wrap_future(fut))
        except BaseException:
            if fut.done():
                self._writing = None
                self._broken = True
            raise
        self._writing = None

    async def close(self) -> None:
        """Write what is held and close; raises the error of a background write or flush,
        if any: the file is then not what it should be."""
        if self._f is not None:
            try:
                await self.flush()
                with disk_full_is_no_space(self.path.parent):
                    await self._landed()
                if self._direct is not None and not self._broken:
                    with disk_full_is_no_space(self.path.parent):
                        await asyncio.to_thread(self._direct.finish)
            finally:
                f, self._f = self._f, None
                pending = [fut for fut in (self._writing, self._sync) if fut is not None]
                self._writing = self._sync = None
                direct, self._direct = self._direct, None
                with disk_full_is_no_space(self.path.parent):
                    await asyncio.to_thread(_close_after, f, pending, direct)


# Hops of LocalFileWriter and DestFile writes (one at a time per file).
WRITE_HOPS = concurrent.futures.ThreadPoolExecutor(
    max_workers=4, thread_name_prefix="blobsync-write"
)
# Background flushes to disk of LocalFileWriter files (few at a time: they wait on the disk).
_FLUSHES = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="blobsync-flush")


def _write_hop(f: Any, direct: DirectWriter | None, pieces: list[bytes]) -> None:
    if direct is not None:
        direct.write(pieces)
    else:
        f.writelines(pieces)


def _datasync_after(f: Any, writing: concurrent.futures.Future[None] | None) -> None:
    if writing is not None:
        concurrent.futures.wait([writing])
    f.flush()  # a no-op once pieces are large; fdatasync sees the bytes
    os.fdatasync(f.fileno())


def _close_after(
    f: Any, pending: list[concurrent.futures.Future[None]], direct: DirectWriter | None = None
) -> None:
    """Close ``f`` once the writes and flushes running on its fd (if any) are over, then
    report how they went. The fd must outlive them: closed earlier, its number could be
    reused."""
    try:
        if pending:
            concurrent.futures.wait(pending)
    finally:
        try:
            f.close()
        finally:
            if direct is not None:
                direct.release()
    for fut in pending:
        fut.result()


# O_DIRECT wants the file offset, the length and the memory of a write aligned: 4 KiB
# covers every block size in use.
_ALIGN = 4096
_DIRECT_BUFFER = 4 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class DirectWriter:
    """O_DIRECT writes of a file, on the writing thread: pieces are copied into one
    page-aligned buffer and whole blocks of it written past the page cache; the last
    partial block is written normally by ``finish``.

    Why: on this VM, writing 1 GiB through the page cache cost 0.3 to over 3 s of kernel
    time, mostly in the copy into freshly allocated cache pages (fresh guest memory is
    slow to touch), against 0.1 s direct. Where O_DIRECT is refused (tmpfs, some network
    file systems: EINVAL), everything is written normally.
    """

    def __init__(self, fd: int, pos: int) -> None:
        self._fd = fd
        self._pos = pos  # where the file ends: appends go there
        self._buf: mmap.mmap | None = None
        self._fill = 0
        self._refused = not _O_DIRECT
        # Left on by an earlier writer of the same fd (DestFile.reset), if any.
        self._on = bool(_O_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & _O_DIRECT)

    def write(self, pieces: list[bytes]) -> None:
        if self._refused:
            if self._fill:  # held when O_DIRECT was refused: it comes first
                assert self._buf is not None
                _write_all(self._fd, [memoryview(self._buf)[: self._fill]])
                self._pos += self._fill
                self._fill = 0
            _write_all(self._fd, pieces)
            self._pos += sum(map(len, pieces))
            return
        if self._buf is None:
            self._buf = mmap.mmap(-1, _DIRECT_BUFFER)
        buf = self._buf
        for piece in pieces:
            view = memoryview(piece)
            while view:
                n = min(len(view), _DIRECT_BUFFER - self._fill)
                buf[self._fill : self._fill + n] = view[:n]
                self._fill += n
                view = view[n:]
                if self._fill == _DIRECT_BUFFER:
                    self._drain()
        self._drain()

    def _drain(self) -> None:
        """Write the whole blocks held, keep the rest at the buffer's start."""
        assert self._buf is not None
        head = -self._pos % _ALIGN  # to reach an aligned offset, written normally
        if head:
            if self._fill < head:
                return
            self._switch(False)
            _write_all(self._fd, [memoryview(self._buf)[:head]])
            self._pos += head
            self._shift(head)
        whole = self._fill - self._fill % _ALIGN
        if not whole:
            return
        self._switch(True)
        if self._refused:
            _write_all(self._fd, [memoryview(self._buf)[:whole]])
        else:
            view = memoryview(self._buf)[:whole]
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                if exc.errno != errno.EINVAL or len(view) != whole:
                    raise
                # Taken by fcntl but refused at the write (an alignment larger than ours).
                view.release()
                self._switch(False)
                self._refused = True
                _write_all(self._fd, [memoryview(self._buf)[:whole]])
            finally:
                view.release()
        self._pos += whole
        self._shift(whole)

    def _shift(self, n: int) -> None:
        assert self._buf is not None
        rest = self._fill - n
        if rest:
            self._buf.move(0, n, rest)
        self._fill = rest

    def _switch(self, on: bool) -> None:
        if on == self._on or (on and self._refused):
            return
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETFL,
                        flags | _O_DIRECT if on else flags & ~_O_DIRECT)
        except OSError as exc:
            if not on or exc.errno != errno.EINVAL:
                raise
            self._refused = True
            return
        self._on = on

    def finish(self) -> None:
        """Write the last partial block, normally."""
        if self._buf is not None and self._fill:
            self._switch(False)
            _write_all(self._fd, [memoryview(self._buf)[: self._fill]])
            self._pos += self._fill
            self._fill = 0

    def release(self) -> None:
        buf, self._buf = self._buf, None
        if buf is not None:
            with contextlib.suppress(BufferError):  # a view still held: unmapped when freed
                buf.close()


def _write_all(fd: int, pieces: list[bytes] | list[memoryview]) -> None:
    for piece in pieces:
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view) :]


def _open_private(path: Path, mode: str) -> Any:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    f = os.fdopen(fd, mode)
    f.seek(0, os.SEEK_END)
    return f
