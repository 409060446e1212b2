"""BlobStore's observer hook, on every backend: each stored, refused, deleted and served
blob is reported once, whether it came through put or a stream batch."""

from __future__ import annotations

import pytest

from blobsync.format import InvalidBlob
from blobsync.format.errors import BlobsyncError
from blobsync.server.storage.base import BlobExists, BlobInfo, QuotaExceeded
from blobsync.server.storage.blobstore import BlobStore
from tests.helpers.storage import NS, Sealed, U, chunked, put, read_all


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_stored(self, info: BlobInfo) -> None:
        self.events.append(("stored", info.blob_id))

    def on_stored_many(self, infos: list[BlobInfo]) -> None:
        self.events += [("stored", info.blob_id) for info in infos]

    def on_refused(self, exc: BlobsyncError) -> None:
        self.events.append(("refused", type(exc).__name__))

    def on_deleted(self, info: BlobInfo) -> None:
        self.events.append(("deleted", info.blob_id))

    def on_served(self, nbytes: int) -> None:
        self.events.append(("served", nbytes))

    def take(self) -> list[tuple[str, object]]:
        events, self.events = self.events, []
        return events


@pytest.fixture
def seen(store: BlobStore) -> Recorder:
    recorder = Recorder()
    store.observer = recorder
    return recorder


async def test_put_delete_and_read_are_reported(
    store: BlobStore, sealed: Sealed, seen: Recorder
) -> None:
    data = sealed("a", 5000)
    await put(store, "a", data)
    assert seen.take() == [("stored", "a")]
    with pytest.raises(BlobExists):
        await put(store, "a", data)
    with pytest.raises(InvalidBlob):
        await put(store, "bad", b"X" * 3000)
    assert seen.take() == [("refused", "BlobExists"), ("refused", "InvalidBlob")]
    assert await read_all(store, "a") == data
    events = seen.take()
    assert {kind for kind, _ in events} == {"served"}
    assert sum(n for _, n in events) == len(data)  # type: ignore[misc]
    await store.delete(U, NS, "a")
    assert seen.take() == [("deleted", "a")]


async def test_batches_report_each_blob(store: BlobStore, sealed: Sealed, seen: Recorder) -> None:
    await put(store, "b1", sealed("b1"))
    seen.take()
    blobs = {f"b{i}": sealed(f"b{i}", 1000) for i in range(4)}
    store.quota = len(sealed("x")) + 2 * len(blobs["b0"]) + 10  # b1 and two more fit
    batch = store.batch(U, NS)
    with pytest.raises(InvalidBlob):
        await batch.receive("junk", chunked(b"J" * 2000), 2000)
    for blob_id, data in blobs.items():
        await batch.receive(blob_id, chunked(data), len(data))
    outcomes = await batch.flush()
    assert [type(o) for _, o in outcomes] == [BlobInfo, BlobExists, BlobInfo, QuotaExceeded]
    assert seen.take() == [
        ("refused", "InvalidBlob"),
        ("stored", "b0"),
        ("refused", "BlobExists"),
        ("stored", "b2"),
        ("refused", "QuotaExceeded"),
    ]


async def test_a_batch_is_reported_in_one_call(store: BlobStore, sealed: Sealed) -> None:
    """A run of stored blobs is one observer call (metrics count it with two increments,
    not two per blob)."""
    calls: list[int] = []

    class Counting(Recorder):
        def on_stored_many(self, infos: list[BlobInfo]) -> None:
            calls.append(len(infos))
            super().on_stored_many(infos)

        def on_stored(self, info: BlobInfo) -> None:
            calls.append(1)
            super().on_stored(info)

    store.observer = Counting()
    batch = store.batch(U, NS)
    for i in range(6):
        data = sealed(f"m{i}", 700)
        await batch.receive(f"m{i}", chunked(data), len(data))
    await batch.flush()
    assert calls == [6]
