"""LocalFileWriter: pieces land in order, and large files start flushing to disk early."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blobsync.client.localstore import LocalFileWriter, files


async def test_pieces_land_in_order(tmp_path: Path) -> None:
    pieces = [os.urandom(n) for n in (0, 1, 70_000, 1 << 20, 3, 2_000_000)]
    w = await LocalFileWriter(tmp_path / "f").open()
    for p in pieces:
        await w.write(p)
    await w.close()
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
    assert w.written == sum(map(len, pieces))


async def test_append_continues_a_partial(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    w = await LocalFileWriter(tmp_path / "f", append=True).open()
    assert w.written == 3
    await w.write(bytearray(b"def"))  # not bytes: copied, so later changes do not leak in
    await w.close()
    assert (tmp_path / "f").read_bytes() == b"abcdef"


async def test_background_flushes_start_and_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "SYNC_EVERY", 1 << 20)
    data = os.urandom(6 << 20)
    w = await LocalFileWriter(tmp_path / "f").open()
    started = 0
    for i in range(0, len(data), 100_000):
        await w.write(data[i : i + 100_000])
        if w._sync is not None:
            started += 1
    assert started, "no background flush was started"
    await w.close()
    assert w._sync is None  # awaited before the file was closed
    assert (tmp_path / "f").read_bytes() == data


async def test_a_failed_background_flush_fails_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails a flush: the file is not what it should be, so close() says so
    (and the fd is closed all the same)."""
    monkeypatch.setattr(files, "SYNC_EVERY", 1 << 20)

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    w = await LocalFileWriter(tmp_path / "f").open()
    f = w._f
    with pytest.raises(OSError, match="Input/output"):
        for _ in range(4):
            await w.write(os.urandom(1 << 20))
        await w.close()
    await w.close()  # closing again is harmless
    assert f.closed


@pytest.mark.parametrize("before", [b"", b"abc", bytes(range(256)) * 20])
async def test_direct_writes_land_in_order(tmp_path: Path, before: bytes) -> None:
    """O_DIRECT writes whole blocks from an aligned buffer; a file that does not end on a
    block (a partial download resumed) is brought to one first, and the last partial
    block is written normally at close."""
    (tmp_path / "f").write_bytes(before)
    pieces = [os.urandom(n) for n in (0, 1, 70_000, 1 << 20, 3, 2_000_000, 5 << 20, 4096)]
    w = await LocalFileWriter(tmp_path / "f", append=True, direct=True).open()
    for p in pieces:
        await w.write(p)
    await w.close()
    assert (tmp_path / "f").read_bytes() == before + b"".join(pieces)
    assert w.written == len(before) + sum(map(len, pieces))


async def test_direct_refused_writes_normally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without O_DIRECT (EINVAL from fcntl): the same bytes, written normally."""
    import errno
    import fcntl

    real = fcntl.fcntl

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(files.fcntl, "fcntl", no_direct)
    data = os.urandom(3 << 20)
    w = await LocalFileWriter(tmp_path / "f", direct=True).open()
    for i in range(0, len(data), 100_001):
        await w.write(data[i : i + 100_001])
    await w.close()
    assert w._direct is None
    assert (tmp_path / "f").read_bytes() == data


async def test_a_failed_write_fails_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write runs while the caller goes on: its error comes out of a later write or
    close (NoSpace for a full disk), and the file is closed all the same."""
    from blobsync.client.errors import NoSpace

    w = await LocalFileWriter(tmp_path / "f").open()
    f = w._f

    def full(pieces: list[bytes]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(f, "writelines", full)
    with pytest.raises(NoSpace):
        for _ in range(4):
            await w.write(os.urandom(1 << 20))
        await w.close()
    await w.close()
    assert f.closed
