"""What only FilePayloads promises: Soledad's layout, exclusive links, temp dir cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from blobsync.server.storage.files import FilePayloads


async def write(store: FilePayloads, blob_id: str, data: bytes, user: str = "alice") -> str:
    w = await store.writer(user, "default", blob_id)
    await w.write(data)
    return await w.commit()


async def read(store: FilePayloads, location: str, offset: int = 0, length: int | None = None
               ) -> bytes:
    return b"".join([c async for c in store.read(location, offset, length)])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
async def files(tmp_path: Path) -> FilePayloads:
    store = FilePayloads(tmp_path / "blobs")
    await store.open()
    return store


async def test_soledad_layout(files: FilePayloads) -> None:
    loc = await write(files, "abcdefgh", b"payload")
    assert loc == "alice/default/a/abc/abcdef/abcdefgh"
    assert (Path(files.root) / loc).read_bytes() == b"payload"
    short = await write(files, "ab", b"s")
    assert short == "alice/default/a/ab/ab/ab"
    assert {loc async for loc, _ in files.locations()} == {loc, short}


async def test_taken_name_gets_a_suffix_and_is_left_alone(files: FilePayloads) -> None:
    first = await write(files, "abcdefgh", b"first")
    second = await write(files, "abcdefgh", b"second")
    assert second.startswith(first + "~") and len(second) > len(first) + 1
    assert await read(files, first) == b"first"
    assert await read(files, second) == b"second"
    await files.delete(second)
    assert await read(files, first) == b"first"


async def test_short_temp_file_is_not_committed(files: FilePayloads) -> None:
    w = await files.writer("alice", "default", "abcdefgh")
    await w.write(os.urandom(200_000))  # over CHUNK_SIZE: reaches the temp file now
    os.truncate(w._tmp, 1000)  # type: ignore[attr-defined]  # a disk that lost bytes
    with pytest.raises(OSError):
        await w.commit()
    await w.abort()
    assert [loc async for loc, _ in files.locations()] == []
    assert os.listdir(os.path.join(files.tmp_root, str(os.getpid()))) == []


async def test_open_removes_temp_files_of_dead_processes(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    dead = root / ".tmp" / str(dead_pid())
    live = root / ".tmp" / str(os.getppid())  # our parent, alive while we run
    mine = root / ".tmp" / str(os.getpid())
    for d in (dead, live, mine):
        d.mkdir(parents=True)
        (d / "leftover").write_bytes(b"half a blob")
    (root / ".tmp" / "junk").mkdir()

    first = FilePayloads(root)
    await first.open()
    assert not dead.exists()
    assert not (root / ".tmp" / "junk").exists()
    assert (live / "leftover").exists()  # may be a live writer of another process
    assert not (mine / "leftover").exists()  # a previous process that had our pid

    # a second open in this process must spare a writer that is still running
    w = await first.writer("alice", "default", "abcdefgh")
    await w.write(b"x" * 10)
    second = FilePayloads(root)
    await second.open()
    loc = await w.commit()
    assert await read(second, loc) == b"x" * 10
    assert os.listdir(mine) == []


async def test_ranges_and_missing(files: FilePayloads) -> None:
    data = os.urandom(150_000)
    loc = await write(files, "r", data)
    assert await read(files, loc, 70_000, 70_000) == data[70_000:140_000]
    assert await read(files, loc, 149_990) == data[149_990:]
    with pytest.raises(ValueError):
        await read(files, "../../etc/passwd")
    with pytest.raises(ValueError):
        await read(files, ".tmp/1/2/3/4/5")
    await files.delete(loc)
    await files.delete(loc)  # gone already: no error
