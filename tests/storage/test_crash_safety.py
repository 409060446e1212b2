"""A process killed mid-write leaves every blob complete or absent (files + SQLite)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from blobsync.server.storage.factory import make_store

WRITER = Path(__file__).with_name("crash_writer.py")


def temp_files(tmp_root: Path) -> list[Path]:
    return [p for p in tmp_root.rglob("*") if p.is_file()]


async def test_sigkill_mid_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        done: dict[str, str] = {}
        assert child.stdout is not None
        for line in child.stdout:
            word, *rest = line.split()
            if word == "DONE":
                done[rest[0]] = rest[1]
            elif word == "WRITING":
                break
        assert len(done) == 3
        # wait until the large blob really is on disk, half-written
        child_tmp = data_dir / "blobs" / ".tmp" / str(child.pid)
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 4 * (1 << 16) for p in temp_files(child_tmp)):
            assert time.monotonic() < deadline, "the child never wrote the large blob"
            assert child.poll() is None, "the child exited before the kill"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert temp_files(child_tmp)  # the debris a crash leaves, before open()

    store = make_store(str(data_dir), None, None)
    await store.open()
    try:
        assert await store.index.get_blob("alice", "default", "big") is None
        assert not child_tmp.exists()
        assert temp_files(data_dir / "blobs" / ".tmp") == []
        for blob_id, digest in done.items():
            _, chunks = await store.read("alice", "default", blob_id)
            data = b"".join([c async for c in chunks])
            assert hashlib.sha256(data).hexdigest() == digest
        assert sorted(await store.index.list_blobs("alice", "default")) == sorted(done)
        locations = {loc async for loc, _ in store.payloads.locations()}
        assert locations == await store.index.all_locations()
        assert not any("big" in os.path.basename(loc) for loc in locations)
    finally:
        await store.close()
