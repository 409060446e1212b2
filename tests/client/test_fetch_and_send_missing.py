"""fetch_missing() brings what only the server has and sends nothing; send_missing()
sends what only the device has."""

from __future__ import annotations

from blobsync.client import SyncStatus


async def test_fetch_missing_and_send_missing(devices) -> None:
    a = await devices("a")
    b = await devices("b")
    await a.put("from-a", b"A")
    await b.put("from-b", b"B", upload=False)
    assert await b.fetch_missing() == 1
    assert await b.status("from-b") is SyncStatus.PENDING_UPLOAD  # fetch does not send
    assert await b.get("from-a") == b"A"
    assert await b.send_missing() == 1
    assert await a.fetch_missing() == 1
    assert await a.get("from-b") == b"B"
