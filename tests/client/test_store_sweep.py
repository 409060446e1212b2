"""Debris of a process that died with the store open is swept by the next process that
opens it alone, and only then; files that are not the store's are never touched."""

from __future__ import annotations

import os
from pathlib import Path

from blobsync.client import BlobManager
from tests.helpers.passphrase import PASSPHRASE


def debris(home: Path) -> list[Path]:
    """What a killed process may leave: a sealed file no row points to, a file being
    sealed, and the partial download of a blob that is no longer wanted."""
    stray = home / "blobs" / "ab" / ("ab" + "0" * 38)
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"sealed bytes of a blob whose row never committed")
    tmp = home / "tmp" / ("1" * 32 + ".tmp")
    tmp.write_bytes(b"half sealed")
    part = home / "tmp" / ("2" * 40 + ".part")
    part.write_bytes(b"partial download")
    return [stray, tmp, part]


def users_files(home: Path) -> list[Path]:
    mine = [home / "blobs" / "holiday.jpg", home / "tmp" / "notes.txt",
            home / "blobs" / "cd" / "not-a-blob-name"]
    for p in mine:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"the user's")
    return mine


async def test_sweep_after_a_crash_only_when_alone(devices) -> None:
    a = await devices("a")
    await a.put("big", os.urandom(200_000))  # a file blob, which must stay
    await a.put("small", b"inline")
    home = a.profile.home
    left = debris(home)
    kept = users_files(home)
    # Sessions opened and never closed: what processes killed with the store open leave.
    await a.store._run(a.store._set_sessions, 3)
    other = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        # Not alone (a holds the store open): sweeping could hit a's files in flight.
        assert all(p.exists() for p in left + kept)
    finally:
        await other.close()
    await a.close()
    alone = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        assert not [p for p in left if p.exists()]
        assert all(p.read_bytes() == b"the user's" for p in kept)
        assert len(await alone.get("big")) == 200_000
        assert await alone.get("small") == b"inline"
    finally:
        await alone.close()


async def test_no_sweep_after_clean_closes(devices) -> None:
    a = await devices("a")
    home = a.profile.home
    await a.close()
    left = debris(home)
    again = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        # Nothing died: these were not left by a crash, and scanning costs time.
        assert all(p.exists() for p in left)
        assert any("stray file" in p for p in await again.check())
    finally:
        await again.close()
