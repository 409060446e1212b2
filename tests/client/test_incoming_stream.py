"""Incoming messages through a temporary file: streamed to consumers that take chunks,
handed whole (one copy) to the others up to MAX_INCOMING_SIZE."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from blobsync.client import IncomingStreamConsumer, incoming
from tests.helpers.client import Recorder, deliver


class Hasher:
    """Reads the payload in chunks; never holds it whole."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, int, int]] = {}
        self.saved: dict[str, object] = {}

    async def process_stream(
        self, blob_id: str, chunks: AsyncIterator[bytes], size: int
    ) -> object:
        h = hashlib.sha256()
        n = biggest = 0
        async for chunk in chunks:
            h.update(chunk)
            n += len(chunk)
            biggest = max(biggest, len(chunk))
        assert n == size
        self.seen[blob_id] = (h.hexdigest(), n, biggest)
        return h.hexdigest()

    async def save(self, blob_id: str, result: object) -> None:
        self.saved[blob_id] = result


async def test_streaming_and_whole_consumers_get_the_same_message(devices, account) -> None:
    m = await devices("a")
    big = os.urandom(5 << 20)
    await deliver(account.server, "alice", {"big": big, "empty": b""})
    hasher, rec = Hasher(), Recorder()
    assert isinstance(hasher, IncomingStreamConsumer)
    m.register_consumer(hasher)
    m.register_consumer(rec)
    report = await m.process_incoming()
    assert sorted(report.processed_ids) == ["big", "empty"]
    digest, n, biggest = hasher.seen["big"]
    assert digest == hashlib.sha256(big).hexdigest() and n == len(big)
    assert biggest <= 1 << 20  # in chunks
    assert hasher.seen["empty"][1] == 0
    assert dict(rec.processed) == {"big": big, "empty": b""}
    assert hasher.saved["big"] == digest
    assert list((m.profile.home / "tmp").iterdir()) == []  # the temporary file is gone


async def test_too_large_to_hold_fails_unless_every_consumer_streams(
    devices, account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(incoming, "MAX_INCOMING_SIZE", 100_000)
    m = await devices("a")
    await deliver(account.server, "alice",
                  {"large": os.urandom(300_000), "small": os.urandom(1000)})
    rec = Recorder()
    m.register_consumer(rec)
    report = await m.process_incoming()
    assert report.failed_ids == ["large"] and report.processed_ids == ["small"]
    assert await m.get_flags("large", namespace="MX") == ["FAILED"]
    # A device whose consumers all stream takes it.
    await m.set_flags("large", ["PENDING"], namespace="MX")
    other = await devices("b")
    hasher = Hasher()
    other.register_consumer(hasher)
    report = await other.process_incoming()
    assert report.processed_ids == ["large"] and hasher.seen["large"][1] == 300_000
