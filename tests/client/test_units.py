"""Plain unit tests of the client's pure parts: retry schedule, settings, batching."""

from __future__ import annotations

import pytest

from blobsync.client import ClientSettings, SyncStatus
from blobsync.client.localstore import Row
from blobsync.client.model import priority_rank
from blobsync.client.sync import SyncEngine


def test_retry_schedule_is_10_to_60_seconds_scaled() -> None:
    s = ClientSettings()
    assert [s.retry_delay(n) for n in range(1, 9)] == [10, 20, 30, 40, 50, 60, 60, 60]
    fast = ClientSettings(retry_scale=0.01)
    assert fast.retry_delay(1) == pytest.approx(0.1)
    assert fast.retry_delay(100) == pytest.approx(0.6)


def test_settings_round_trip_and_validation() -> None:
    s = ClientSettings(concurrency=5, stream=False, retry_scale=0.5)
    assert ClientSettings.from_dict({**s.to_dict(), "unknown_future_key": 1}) == s
    with pytest.raises(ValueError):
        ClientSettings(concurrency=0)
    with pytest.raises(ValueError):
        ClientSettings(retry_scale=-1)


def test_priorities_rank_in_order() -> None:
    ranks = [priority_rank(p) for p in ("low", "medium", "high", "urgent")]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4
    with pytest.raises(ValueError):
        priority_rank("asap")


def row(i: int, sealed: int | None, priority: int = 1) -> Row:
    return Row(i, "ns", f"b{i}", SyncStatus.PENDING_UPLOAD, priority, None, sealed, None,
               False, False, 0, 0.0, 0, None, 0.0)


def test_batches_respect_count_and_bytes() -> None:
    engine = SyncEngine(None, None, b"", ClientSettings(stream_max_count=3,  # type: ignore[arg-type]
                                                        stream_max_bytes=1000))
    rows = [row(i, 300) for i in range(7)]
    assert [len(b) for b in engine._batches(rows)] == [3, 3, 1]
    rows = [row(i, 450) for i in range(5)]
    assert [len(b) for b in engine._batches(rows)] == [2, 2, 1]
    # one blob over the byte bound still goes, alone
    assert [len(b) for b in engine._batches([row(0, 5000), row(1, 10)])] == [1, 1]
    # unknown sizes (downloads not seen yet) are bounded by count only
    assert [len(b) for b in engine._batches([row(i, None) for i in range(4)])] == [3, 1]


def test_small_and_large_split_at_the_stream_threshold() -> None:
    engine = SyncEngine(None, None, b"", ClientSettings(stream_threshold=1000))  # type: ignore[arg-type]
    assert engine._small(row(0, 1000 + 753))
    assert not engine._small(row(0, 1000 + 754))
    assert engine._small(row(0, None))


async def test_pool_runs_at_most_concurrency_jobs_in_order() -> None:
    import asyncio

    engine = SyncEngine(None, None, b"", ClientSettings(concurrency=3))  # type: ignore[arg-type]
    running = 0
    peak = 0
    started: list[int] = []

    def job(i: int):  # type: ignore[no-untyped-def]
        async def run() -> None:
            nonlocal running, peak
            started.append(i)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

        return run

    await engine._pool([job(i) for i in range(10)])
    assert peak == 3
    assert started == list(range(10))  # queued order (highest priority first) is kept


@pytest.mark.parametrize("value", [None, "", "bytes", "items 0-9/10", "bytes x-9/10",
                                   "bytes 0-9/ten", "octets 0-9/10"])
def test_a_malformed_content_range_is_the_servers_fault(value: str | None) -> None:
    from blobsync.client.errors import ServerError
    from blobsync.client.transport import _content_range

    with pytest.raises(ServerError) as exc:
        _content_range(value, "GET b")
    assert exc.value.status == 502


def test_content_range_parses_start_and_size() -> None:
    from blobsync.client.transport import _content_range

    assert _content_range("bytes 5-9/10", "GET b") == (5, 10)
    assert _content_range("bytes 5-9/*", "GET b") == (5, None)
