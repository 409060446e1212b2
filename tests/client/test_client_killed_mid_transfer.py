"""A client process killed with SIGKILL in the middle of put, sync download and
sync upload. After a restart every blob is complete or absent, statuses are sane, and the
next sync finishes with nothing lost or duplicated.

The client runs as a subprocess (tests/client/killed_client_worker.py) talking to the real server
through a relay (tests/helpers/relay.py) that holds the transfer after a chosen number of bytes,
so the kill lands mid-transfer every time, not by luck of timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blobsync.client import BlobManager, SyncStatus
from tests.helpers.client import Account, fast_settings
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.relay import Hold, relay_to

ROOT = Path(__file__).resolve().parents[2]


async def make_home(account: Account, home: Path, url: str, *, recover: bool) -> Path:
    """Create a device profile whose server is ``url`` (the relay), then close it so that
    the worker process can open it."""
    m = await BlobManager.init(
        home, server=url, user=account.user, token=account.token, passphrase=PASSPHRASE,
        recover=recover, settings=fast_settings(),
    )
    await m.close()
    return home


async def start_worker(**job: object) -> asyncio.subprocess.Process:
    job.setdefault("passphrase", PASSPHRASE)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.client.killed_client_worker", json.dumps(job, default=str),
        cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _all(events: tuple[asyncio.Event, ...], until: Callable[[], bool] | None) -> None:
    for e in events:
        await e.wait()
    # The relay has handed the bytes over; wait until the client has acted on them too.
    while until is not None and not until():
        await asyncio.sleep(0.01)


async def kill_when(
    proc: asyncio.subprocess.Process,
    *events: asyncio.Event,
    until: Callable[[], bool] | None = None,
) -> None:
    """SIGKILL the worker once every event is set (and ``until()`` holds); fail if it
    exits or stalls before."""
    reached = asyncio.ensure_future(_all(events, until))
    exited = asyncio.ensure_future(proc.wait())
    done, _ = await asyncio.wait({reached, exited}, timeout=60,
                                 return_when=asyncio.FIRST_COMPLETED)
    if reached not in done:
        reached.cancel()
        if proc.returncode is None:
            proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"worker did not reach the kill point: {out.decode()} {err.decode()[-3000:]}")
    proc.kill()
    await proc.wait()
    exited.cancel()
    assert proc.returncode == -9


async def expect_sigkill(proc: asyncio.subprocess.Process) -> None:
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == -9, (out.decode(), err.decode()[-3000:])


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def plaintext_written(pid: int, out: Path) -> bool:
    """Process ``pid`` has written bytes to a file in ``out``: one with a name, or one it
    holds open without a name (O_TMPFILE, seen through /proc/PID/fd)."""
    if any(p.stat().st_size for p in files_under(out)):
        return True
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
            if target.startswith(f"{out}/") and os.stat(fd).st_size:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


async def test_kill_during_put_upload(account: Account, tmp_path: Path) -> None:
    data = os.urandom(12 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    async with relay_to(account.server.url) as relay:
        home = await make_home(account, tmp_path / "home-a", relay.url, recover=False)
        hold = Hold(b"PUT /blobs/alice/big", after=4 << 20)
        relay.hold_up.append(hold)
        proc = await start_worker(op="put", home=home, blob_id="big", path=src)
        await kill_when(proc, hold.reached)
        hold.release.set()  # the dead client's connection closes: the server sees it cut
        a = await BlobManager.open(home, passphrase=PASSPHRASE)
        try:
            assert await a.status("big") is SyncStatus.PENDING_UPLOAD
            assert "big" not in await a.remote_list()  # the cut upload left nothing there
            assert await a.check() == []
            assert files_under(home / "tmp") == []
            assert await a.get("big") == data  # the local copy is whole
            report = await a.sync()
            assert report.uploaded == 1 and report.failed == [] and report.pending == []
            assert await a.status("big") is SyncStatus.SYNCED
            assert await a.remote_list() == ["big"]
        finally:
            await a.close()
    b = await account.device("b")
    try:
        assert await b.get("big") == data
    finally:
        await b.close()


@pytest.mark.parametrize("die_before", [
    "keep_file",  # sealed into tmp/, not yet moved into blobs/
    "insert",
])
async def test_kill_inside_put_leaves_the_blob_absent_and_no_debris(
    account: Account, tmp_path: Path, die_before: str
) -> None:
    data = os.urandom(3 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    home = await make_home(account, tmp_path / "home-a", account.server.url, recover=False)
    proc = await start_worker(op="put", home=home, blob_id="big", path=src,
                              die_before=die_before)
    await expect_sigkill(proc)
    a = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        assert await a.status("big") is None  # absent, not half there
        assert files_under(home / "tmp") == []
        assert await a.check() == []  # no stray sealed file either
        await a.put("big", data)  # the id is free again
        assert await a.status("big") is SyncStatus.SYNCED
        assert await a.check() == []
    finally:
        await a.close()


async def test_kill_during_sync_download_then_resume(account: Account, tmp_path: Path) -> None:
    a = await account.device("a")
    blobs = {"abig": os.urandom(6 << 20)}  # first in the first stream: fetched alone
    blobs |= {f"m{i}": os.urandom(200_000) for i in range(5)}  # files, via the stream
    blobs |= {f"s{i:02d}": os.urandom(20_000) for i in range(30)}  # in the database
    for blob_id, d in blobs.items():
        await a.put(blob_id, d)
    await a.close()
    async with relay_to(account.server.url) as relay:
        home = await make_home(account, tmp_path / "home-b", relay.url, recover=True)
        # The first stream stops at abig's header; the second one is held mid-way, as is
        # the lone download of abig.
        stream = Hold(b"direction=download", after=1_100_000, skip=1)
        single = Hold(b"GET /blobs/alice/abig", after=2 << 20)
        relay.hold_down += [stream, single]
        proc = await start_worker(op="sync", home=home)
        await kill_when(proc, stream.reached, single.reached, until=lambda: sum(
            p.stat().st_size for p in (home / "tmp").glob("*.part")) >= 1 << 20)
        stream.release.set()
        single.release.set()
        first = len(relay.requests)
        b = await BlobManager.open(home, passphrase=PASSPHRASE)
        try:
            rows = await b.store.rows("default")
            assert {r.blob_id for r in rows} == set(blobs)
            assert {r.status for r in rows} <= {SyncStatus.PENDING_DOWNLOAD, SyncStatus.SYNCED}
            for r in rows:
                if r.status is SyncStatus.SYNCED:  # complete, or not there at all
                    assert await b.get(r.blob_id) == blobs[r.blob_id]
            assert not list((home / "tmp").glob("*.tmp"))
            assert b.store.partial_path("default", "abig").exists()  # kept for Range
            report = await b.sync()
            assert report.failed == [] and report.pending == []
            assert (await b.sync_progress())[SyncStatus.SYNCED] == len(blobs)
            for blob_id, d in blobs.items():
                assert await b.get(blob_id) == d
            assert await b.check() == []
            assert files_under(home / "tmp") == []
            resumed = [r for r in relay.requests[first:] if "/blobs/alice/abig" in r.line]
            assert len(resumed) == 1 and (resumed[0].header("Range") or "").startswith("bytes=")
            assert sorted(await b.remote_list()) == sorted(blobs)  # nothing added
        finally:
            await b.close()


async def test_kill_mid_stream_then_remote_delete_leaves_no_stray_file(
    account: Account, tmp_path: Path
) -> None:
    a = await account.device("a")
    for i in range(5):
        await a.put(f"m{i}", os.urandom(200_000))
    for i in range(10):
        await a.put(f"s{i}", os.urandom(20_000))
    async with relay_to(account.server.url) as relay:
        home = await make_home(account, tmp_path / "home-b", relay.url, recover=True)
        stream = Hold(b"direction=download", after=1_100_000)
        relay.hold_down.append(stream)
        proc = await start_worker(op="sync", home=home)
        await kill_when(proc, stream.reached, until=lambda: bool(files_under(home / "blobs")))
        stream.release.set()
        for i in range(5):
            await a.delete(f"m{i}")
        await a.close()
        b = await BlobManager.open(home, passphrase=PASSPHRASE)
        try:
            report = await b.sync()
            assert report.failed == [] and sorted(await b.local_list()) == [
                f"s{i}" for i in range(10)]
            assert files_under(home / "blobs") == []
            assert await b.check() == []
        finally:
            await b.close()


async def test_kill_during_sync_upload_then_finish(account: Account, tmp_path: Path) -> None:
    async with relay_to(account.server.url) as relay:
        home = await make_home(account, tmp_path / "home-b", relay.url, recover=False)
        blobs = {f"s{i:02d}": os.urandom(20_000) for i in range(30)}
        blobs |= {"L0": os.urandom(3 << 20), "L1": os.urandom(3 << 20)}
        b = await BlobManager.open(home, passphrase=PASSPHRASE)
        for blob_id, d in blobs.items():
            await b.put(blob_id, d, upload=False)
        await b.close()
        stream = Hold(b"direction=upload", after=300_000)
        single = Hold(b"PUT /blobs/alice/L0", after=1 << 20)
        relay.hold_up += [stream, single]
        proc = await start_worker(op="sync", home=home)
        await kill_when(proc, stream.reached, single.reached)
        stream.release.set()
        single.release.set()
        b = await BlobManager.open(home, passphrase=PASSPHRASE)
        try:
            rows = await b.store.rows("default")
            assert {r.blob_id for r in rows} == set(blobs)
            assert {r.status for r in rows} <= {SyncStatus.PENDING_UPLOAD, SyncStatus.SYNCED}
            assert await b.check() == []
            assert set(await b.remote_list()) <= set(blobs)
            report = await b.sync()
            assert report.failed == [] and report.pending == []
            assert (await b.sync_progress())[SyncStatus.SYNCED] == len(blobs)
            assert sorted(await b.remote_list()) == sorted(blobs)  # all there, once
        finally:
            await b.close()
    c = await account.device("c")
    try:
        report = await c.sync()
        assert report.downloaded == len(blobs) and report.failed == []
        for blob_id, d in blobs.items():
            assert await c.get(blob_id) == d
    finally:
        await c.close()


async def test_kill_during_get_to_file_leaves_no_plaintext(
    account: Account, tmp_path: Path
) -> None:
    marker = b"PLAINTEXT-OF-A-SECRET-DOCUMENT\n"
    data = marker * ((6 << 20) // len(marker))
    a = await account.device("a")
    await a.put("doc", data)
    await a.close()
    out = tmp_path / "out"
    out.mkdir()
    async with relay_to(account.server.url) as relay:
        home = await make_home(account, tmp_path / "home-b", relay.url, recover=True)
        hold = Hold(b"GET /blobs/alice/doc", after=3 << 20)
        relay.hold_down.append(hold)
        proc = await start_worker(op="get_dest", home=home, blob_id="doc", dest=out / "doc.txt")
        await kill_when(proc, hold.reached, until=lambda: plaintext_written(proc.pid, out))
        hold.release.set()
    leftovers = {p.name: p.read_bytes()[:64] for p in files_under(out)}
    assert leftovers == {}, leftovers
