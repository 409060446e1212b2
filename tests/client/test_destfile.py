"""The file get(dest=...) writes: unnamed until commit, then atomically at dest."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from blobsync.client import destfile
from blobsync.client.destfile import DestFile


def names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


@pytest.fixture(params=["O_TMPFILE", "hidden name"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "hidden name":  # as on a system without O_TMPFILE
        monkeypatch.setattr(destfile, "_PROC_FD", Path("/nonexistent/proc/fd"))
    return str(request.param)


async def test_commit_replaces_dest_with_what_was_written(tmp_path: Path, mode: str) -> None:
    dest = tmp_path / ("n" * 250 + ".txt")  # a long valid name stays valid
    dest.write_bytes(b"old content")
    f = await_open(dest)
    await f.write(b"x" * (3 << 20))  # several flushes to disk
    during = names(tmp_path)
    if mode == "O_TMPFILE":
        assert during == [dest.name]  # nothing with a name while it is written
    else:
        hidden = [n for n in during if n != dest.name]
        assert len(hidden) == 1 and len(hidden[0]) == len(".blobsync-123456789abc.tmp")
    f.reset()
    await f.write(b"the content")
    f.commit()
    assert dest.read_bytes() == b"the content"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert names(tmp_path) == [dest.name]


async def test_abort_leaves_nothing(tmp_path: Path, mode: str) -> None:
    f = await_open(tmp_path / "never.bin")
    await f.write(b"unverified plaintext" * 100_000)
    f.abort()
    assert names(tmp_path) == []


def test_a_missing_directory_fails_at_open(tmp_path: Path, mode: str) -> None:
    with pytest.raises(FileNotFoundError):
        DestFile(tmp_path / "nope" / "x").open()


def await_open(dest: Path) -> DestFile:
    return DestFile(dest).open()


async def test_large_content_lands_whole_and_in_order(tmp_path: Path, mode: str) -> None:
    """Writes go past the page cache in whole blocks, behind the caller, and the last
    partial block at commit: the file is every piece, in order."""
    dest = tmp_path / "out"
    pieces = [os.urandom(n) for n in (1, 70_000, 1 << 20, 3, 2_000_000, 5 << 20, 4096, 777)]
    f = await_open(dest)
    for p in pieces:
        await f.write(p)
    f.commit()
    assert dest.read_bytes() == b"".join(pieces)
