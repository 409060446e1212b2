"""A nearly full disk during sync, as a new user met it (issue 10 follow-ups, items 2, 3).

Device B's home is a real small tmpfs, filled to a few MB free with a filler file: the
sync fills it for real. Mounting needs root; elsewhere the test is skipped and says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobsync.cli.failures import EXIT_NO_SPACE
from tests.helpers.cli import Device, assert_one_line_error
from tests.helpers.cli_output import put_ids, read_all
from tests.helpers.tmpfs import small_tmpfs

SMALL = 400
SMALL_SIZE = 20 << 10
LARGE = 2
LARGE_SIZE = 7 << 20
DISK = "48m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small-disk", DISK) as mnt:
        yield mnt


def leave_free(disk: Path, free: int) -> None:
    """Size the filler file so that about ``free`` bytes are left on the disk."""
    filler = disk / "filler"
    have = filler.stat().st_size if filler.exists() else 0
    st = os.statvfs(disk)
    size = max(0, have + st.f_bfree * st.f_frsize - free)
    with open(filler, "ab") as f:
        f.truncate(have if size > have else size)
    if size > have:
        with open(filler, "ab") as f:
            left = size - have
            while left > 0:
                n = min(left, 1 << 20)
                f.write(b"\0" * n)
                left -= n


def synced(device: Device, namespace: str = "default") -> int:
    status = device.json("status", "-n", namespace)
    assert isinstance(status, dict)
    return int(status["statuses"]["SYNCED"])


def test_sync_on_a_nearly_full_disk_keeps_what_fits_and_leaves_no_partial_files(
    ready_a: Device, device_b: Device, small_disk: Path, tmp_path: Path
) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    for i in range(SMALL):
        (small / f"s{i:04d}").write_bytes(os.urandom(SMALL_SIZE))
    for i in range(LARGE):
        (large / f"l{i}").write_bytes(os.urandom(LARGE_SIZE))
    ids = put_ids(ready_a.ok("put", str(small)))
    big_ids = put_ids(ready_a.ok("put", "-n", "big", str(large)))

    b = Device(small_disk / "home", device_b.account)
    proc = b.init("--recover")
    assert proc.returncode == 0, proc.stderr.decode()

    # Many small blobs, 2.5 MB free: the full disk, said as such (never "cannot
    # rollback"), and the blobs that fit are kept.
    leave_free(small_disk, 2_500_000)
    proc = b.run("sync")
    line = assert_one_line_error(proc, EXIT_NO_SPACE)
    assert "no space left on device" in line and "rollback" not in line
    leave_free(small_disk, 1 << 20)  # room to open the store
    first = synced(b)
    assert 0 < first < SMALL, first
    assert b.ok("check").strip() == "no problems found"

    # Large blobs downloaded alone: a full disk leaves no partial download behind.
    leave_free(small_disk, 2_500_000)
    proc = b.run("sync", "-n", "big")
    assert "no space left on device" in assert_one_line_error(proc, EXIT_NO_SPACE)
    assert [p.name for p in (b.home / "tmp").iterdir()] == []

    # A little more room: the next sync makes progress.
    leave_free(small_disk, 4_000_000)
    proc = b.run("sync")
    assert proc.returncode in (0, EXIT_NO_SPACE), proc.stderr.decode()
    leave_free(small_disk, 1 << 20)
    assert synced(b) > first

    # Room again: everything arrives, byte for byte.
    (small_disk / "filler").unlink()
    b.ok("sync")
    b.ok("sync", "-n", "big")
    assert b.ok("check").strip() == "no problems found"
    assert synced(b) == SMALL and synced(b, "big") == LARGE
    got = read_all(b.home, list(ids.values()))
    for path, blob_id in ids.items():
        assert got[blob_id] == Path(path).read_bytes(), path
    for path, blob_id in big_ids.items():
        assert b.run("get", "-n", "big", blob_id).stdout == Path(path).read_bytes(), path


def test_get_to_stdout_on_a_full_disk_names_stdout(
    ready_a: Device, device_b: Device, small_disk: Path, tmp_path: Path
) -> None:
    """The write to stdout fails first; closing the store on the same full disk fails
    after it, and must not replace the first error."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))
    ready_a.ok("put", "--id", "big", str(src))
    b = Device(small_disk / "home", device_b.account)
    proc = b.init("--recover")
    assert proc.returncode == 0, proc.stderr.decode()
    b.ok("sync")
    leave_free(small_disk, 1 << 20)
    with open(small_disk / "out", "wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "blobsync", "--home", str(b.home), "get", "big"],
            env=b.env(), stdout=out, stderr=subprocess.PIPE, timeout=120,
            start_new_session=True,
        )
    line = assert_one_line_error(proc, EXIT_NO_SPACE)
    assert "(stdout)" in line, line


def test_readers_work_on_a_completely_full_disk(
    ready_a: Device, device_b: Device, small_disk: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}").write_bytes(os.urandom(SMALL_SIZE))
    (src / "big").write_bytes(os.urandom(2 << 20))  # a payload file, not inline
    ids = put_ids(ready_a.ok("put", str(src)))
    b = Device(small_disk / "home", device_b.account)
    proc = b.init("--recover")
    assert proc.returncode == 0, proc.stderr.decode()
    b.ok("sync")
    leave_free(small_disk, 1 << 20)
    with open(small_disk / "more", "wb", buffering=0) as f:  # the last blocks too
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    assert os.statvfs(small_disk).f_bfree == 0

    assert synced(b) == 21
    assert sorted(b.ok("ls").split()) == sorted(ids.values())
    assert b.ok("check").strip() == "no problems found"
    # A writer still says why it cannot work, in one line.
    assert "no space left on device" in assert_one_line_error(b.run("sync"), EXIT_NO_SPACE)
    # Room again: the store is as it was.
    (small_disk / "filler").unlink()
    (small_disk / "more").unlink()
    b.ok("sync")
    assert b.ok("check").strip() == "no problems found"
