"""get(dest=...) onto what is not a plain new file: devices, FIFOs, symlinks, existing
files, missing directories, and the mode of what it creates.

Devices are our own nodes made with mknod in tmp (copies of /dev/null's and /dev/full's
numbers), never the real ones: a regression must not be able to break the machine.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobsync.client import ClientError
from blobsync.client.destfile import current_umask, resolve
from blobsync.client.errors import NoSpace
from blobsync.format import InvalidBlob
from tests.helpers.client import corrupt_on_server
from tests.helpers.special_files import FifoReader, assert_same_device, char_device

# Big enough to be downloaded alone and cross several 1 MiB write chunks.
BIG = (3 << 20) + 4321


@pytest.fixture
def umask() -> Iterator[None]:
    saved = os.umask(0o022)
    os.umask(saved)
    yield
    os.umask(saved)


async def test_get_onto_a_character_device_writes_through(devices, tmp_path: Path) -> None:
    a = await devices("a")
    b = await devices("b")
    data = os.urandom(BIG)
    await a.put("big", data)
    await a.put("small", b"small")
    null = char_device(tmp_path / "dev" / "null", 1, 3)
    for blob_id in ("big", "small"):
        await b.get(blob_id, dest=null)  # downloaded (big) or inline (small), then written
        assert_same_device(null, 1, 3)
        await b.get(blob_id, dest=null)  # now from the local store
        assert_same_device(null, 1, 3)
    assert os.listdir(null.parent) == ["null"]  # no temporary beside it
    assert await b.get("big") == data  # kept in the store on the way


async def test_a_full_device_is_no_space(devices, tmp_path: Path) -> None:
    a = await devices("a")
    await a.put("x", os.urandom(5000))
    full = char_device(tmp_path / "dev" / "full", 1, 7)
    with pytest.raises(NoSpace, match="no space left on device"):
        await a.get("x", dest=full)
    assert_same_device(full, 1, 7)


async def test_get_into_a_fifo_streams_the_verified_blob(devices, tmp_path: Path) -> None:
    a = await devices("a")
    b = await devices("b")
    data = os.urandom(BIG)
    await a.put("big", data)
    reader = FifoReader(tmp_path / "out" / "pipe", tmp_path / "keep")
    try:
        await b.get("big", dest=reader.path)
    finally:
        got = reader.stop()
    assert got == data
    assert stat.S_ISFIFO(os.lstat(reader.path).st_mode)
    assert os.listdir(reader.path.parent) == ["pipe"]


async def test_a_blob_failing_verification_never_reaches_a_fifo(
    devices, account, tmp_path: Path
) -> None:
    a = await devices("a")
    await a.put("big", os.urandom(BIG))  # the tag fails only at the very end
    await corrupt_on_server(account.server, "big")
    b = await devices("b", stream=False)
    reader = FifoReader(tmp_path / "out" / "pipe", tmp_path / "keep")
    try:
        with pytest.raises(InvalidBlob):
            await b.get("big", dest=reader.path)
    finally:
        got = reader.stop()
    assert got == b""  # opened, and closed without a byte
    assert stat.S_ISFIFO(os.lstat(reader.path).st_mode)


async def test_a_symlink_is_followed_and_stays_a_symlink(devices, tmp_path: Path) -> None:
    a = await devices("a")
    await a.put("x", b"new content")
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "file.txt"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    chain = tmp_path / "chain.txt"
    chain.symlink_to(link)
    await a.get("x", dest=chain)
    assert chain.is_symlink() and link.is_symlink()
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the replaced file's mode
    assert sorted(os.listdir(tmp_path / "real")) == ["file.txt"]


async def test_a_dangling_symlink_is_refused(devices, tmp_path: Path) -> None:
    a = await devices("a")
    await a.put("x", b"content")
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(ClientError, match="dangling symlink"):
        await a.get("x", dest=link)
    assert not (tmp_path / "elsewhere.txt").exists()
    assert link.is_symlink()


async def test_an_existing_file_is_replaced_atomically_keeping_its_mode(
    devices, tmp_path: Path
) -> None:
    a = await devices("a")
    await a.put("x", b"new content")
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"old content, longer than the new one")
    dest.chmod(0o604)
    before = dest.stat().st_ino
    await a.get("x", dest=dest)
    assert dest.read_bytes() == b"new content"
    assert dest.stat().st_ino != before  # a new file renamed over it, not rewritten
    assert stat.S_IMODE(dest.stat().st_mode) == 0o604


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
async def test_a_new_file_follows_the_umask(
    devices, tmp_path: Path, mask: int, mode: int
) -> None:
    os.umask(mask)
    assert current_umask() == mask
    a = await devices("a")
    await a.put("small", b"small")
    await a.put("big", os.urandom(BIG), upload=False)
    for blob_id in ("small", "big"):
        dest = tmp_path / f"{blob_id}.bin"
        await a.get(blob_id, dest=dest)
        assert stat.S_IMODE(dest.stat().st_mode) == mode
    # The profile stays private whatever the umask.
    profile = a.profile
    for d in (profile.home, profile.blobs_dir, profile.tmp_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in (profile.db_path, profile.secret_path, profile.config_path):
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f


async def test_a_missing_directory_is_one_clear_error(devices, tmp_path: Path) -> None:
    a = await devices("a")
    await a.put("x", b"content")
    dest = tmp_path / "no" / "such" / "dir" / "x.txt"
    with pytest.raises(ClientError) as info:
        await a.get("x", dest=dest)
    assert str(info.value) == f"cannot write {dest}: no such directory: {dest.parent}"


def test_resolve_refuses_a_socket(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(OSError) as info:
            resolve(path)
    assert info.value.errno == errno.EINVAL
