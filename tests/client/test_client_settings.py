"""Client settings survive a round trip through their dict (unknown future keys ignored)
and refuse impossible values."""

from __future__ import annotations

import pytest

from blobsync.client import ClientSettings


def test_settings_round_trip_and_validation() -> None:
    s = ClientSettings(concurrency=5, stream=False, retry_scale=0.5)
    assert ClientSettings.from_dict({**s.to_dict(), "unknown_future_key": 1}) == s
    with pytest.raises(ValueError):
        ClientSettings(concurrency=0)
    with pytest.raises(ValueError):
        ClientSettings(retry_scale=-1)
