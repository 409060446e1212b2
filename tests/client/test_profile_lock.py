"""lock.py on its own: counted holds within a process, a real flock across processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from blobsync.client.errors import ProfileBusy
from blobsync.client.lock import INFO_NAME, LOCK_NAME, ProfileLock

# Another process holding the lock file with a bare flock, and no info file: a holder
# whose info was never written (or was lost).
BARE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


async def test_holds_nest_and_share_one_flock_in_a_process(tmp_path: Path) -> None:
    one, two = ProfileLock(tmp_path, wait=0), ProfileLock(tmp_path, wait=0)
    async with one.hold("put"):
        async with two.hold("rm"), one.hold("sync"):  # no waiting on ourselves
            assert one.held and two.held
        assert one.held
    assert not one.held and not two.held
    assert (tmp_path / LOCK_NAME).exists() and (tmp_path / INFO_NAME).exists()


async def test_a_holder_without_info_is_still_refused(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(tmp_path / LOCK_NAME)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        lock = ProfileLock(tmp_path, wait=0.3)
        t0 = time.monotonic()
        with pytest.raises(ProfileBusy, match="in use by another process"):
            async with lock.hold("put"):
                pass
        assert time.monotonic() - t0 >= 0.3
        (tmp_path / INFO_NAME).write_text("{garbled")
        with pytest.raises(ProfileBusy, match="in use by another process"):
            async with lock.hold("put"):
                pass
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    async with ProfileLock(tmp_path, wait=0).hold("put"):  # the kernel let go of it
        pass


# A writer that takes the lock again the moment it lets go, round after round, as a busy
# sync does: flock alone would let it starve a writer in another process.
GREEDY = """
import asyncio, sys, time
from pathlib import Path
from blobsync.client.lock import ProfileLock

async def main():
    lock = ProfileLock(Path(sys.argv[1]), wait=30)
    end = time.monotonic() + float(sys.argv[2])
    first = True
    while time.monotonic() < end:
        async with lock.hold("sync"):
            if first:
                print("held", flush=True)
                first = False
            time.sleep(0.2)  # a round's work, without giving the loop a turn

asyncio.run(main())
"""


async def test_a_waiting_writer_gets_in_between_another_process_rounds(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", GREEDY, str(tmp_path), "8"],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        lock = ProfileLock(tmp_path, wait=3)
        t0 = time.monotonic()
        for _ in range(3):  # every time, not by luck
            async with lock.hold("put"):
                assert proc.poll() is None  # got in while the other still runs its rounds
        assert time.monotonic() - t0 < 3
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
