"""The local store on a real disk that fills up (issue 10 item 2), without reopening it:
a row may say SYNCED only once its payload is committed, whatever the open-time sweep
would repair later. Mounting the small tmpfs needs root; elsewhere this is skipped."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blobsync.client import SyncStatus
from blobsync.client.errors import NoSpace
from blobsync.client.localstore import Attach, LocalStore
from tests.helpers.tmpfs import small_tmpfs

BLOBS = 40
PAYLOAD = 50 << 10  # 2 MB in all, on a disk with well under that left


@pytest.fixture
async def store_on_small_disk(tmp_path: Path) -> AsyncIterator[tuple[LocalStore, Path]]:
    with small_tmpfs(tmp_path / "small-disk", "4m") as mnt:
        store = LocalStore(mnt / "local.db", mnt / "blobs", mnt / "tmp",
                           db_key=secrets.token_bytes(32), names_key=secrets.token_bytes(32),
                           inline_max=1 << 20)
        await store.open()
        try:
            yield store, mnt
        finally:
            await store.close()


def fill(mnt: Path, leave: int) -> None:
    """A filler file that leaves about ``leave`` bytes free on the disk."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


async def test_a_full_disk_never_leaves_a_row_synced_without_its_payload(
    store_on_small_disk: tuple[LocalStore, Path],
) -> None:
    store, mnt = store_on_small_disk
    ids = [f"b{i:03d}" for i in range(BLOBS)]
    await store.add_pending_downloads("default", ids)
    fill(mnt, 256 << 10)  # room for the state database's few pages, not the payloads
    items = [Attach(b, PAYLOAD, PAYLOAD, False, payload=os.urandom(PAYLOAD)) for b in ids]
    with pytest.raises(NoSpace, match="no space left on device"):
        await store.attach_many("default", items)
    # The same store, not reopened: no sweep has repaired anything.
    rows = await store.rows("default")
    synced = [r for r in rows if r.status is SyncStatus.SYNCED]
    for r in synced:
        assert len(await store.read_inline(r.id)) == PAYLOAD, r.blob_id
    assert {r.status for r in rows} <= {SyncStatus.SYNCED, SyncStatus.PENDING_DOWNLOAD}
    # Room again: the same batch goes in whole.
    (mnt / "filler").unlink()
    assert all(await store.attach_many("default", items))
    for r in await store.rows("default"):
        assert r.status is SyncStatus.SYNCED and len(await store.read_inline(r.id)) == PAYLOAD
