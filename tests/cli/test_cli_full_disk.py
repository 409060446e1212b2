"""A full disk during sync, and `check --repair` (issue 10 item 2).

The profile home of one device is a real, small tmpfs: the sync fills it for real
(SQLite's "database or disk is full", ENOSPC on files), not a simulated error. Mounting
needs root; elsewhere the test is skipped and says why.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobsync.cli.failures import EXIT_NO_SPACE, EXIT_VERIFY
from tests.helpers.cli import Device, assert_one_line_error
from tests.helpers.cli_output import put_ids, read_all
from tests.helpers.tmpfs import small_tmpfs

SMALL = 400  # blobs of SMALL_SIZE: sealed, they go inline and travel in streams
SMALL_SIZE = 80 << 10
LARGE_SIZE = 6 << 20  # a payload file, downloaded alone
DISK = "40m"
RESERVE = 2 << 20  # a filler file, deleted after the failure so that check can open


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small-disk", DISK) as mnt:
        yield mnt


def test_full_disk_during_sync_leaves_no_blob_synced_without_its_bytes(
    ready_a: Device, device_b: Device, small_disk: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(SMALL):
        (src / f"s{i:04d}").write_bytes(os.urandom(SMALL_SIZE))
    (src / "large").write_bytes(os.urandom(LARGE_SIZE))
    ids = put_ids(ready_a.ok("put", str(src)))
    assert len(ids) == SMALL + 1

    # Device B lives on the small disk; more than it can hold is waiting on the server.
    b = Device(small_disk / "home", device_b.account)
    proc = b.init("--recover")
    assert proc.returncode == 0, proc.stderr.decode()
    reserve = small_disk / "reserve"
    reserve.write_bytes(b"\0" * RESERVE)

    proc = b.run("sync")
    line = assert_one_line_error(proc, EXIT_NO_SPACE)
    assert "no space left on device" in line

    # A little room, enough to open the store: nothing may be SYNCED without its bytes.
    reserve.unlink()
    assert b.ok("check").strip() == "no problems found"
    status = b.json("status")
    assert isinstance(status, dict)
    kept = status["statuses"]["SYNCED"]
    assert 0 < kept < SMALL + 1, status  # the disk filled midway
    assert kept + status["statuses"]["PENDING_DOWNLOAD"] == SMALL + 1

    # Room again: the next sync brings the rest, every blob byte for byte.
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    b.ok("sync")
    assert b.ok("check").strip() == "no problems found"
    got = read_all(b.home, list(ids.values()))
    for path, blob_id in ids.items():
        assert got[blob_id] == Path(path).read_bytes(), path


def _damage_inline(home: Path) -> None:
    """Damage every inline payload (the payload database is plain SQLite: its rows are
    sealed already) and remove the first one, as a bad disk might."""
    with sqlite3.connect(home / "payloads.db") as db:
        rows = db.execute("SELECT id, data FROM payloads ORDER BY id").fetchall()
        for row_id, data in rows:
            db.execute("UPDATE payloads SET data = ? WHERE id = ?",
                       (bytes(data[:-1]) + bytes([data[-1] ^ 1]), row_id))
        db.execute("DELETE FROM payloads WHERE id = ?", (rows[0][0],))
    db.close()


def test_check_repair_puts_damaged_blobs_back_to_be_downloaded(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    files = {}
    for name, size in (("gone.txt", 100), ("bad.txt", 200), ("big.bin", (1 << 20) + 4096)):
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(size))
    ids = put_ids(ready_a.ok("put", *(str(p) for p in files.values())))
    ready_b.ok("sync")
    assert ready_b.ok("check").strip() == "no problems found"

    _damage_inline(ready_b.home)
    (big,) = [p for p in (ready_b.home / "blobs").rglob("*") if p.is_file()]
    big.unlink()

    proc = ready_b.run("check")
    line = assert_one_line_error(proc, EXIT_VERIFY)
    assert "3 problem" in line
    assert len(proc.stdout.decode().splitlines()) == 3

    report = ready_b.ok("check", "--repair")
    lines = report.splitlines()
    assert len([x for x in lines if "repaired" in x]) == 4  # 3 blobs, and the summary
    for blob_id in ids.values():
        assert blob_id in report
    assert ready_b.ok("check").strip() == "no problems found"  # waiting to be fetched

    assert "downloaded 3," in ready_b.ok("sync")
    assert ready_b.ok("check").strip() == "no problems found"
    for path, blob_id in ids.items():
        assert ready_b.run("get", blob_id).stdout == Path(path).read_bytes()


def test_check_repair_reports_a_blob_never_uploaded_as_lost(
    ready_a: Device, tmp_path: Path
) -> None:
    src = tmp_path / "only-here.txt"
    src.write_bytes(b"this device holds the only copy")
    (blob_id,) = put_ids(ready_a.ok("put", "--local-only", str(src))).values()
    _damage_inline(ready_a.home)

    proc = ready_a.run("check", "--repair")
    line = assert_one_line_error(proc, EXIT_VERIFY)
    assert "1 problem" in line
    out = proc.stdout.decode()
    assert blob_id in out and "lost: it was never uploaded" in out
