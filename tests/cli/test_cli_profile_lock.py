"""One writer per profile at a time, across processes (issue 10, item 5): real CLI
processes on one home, a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blobsync.client import BlobManager, SyncStatus
from blobsync.client.lock import INFO_NAME
from tests.helpers.cli import ROOT, TIMEOUT, Device, assert_one_line_error
from tests.helpers.cli_output import put_ids, write_big

# A process that holds the profile's lock, as a writer in the middle of a round does.
HOLDER = """
import asyncio, sys
from pathlib import Path
from blobsync.client.lock import ProfileLock, describe_process
describe_process("blobsync sync")
async def main() -> None:
    async with ProfileLock(Path(sys.argv[1])).hold("round"):
        print("held", flush=True)
        await asyncio.sleep(600)
asyncio.run(main())
"""


def start(device: Device, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "blobsync", "--home", str(device.home), *args],
        env=env or device.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out.decode(), err.decode()


@contextmanager
def holder(device: Device) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(device.home)], env=device.env(),
        stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"held\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


def with_env(device: Device, **extra: str) -> Device:
    return Device(device.home, device.account, extra_env={**device.extra_env, **extra})


def timed(device: Device, *args: str) -> tuple[subprocess.CompletedProcess[bytes], float]:
    t0 = time.monotonic()
    proc = device.run(*args)
    return proc, time.monotonic() - t0


def test_a_second_writer_waits_then_names_the_holder_readers_never_wait(
    ready_a: Device, tmp_path: Path
) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"stored before the lock was taken")
    (blob_id,) = put_ids(ready_a.ok("put", str(src))).values()
    ready_a.ok("sync")  # the device's cursor: from here on a sync has nothing to do
    # Readers would wait this long if they waited at all; writers give up after 1 s.
    readers = with_env(ready_a, BLOBSYNC_LOCK_WAIT="60")
    writers = with_env(ready_a, BLOBSYNC_LOCK_WAIT="1")
    with holder(ready_a) as held:
        # A sync with nothing to do only reads (client/quicksync.py): it does not wait.
        for args in (("ls",), ("status",), ("get", blob_id), ("ls", "--remote"), ("sync",)):
            proc, took = timed(readers, *args)
            assert proc.returncode == 0, (args, proc.stderr.decode())
            assert took < 30, (args, took)
        assert readers.run("get", blob_id).stdout == src.read_bytes()

        other = tmp_path / "b.txt"
        other.write_bytes(b"put while another process holds the profile")
        for args in (("put", str(other)), ("rm", blob_id), ("sync", "--full")):
            proc, took = timed(writers, *args)
            line = assert_one_line_error(proc, 9)
            assert took >= 1, (args, took)
            assert f"pid {held.pid} on {socket.gethostname()} (blobsync sync)" in line
            assert "since " in line and "UTC" in line
        assert ready_a.ok("ls").split() == [blob_id]  # nothing changed meanwhile

        # Killed: the kernel drops its lock, and the next writer takes the profile over.
        held.send_signal(signal.SIGKILL)
        held.wait(TIMEOUT)
        proc, _ = timed(writers, "put", str(other))
        assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads((ready_a.home / INFO_NAME).read_text())
    assert info["command"] == "blobsync put" and info["pid"] != held.pid
    assert str(other) not in (ready_a.home / INFO_NAME).read_text()  # paths stay secret


def test_two_syncs_on_one_home_at_once(ready_a: Device, ready_b: Device, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:03d}").write_bytes(os.urandom(3000))
    write_big(src / "big1", 24 << 20)
    write_big(src / "big2", 24 << 20)
    ids = put_ids(ready_a.ok("put", str(src)))

    # Started together, both download the same blobs: the second waits for the first's
    # rounds (or, if it cannot get in within the wait, says who holds the profile).
    procs = [start(ready_b, "sync"), start(ready_b, "sync")]
    results = [finish(p) for p in procs]
    for (code, _, err), proc in zip(results, procs, strict=True):
        other = procs[1 - procs.index(proc)].pid
        assert code == 0 or (code == 9 and f"pid {other} " in err), (code, err)
        assert "Traceback" not in err and "No such file" not in err
    assert any(code == 0 for code, _, _ in results)
    ready_b.ok("sync")
    assert set(ready_b.ok("ls").split()) == set(ids.values())
    ready_b.ok("check")
    for path in (src / "big1", src / "f007"):
        assert ready_b.run("get", ids[str(path)]).stdout == path.read_bytes()


def test_two_syncs_that_wait_both_succeed(ready_a: Device, ready_b: Device,
                                          tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_big(src / "big", 24 << 20)
    ids = put_ids(ready_a.ok("put", str(src)))
    waiting = with_env(ready_b, BLOBSYNC_LOCK_WAIT="120")
    procs = [start(waiting, "sync", env=waiting.env()) for _ in range(2)]
    for code, _, err in map(finish, procs):
        assert code == 0, err
    assert ready_b.run("get", ids[str(src / "big")]).stdout == (src / "big").read_bytes()


async def pending_with_a_retry_in(home: Path, blob_id: str, seconds: float) -> None:
    """A blob whose upload failed: pending, its next attempt ``seconds`` away, as the
    sync engine leaves it (through the store's own retry scheduling)."""
    m = await BlobManager.open(home, passphrase=Device.passphrase)
    try:
        await m.put(blob_id, b"its upload failed once", upload=False)
        await m.store.schedule_retry("default", [blob_id], SyncStatus.PENDING_UPLOAD,
                                     delay=lambda _: seconds)
    finally:
        await m.close()


def test_a_put_gets_in_while_a_sync_waits_for_a_retry(ready_a: Device, tmp_path: Path) -> None:
    asyncio.run(pending_with_a_retry_in(ready_a.home, "retried", 12))
    sync = start(ready_a, "sync")
    try:
        # The sync has taken the profile (to reconcile) and now sleeps until its retry.
        deadline = time.monotonic() + 60
        while True:
            info = ready_a.home / INFO_NAME
            if info.exists() and json.loads(info.read_text() or "{}").get("pid") == sync.pid:
                break
            assert time.monotonic() < deadline and sync.poll() is None
            time.sleep(0.05)
        src = tmp_path / "b.txt"
        src.write_bytes(b"from another shell")
        # Another namespace: this put's own upload pass does not wait for that retry.
        proc, took = timed(with_env(ready_a, BLOBSYNC_LOCK_WAIT="2"),
                           "put", "-n", "other", str(src))
        assert proc.returncode == 0, proc.stderr.decode()
        assert sync.poll() is None, "the sync was over before the put: nothing was shown"
    finally:
        code, out, err = finish(sync)
    assert code == 0, err
    assert "uploaded 1," in out
    assert set(ready_a.ok("ls", "--remote").split()) >= {"retried"}


def test_rm_while_another_process_uploads_the_blob(ready_a: Device, ready_b: Device,
                                                  tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    write_big(big, 200 << 20)
    waiting = with_env(ready_a, BLOBSYNC_LOCK_WAIT="120")
    put = start(waiting, "put", "--id", "doomed", str(big), env=waiting.env())
    assert put.stdout is not None
    # Stored here: the upload starts now. The rm comes while it is on its way.
    assert put.stdout.readline() == f"doomed\t{big}\n".encode()
    rm = waiting.run("rm", "doomed")
    code, _, err = finish(put)
    assert code == 0, err
    assert rm.returncode == 0, rm.stderr.decode()
    # The blob is gone everywhere, and stays gone: no upload landed after the DELETE.
    assert "doomed" not in ready_a.ok("ls", "--remote").split()
    assert "doomed" not in ready_a.ok("ls").split()
    ready_a.ok("sync")
    ready_b.ok("sync")
    assert "doomed" not in ready_a.ok("ls", "--remote").split()
    assert "doomed" not in ready_b.ok("ls").split()
