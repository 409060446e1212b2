"""`blobsync sync` with nothing to do (client/quicksync.py): one request, no aiohttp, the
same answer as the full sync; and every case the look cannot settle goes the full way."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from blobsync.client import BlobManager, SyncStatus
from tests.helpers.cli import ROOT, Device, assert_one_line_error

T = TypeVar("T")

ZERO = {"downloaded": 0, "uploaded": 0, "deleted_local": 0, "deleted_remote": 0,
        "failed": [], "pending": [], "retried": 0}


def requests_answered(device: Device) -> dict[str, float]:
    """The server's request counts by route (its /metrics)."""
    url = device.account.server.local_url + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    counts: dict[str, float] = {}
    for m in re.finditer(r'^blobsync_http_requests_total\{[^}]*route="([^"]+)"[^}]*\} (\S+)$',
                         text, re.M):
        counts[m.group(1)] = counts.get(m.group(1), 0) + float(m.group(2))
    return counts


def modules_loaded(device: Device, *args: str) -> str:
    """stderr of the command run with -X importtime: every module it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "blobsync", "--home", str(device.home),
         *args], capture_output=True, env=device.env(), cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stderr.decode()


def put_bytes(device: Device, tmp_path: Path, data: bytes) -> str:
    """``blobsync put`` of a file holding ``data``; the new blob's id."""
    path = tmp_path / f"file-{len(list(tmp_path.iterdir()))}"
    path.write_bytes(data)
    return device.ok("put", str(path)).split("\t")[0].strip()


def test_a_sync_with_nothing_to_do_is_one_request_without_aiohttp(
    ready_a: Device, tmp_path: Path
) -> None:
    put_bytes(ready_a, tmp_path, b"one blob")
    ready_a.ok("sync")  # the first: a full listing, and a cursor
    ready_a.ok("sync")  # its own upload comes back in the feed
    before = requests_answered(ready_a)
    doc = ready_a.json("sync")
    after = requests_answered(ready_a)
    assert {k: doc[k] for k in ZERO} == ZERO and doc["still_failed"] == []
    # The first /metrics read is counted in the second.
    grown = {route: after[route] - before.get(route, 0) for route in after
             if after[route] != before.get(route, 0) and route != "/metrics"}
    assert grown == {"/changes/{uuid}": 1}, grown
    assert "| aiohttp\n" not in modules_loaded(ready_a, "sync")


def test_a_change_on_the_server_takes_the_full_way(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    ready_b.ok("sync")
    ready_b.ok("sync")
    blob_id = put_bytes(ready_a, tmp_path, b"for b")
    doc = ready_b.json("sync")
    assert doc["downloaded"] == 1
    assert ready_b.run("get", blob_id).stdout == b"for b"
    assert "| aiohttp\n" not in modules_loaded(ready_b, "sync")  # and quiet again after


def _with_manager(device: Device, work: Callable[[BlobManager], Awaitable[T]]) -> T:
    """Run ``work`` on the device's profile opened as a library (between CLI commands)."""

    async def go() -> T:
        manager = await BlobManager.open(device.home, passphrase=device.passphrase)
        try:
            return await work(manager)
        finally:
            await manager.close()

    return asyncio.run(go())


def test_a_local_put_waiting_takes_the_full_way(ready_a: Device) -> None:
    ready_a.ok("sync")
    ready_a.ok("sync")
    blob_id = _with_manager(ready_a, lambda m: m.put(None, b"waits", upload=False))
    doc = ready_a.json("sync")
    assert doc["uploaded"] == 1
    assert _with_manager(ready_a, lambda m: m.status(blob_id)) is SyncStatus.SYNCED


def test_blobs_given_up_on_are_reported_as_by_the_full_sync(ready_a: Device) -> None:
    ready_a.ok("sync")
    ready_a.ok("sync")

    async def give_up(m: BlobManager) -> str:
        blob_id = await m.put(None, b"refused for good", upload=False)
        await m.store.set_many("default", [blob_id], [SyncStatus.PENDING_UPLOAD],
                               status=SyncStatus.FAILED_UPLOAD)
        return blob_id

    blob_id = _with_manager(ready_a, give_up)
    quick = ready_a.run("--json", "sync")
    full = ready_a.run("--json", "sync", "--full")
    assert quick.returncode == full.returncode != 0
    assert json.loads(quick.stdout) == json.loads(full.stdout)
    assert json.loads(quick.stdout)["still_failed"] == [blob_id]
    assert quick.stderr == full.stderr


def test_a_wrong_passphrase_is_the_usual_one_line_error(ready_a: Device) -> None:
    ready_a.ok("sync")
    proc = ready_a.run("sync", passphrase="not the passphrase")
    message = assert_one_line_error(proc, 3)
    assert "passphrase" in message


def test_an_uninitialized_home_asks_for_no_passphrase(tmp_path: Path, ready_a: Device) -> None:
    env = {k: v for k, v in ready_a.env().items() if k != "BLOBSYNC_PASSPHRASE"}
    proc = subprocess.run(
        [sys.executable, "-m", "blobsync", "--home", str(tmp_path / "nowhere"), "sync"],
        capture_output=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert proc.returncode != 0
    assert b"passphrase" not in proc.stderr
    assert b"init" in proc.stderr
