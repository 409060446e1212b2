"""bench/idle_watchers.py runs and measures what it says (a small run: the 1,000-stream,
30 s figure belongs to the benchmark, not the suite)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_idle_watchers_measure_small_run() -> None:
    spec = importlib.util.spec_from_file_location(
        "idle_watchers", ROOT / "bench" / "idle_watchers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["idle_watchers"] = module
    spec.loader.exec_module(module)
    result = module.measure(count=40, seconds=2.0, heartbeat=0.5)
    assert result["count"] == 40 and result["streams_open_at_end"] == 40
    # Every stream got its heartbeats in the window (about 4 each at 0.5 s).
    assert result["heartbeats_received"] >= 40 * 2
    assert result["heartbeat_seconds"] == 0.5
    assert result["rss_mb_with"] >= result["rss_mb_before"] > 0
    assert 0 <= result["cpu_percent_of_one_core"] < 100
    assert set(result) >= {"cpu_percent_of_one_core", "rss_mb_before", "rss_mb_with",
                           "kb_per_waiter", "heartbeat_seconds"}
