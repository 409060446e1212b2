"""Plaintext is released only after its blob's tag verified: the one place that says so.

An ``Opener`` hands out plaintext as it decrypts, and all of it is unverified until
``finish()`` returned. Every client path that opens a blob (get, get into a device or a
FIFO, open_stream, the incoming box, check) goes through ``open_into``: it feeds the
sealed chunks to one Opener, puts what comes out into a ``Provisional`` holder, and only
once the tag verified marks the holder releasable. A holder refuses to hand anything out
before that, so no caller can get it wrong, as Fernet refuses to return unverified data.

A holder keeps plaintext in memory up to ``memory_max`` bytes and spills beyond it to an
unnamed temporary file (``tempfile.TemporaryFile`` in the store's tmp dir: no name, so a
crash leaves nothing). Or it writes into a ``Hidden`` target that nobody can see until
committed (``get(dest=FILE)``'s unnamed DestFile): released means committed then.

A blob already in the local store is not spooled to disk (a reader must work on a full
disk): ``reread_chunks`` opens it once into memory when it fits, and otherwise verifies
it first and decrypts it again as it releases it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Protocol

from blobsync.format import Opened, Opener

from .errors import ClientError, is_no_space, no_space

# Plaintext a holder keeps in memory before it spills to a temporary file.
MEMORY_MAX = 1 << 20
# Bytes per write to, and per read from, the spill file: one thread hop each.
_CHUNK = 1 << 20

AsyncSink = Callable[[bytes], Awaitable[None]]


class Hidden(Protocol):
    """A file nobody sees before ``commit`` (``get(dest=FILE)``'s unnamed DestFile)."""

    async def write(self, data: bytes) -> None: ...

    async def reset(self) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class Unverified(RuntimeError):
    """Plaintext asked of a holder whose blob has not verified: a programming error."""


class Provisional:
    """Plaintext of one blob being opened, held aside until ``open_into`` verified it.

    ``memory_max`` None keeps it all in memory (a ``get`` that returns bytes holds the
    blob whole anyway). Use as ``async with``: leaving drops what is held (and aborts a
    ``Hidden`` target not committed).
    """

    def __init__(
        self,
        tmp_dir: Path | None,
        *,
        memory_max: int | None = MEMORY_MAX,
        hidden: Hidden | None = None,
        spill: bool = True,
    ) -> None:
        self._tmp_dir = tmp_dir
        self._memory_max = memory_max
        self._hidden = hidden
        self._may_spill = spill
        # Past memory_max without spill: everything dropped, nothing will be released.
        self.overflowed = False
        self._pieces: list[bytes] = []
        self._held = 0  # bytes in _pieces
        self._file: IO[bytes] | None = None
        self._size = 0
        self._opened: Opened | None = None
        self._released = False

    async def __aenter__(self) -> Provisional:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def opened(self) -> Opened:
        """The report of the verified blob; Unverified before."""
        if self._opened is None:
            raise Unverified("the blob has not verified")
        if self.overflowed:
            raise RuntimeError("the plaintext outgrew a holder that may not spill")
        return self._opened

    @property
    def spilled(self) -> bool:
        return self._file is not None

    async def _add(self, data: bytes) -> None:
        if self._opened is not None:
            raise RuntimeError("plaintext added to a verified holder")
        self._size += len(data)
        if self._hidden is not None:
            await self._hidden.write(data)
            return
        if self.overflowed:
            return
        self._pieces.append(data)
        self._held += len(data)
        if self._memory_max is None:
            return
        if not self._may_spill and self._held > self._memory_max:
            self.overflowed = True
            self._pieces, self._held = [], 0
            return
        if self._file is None and self._held > self._memory_max:
            self._file = await self._io(tempfile.TemporaryFile, dir=self._tmp_dir)
        if self._file is not None and self._held >= _CHUNK:
            await self._spill()

    async def _spill(self) -> None:
        pieces, self._pieces, self._held = self._pieces, [], 0
        if pieces and self._file is not None:
            await self._io(self._file.writelines, pieces)

    async def _io(self, fn: Callable[..., object], *args: object, **kw: object) -> object:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except OSError as exc:
            if is_no_space(exc):
                raise no_space(exc, f"holding plaintext in {self._tmp_dir}") from None
            raise

    def _verified(self, opened: Opened) -> None:
        self._opened = opened

    async def reset(self) -> None:
        """Forget everything held, verified or not: the blob will be opened again."""
        self._pieces, self._held, self._size, self._opened = [], 0, 0, None
        self.overflowed = False
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)
        if self._hidden is not None:
            await self._hidden.reset()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The verified plaintext in chunks, from its start (again at every call)."""
        self.opened  # noqa: B018 - raises Unverified
        if self._hidden is not None:
            raise RuntimeError("a hidden target is released by release(), not read")
        if self._file is None:
            for piece in list(self._pieces):
                yield piece
            return
        await self._spill()
        await self._io(self._file.flush)  # pread reads the file, not Python's buffer
        fd = self._file.fileno()
        offset = 0
        while offset < self._size:
            data = await self._io(os.pread, fd, min(_CHUNK, self._size - offset), offset)
            assert isinstance(data, bytes)
            if not data:
                raise ClientError("held plaintext changed on disk while it was read")
            offset += len(data)
            yield data

    async def whole(self) -> bytes:
        """The verified plaintext as one bytes object (the caller bounds its size)."""
        self.opened  # noqa: B018 - raises Unverified
        if self._file is None and self._hidden is None:
            return b"".join(self._pieces)
        return b"".join([chunk async for chunk in self.chunks()])

    async def release(self, sink: AsyncSink | None = None) -> None:
        """Hand the verified plaintext on: to ``sink`` chunk by chunk, or, for a
        ``Hidden`` target, by committing it (then without ``sink``)."""
        self.opened  # noqa: B018 - raises Unverified
        if self._hidden is not None:
            if sink is not None:
                raise RuntimeError("a hidden target is released by committing it")
            await self._hidden.commit()
            self._released = True
            return
        if sink is None:
            raise RuntimeError("release() needs a sink")
        async for chunk in self.chunks():
            await sink(chunk)
        self._released = True

    async def close(self) -> None:
        self._pieces, self._held = [], 0
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)
        if self._hidden is not None and not self._released:
            hidden, self._hidden = self._hidden, None
            await hidden.abort()


async def open_into(
    secret: bytes | None,
    blob_id: str,
    sealed: AsyncIterable[bytes],
    held: Provisional | None,
) -> Opened:
    """Open the sealed blob read from ``sealed`` into ``held`` (None: verify only, keep
    no plaintext). ``held`` becomes releasable only when the tag verified; on InvalidBlob
    (or any error) it stays unreleasable and the caller closes it."""
    opener = Opener(secret, blob_id, keep=held is not None)
    async for chunk in sealed:
        plain = opener.feed(chunk)
        if plain and held is not None:
            await held._add(plain)
    opened = opener.finish()
    if held is not None:
        if opened.rest:
            await held._add(opened.rest)
        held._verified(opened)
    return opened


async def reread_chunks(
    secret: bytes | None,
    blob_id: str,
    read: Callable[[], AsyncIterable[bytes]],
    *,
    memory_max: int = MEMORY_MAX,
) -> AsyncIterator[bytes]:
    """The verified plaintext of a blob whose sealed bytes can be read again (``read()``:
    the store's copy), never spooled to disk: a reader must work on a full disk.

    Up to ``memory_max`` it is opened once, into memory, and released once verified.
    Larger, a first pass verifies it keeping nothing, and a second decrypts the bytes
    that verified as it releases them; its tag is checked again at the end, so a copy
    that changed between the passes is still refused (InvalidBlob at the end)."""
    async with Provisional(None, memory_max=memory_max, spill=False) as held:
        await open_into(secret, blob_id, read(), held)
        if not held.overflowed:
            async for chunk in held.chunks():
                yield chunk
            return
    opener = Opener(secret, blob_id)
    async for chunk in read():
        plain = opener.feed(chunk)
        if plain:
            yield plain
    rest = opener.finish().rest
    if rest:
        yield rest
