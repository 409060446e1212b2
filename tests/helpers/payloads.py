"""Reach into a server's default store on disk, as a failing disk or an intruder would.

The default store keeps small payloads as rows of ``DATA/payloads.sqlite3`` and large ones
as files under ``DATA/blobs/`` (``blobsync/server/storage/tiered.py``); these helpers find
and alter a payload in either, behind the server's back (SQLite's locking makes that safe
while the server runs).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from blobsync.server.storage.sqlitepayloads import is_inline


def stored_location(data_dir: str | Path, user: str, namespace: str, blob_id: str) -> str:
    """The location the index of ``data_dir`` names for a blob (which must exist)."""
    with contextlib.closing(sqlite3.connect(Path(data_dir) / "index.sqlite3")) as conn:
        row = conn.execute(
            "SELECT location FROM blobs WHERE user = ? AND namespace = ? AND blob_id = ?",
            (user, namespace, blob_id),
        ).fetchone()
    assert row is not None, f"no blob {blob_id} in {data_dir}"
    return str(row[0])


def damage_payload(
    data_dir: str | Path, location: str, edit: Callable[[bytes], bytes]
) -> None:
    """Replace the payload at ``location`` with ``edit(its bytes)``, whichever tier holds it."""
    if not is_inline(location):
        path = Path(data_dir) / "blobs" / location
        path.write_bytes(edit(path.read_bytes()))
        return
    with contextlib.closing(sqlite3.connect(Path(data_dir) / "payloads.sqlite3")) as conn:
        with conn:  # one transaction, committed
            (data,) = conn.execute(
                "SELECT data FROM payloads WHERE location = ?", (location,)
            ).fetchone()
            conn.execute(
                "UPDATE payloads SET data = ? WHERE location = ?", (edit(bytes(data)), location)
            )


def flip_byte(index: int) -> Callable[[bytes], bytes]:
    """An ``edit`` that flips the low bit of the byte at ``index`` (negative counts back)."""

    def edit(data: bytes) -> bytes:
        damaged = bytearray(data)
        damaged[index] ^= 0x01
        return bytes(damaged)

    return edit
