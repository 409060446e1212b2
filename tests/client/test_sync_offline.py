"""A device that is offline keeps its deletions and new blobs pending and applies them,
and the other devices' deletions, once it is back. A relay (tests/helpers/relay.py) between
the client and the real server drops its requests meanwhile."""

from __future__ import annotations

import pytest

from blobsync.client import ConnectionLost, SyncStatus
from tests.helpers.client import Account, device
from tests.helpers.relay import relay_to


async def test_deletion_on_a_while_b_is_offline(account: Account) -> None:
    a = await account.device("a")
    async with relay_to(account.server.url) as relay:
        b = await device(account, "b", relay.url)
        try:
            for name in ("x", "y", "z"):
                await a.put(name, name.encode() * 100)
            await b.sync()
            assert sorted(await b.local_list()) == ["x", "y", "z"]

            relay.drop = lambda head: True  # b is offline
            await a.delete("x")
            await b.delete("y")  # waits, PENDING_DELETE
            assert await b.status("y") is SyncStatus.PENDING_DELETE
            await b.put("w", b"written offline")  # waits, PENDING_UPLOAD
            assert await b.status("w") is SyncStatus.PENDING_UPLOAD
            assert await b.get("x") == b"x" * 100  # still here while offline
            with pytest.raises(ConnectionLost):
                await b.sync()

            relay.drop = None  # back online
            report = await b.sync()
            assert (report.deleted_local, report.deleted_remote, report.uploaded) == (1, 1, 1)
            assert report.downloaded == 0 and report.failed == [] and report.pending == []
            assert sorted(await b.local_list()) == ["w", "z"]
            assert await b.status("x") is None and await b.status("y") is None
            assert sorted(await b.remote_list()) == ["w", "z"]  # x was not sent back
            again = await b.sync()
            assert (again.downloaded, again.uploaded, again.deleted_local,
                    again.deleted_remote) == (0, 0, 0, 0)
            await a.sync()
            assert sorted(await a.local_list()) == ["w", "z"]
            assert await a.get("w") == b"written offline"
        finally:
            await b.close()
            await a.close()
