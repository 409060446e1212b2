"""Plain unit tests of the client's pure parts: retry schedule, settings, Content-Range.
Batching and the other decisions of a sync round are in test_sync_plan.py."""

from __future__ import annotations

import pytest

from blobsync.client import ClientSettings
from blobsync.client.model import priority_rank


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
