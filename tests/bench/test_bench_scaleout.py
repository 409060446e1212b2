"""The benchmark's issue-13 parts: the ``scaleout`` and ``load_scaleout`` sections run for real
at quick scale (PostgreSQL and ``rclone serve s3`` started by the harness, servers and CLI as
processes), and report.py turns figures into issue 13's targets and README rows, old results
files included."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    """bench/'s modules, imported as bench/run.py imports them (its folder on sys.path)."""
    sys.path.insert(0, str(BENCH))
    try:
        import compare
        import report
        import sections

        yield {"sections": sections, "report": report, "compare": compare}
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture
def this_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers and CLI of the bench from this checkout, whatever the venv has installed."""
    monkeypatch.setenv("BENCH_SERVER_TREE", str(ROOT))
    monkeypatch.setenv("BENCH_CLIENT_TREE", str(ROOT))


def context(bench: dict[str, ModuleType], work: Path, **scale: Any) -> Any:
    s = bench["sections"]
    return s.Context(work, dataclasses.replace(s.QUICK, **scale), None, lambda _text: None)


def test_scaleout_section_quick(bench: dict[str, ModuleType], this_tree: None,
                                tmp_path: Path) -> None:
    ctx = context(bench, tmp_path)
    out = bench["sections"].SECTIONS["scaleout"](ctx)
    n = ctx.scale.small_count
    assert out["count"] == n == 500
    for d in ("up", "down"):
        step = out[d]
        assert step["files_per_s"] == round(n / step["seconds"], 1) > 0
        assert step["client_cpu_s"] > 0 and step["server_cpu_s"] > 0
        assert step["client_peak_rss_mb"] > 0 and step["server_peak_rss_mb"] > 0
        # From the server's counter, read before and after the step.
        ops = step["s3_requests"]
        assert all(isinstance(v, int) and v > 0 for v in ops.values())
        assert step["s3_requests_per_blob"] == round(sum(ops.values()) / n, 4)
    # What reached S3 went up and came back: no fetch without a store before it.
    assert bool(out["up"]["s3_requests"]) or not out["down"]["s3_requests"]
    assert set(out["down"]["s3_requests"]) <= {"GetObject", "HeadObject"}

    # The ratio to the default store needs the small section of the same run.
    report = bench["report"]
    alone = {t.name: t for t in report.targets({"scaleout": out})}
    assert alone["scale-out (PostgreSQL + S3) put: files/s vs default store"].passed is None
    per_blob = alone["scale-out: S3 requests per small blob stored"]
    assert per_blob.value == out["up"]["s3_requests_per_blob"] and per_blob.passed is not None
    small = {"count": n, "size": 10_000, "stream": {"up": {"files_per_s": 1000.0},
                                                   "down": {"files_per_s": 2000.0}}}
    both = {t.name: t for t in report.targets({"small": small, "scaleout": out})}
    assert both["scale-out (PostgreSQL + S3) put: files/s vs default store"].value == round(
        out["up"]["files_per_s"] / 1000.0, 2)
    assert both["scale-out (PostgreSQL + S3) sync: files/s vs default store"].value == round(
        out["down"]["files_per_s"] / 2000.0, 2)
    rows = [r for r in report.figures({"small": small, "scaleout": out})
            if "PostgreSQL + S3 (scale-out)" in r[0]]
    assert [r[1] for r in rows] == [f"{out[d]['files_per_s']:,.0f} files/s"
                                    for d in ("up", "down")]
    assert all("S3 requests per blob" in r[4] and "the default store" in r[4] for r in rows)


def test_load_scaleout_section_quick(bench: dict[str, ModuleType], this_tree: None,
                                     tmp_path: Path) -> None:
    ctx = context(bench, tmp_path, load_seconds=2.0, load_clients=4)
    out = bench["sections"].SECTIONS["load_scaleout"](ctx)
    assert out["workers"] == 2 and "--workers 2" in out["deployment"]
    assert out["clients"] == 4 and out["errors"] == 0, out.get("error_samples")
    assert out["server_5xx"] == 0 and out["server_tracebacks"] == 0
    assert out["blobs_up"] > 0 and out["blobs_per_s"] > 0 and out["p99_ms"] > 0
    assert out["server_cpu_s"] > 0 and out["server_peak_rss_mb"] > 0
    ts = {t.name: t for t in bench["report"].targets({"load_scaleout": out})}
    errors = ts["load (PostgreSQL + S3, --workers 2): errors"]
    assert errors.value == 0 and errors.passed is True
    assert ts["load (PostgreSQL + S3, --workers 2): p99 of a batch"].value == out["p99_ms"]


# Figures that meet every goal of issue 13 exactly at its edge, and the goal strings.
MEETS: dict[str, Any] = {
    "small": {"count": 10_000, "size": 10_000,
              "stream": {"up": {"files_per_s": 4000.0}, "down": {"files_per_s": 8000.0}},
              "nostream": {"up": {"files_per_s": 500.0}, "down": {"files_per_s": 1000.0}}},
    "peer": {"small": {"up": {"files_per_s": 1000.0}, "down": {"files_per_s": 2000.0}},
             "restic": {"up": {"files_per_s": 2000.0}, "down": {"files_per_s": 4000.0}},
             "large": {"up": {"mb_per_s": 200.0}, "down": {"mb_per_s": 400.0}}},
    "scaleout": {"up": {"files_per_s": 2800.0, "s3_requests_per_blob": 0.05},
                 "down": {"files_per_s": 5600.0, "s3_requests_per_blob": 0.05}},
    "large": {"up": {"mb_per_s": 300.0, "client_peak_rss_mb": 99.9,
                     "server_peak_rss_mb": 50.0},
              "down": {"mb_per_s": 600.0, "client_peak_rss_mb": 80.0,
                       "server_peak_rss_mb": 99.9}},
    "load": {"clients": 32, "p99_ms": 149.9, "errors": 0, "server_5xx": 0,
             "server_tracebacks": 0},
    "load_scaleout": {"clients": 32, "p99_ms": 149.9, "errors": 0, "server_5xx": 0,
                      "server_tracebacks": 0},
}
GOALS = {
    "small blobs up: files/s vs rclone": ">= 4x",
    "small blobs down: files/s vs rclone": ">= 4x",
    "small blobs up: files/s vs restic backup": ">= 2x",
    "small blobs down: files/s vs restic restore": ">= 2x",
    "scale-out (PostgreSQL + S3) put: files/s vs default store": ">= 0.7x",
    "scale-out (PostgreSQL + S3) sync: files/s vs default store": ">= 0.7x",
    "scale-out: S3 requests per small blob stored": "<= 0.05",
    "scale-out: S3 requests per small blob fetched": "<= 0.05",
    "large blob up: MB/s vs rclone": ">= 1.5x",
    "large blob down: MB/s vs rclone": ">= 1.5x",
    "large blob: client peak RSS": "< 100 MB",
    "large blob: server peak RSS": "< 100 MB",
    "load (default store): p99 of a batch": "< 150 ms",
    "load (default store): errors": "0",
    "load (PostgreSQL + S3, --workers 2): p99 of a batch": "< 150 ms",
    "load (PostgreSQL + S3, --workers 2): errors": "0",
}
# One step past each edge, and the goal it fails.
MISSES = [
    ("small.stream.up.files_per_s", 3990.0, "small blobs up: files/s vs rclone"),
    ("peer.restic.down.files_per_s", 4100.0, "small blobs down: files/s vs restic restore"),
    ("scaleout.up.files_per_s", 2700.0,
     "scale-out (PostgreSQL + S3) put: files/s vs default store"),
    ("scaleout.down.s3_requests_per_blob", 0.051, "scale-out: S3 requests per small blob fetched"),
    ("large.down.mb_per_s", 590.0, "large blob down: MB/s vs rclone"),
    ("large.up.client_peak_rss_mb", 100.0, "large blob: client peak RSS"),
    ("large.down.server_peak_rss_mb", 100.0, "large blob: server peak RSS"),
    ("load.p99_ms", 150.0, "load (default store): p99 of a batch"),
    ("load_scaleout.p99_ms", 151.0, "load (PostgreSQL + S3, --workers 2): p99 of a batch"),
    ("load_scaleout.server_5xx", 1, "load (PostgreSQL + S3, --workers 2): errors"),
]


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


def test_targets_are_issue_13_goals(bench: dict[str, ModuleType]) -> None:
    report = bench["report"]
    ts = {t.name: t for t in report.targets(MEETS)}
    for name, goal in GOALS.items():
        assert ts[name].goal == goal, name
        assert ts[name].row()["result"] == "PASS", (name, ts[name].value)
    for path, value, name in MISSES:
        doc = json.loads(json.dumps(MEETS))
        _set(doc, path, value)
        failed = [t.name for t in report.targets(doc) if t.row()["result"] == "FAIL"]
        assert failed == [name], path
    # Stretch goals: shown, never a FAIL.
    stretch = [t for t in report.targets(MEETS) if t.stretch]
    assert {t.name: (t.goal, t.row()["result"]) for t in stretch} == {
        "stretch: small blobs put": (">= 10,000 files/s", "not yet"),
        "stretch: small blobs sync": (">= 20,000 files/s", "not yet"),
        "stretch: large blob up": (">= 700 MB/s", "not yet"),
        "stretch: large blob down": (">= 700 MB/s", "not yet"),
    }
    doc = json.loads(json.dumps(MEETS))
    _set(doc, "large.up.mb_per_s", 700.0)
    assert {t.name: t.row()["result"] for t in report.targets(doc)}[
        "stretch: large blob up"] == "met"


def test_compare_knows_which_way_is_better(bench: dict[str, ModuleType]) -> None:
    """More S3 requests per blob, or a longer p99, is worse (a ratio falling is too)."""
    before = {"results": MEETS}
    doc = json.loads(json.dumps(MEETS))
    _set(doc, "scaleout.up.s3_requests_per_blob", 1.0)
    _set(doc, "load_scaleout.p99_ms", 300.0)
    rows, worse = bench["compare"].compare([before], [{"results": doc}], 0.15)
    flagged = {r[0] for r in rows if r[4] == "WORSE"}
    assert flagged == {
        "scaleout.up.s3_requests_per_blob", "load_scaleout.p99_ms",
        "target: scale-out: S3 requests per small blob stored",
        "target: load (PostgreSQL + S3, --workers 2): p99 of a batch",
    }
    assert worse == 4


def test_old_results_file_still_renders(tmp_path: Path) -> None:
    """``--from-results`` on a run from before issue 13: the new rows and targets are '-'."""
    old = BENCH / "results" / "2026-12-05T010457.json"
    copy = tmp_path / old.name
    copy.write_text(old.read_text())
    # --no-save: no chart, so this runs without the bench extra (matplotlib), as make test does
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "--from-results", str(copy),
                          "--no-save"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for label in ("small blobs put, streams, PostgreSQL + S3 (scale-out)",
                  "small blobs sync, streams, PostgreSQL + S3 (scale-out)",
                  "load: 32 clients, 30 s, PostgreSQL + S3, --workers 2"):
        row = next(line for line in lines if line.startswith(label))
        assert row[len(label):].split() == ["-", "-", "-", "-"], row
    put = next(line for line in lines if line.startswith("10,000 x 10 kB put, streams"))
    assert "4,174 files/s" in put and "1,215 files/s" in put  # blobsync, rclone; no restic
    target = next(line for line in lines
                  if line.startswith("scale-out: S3 requests per small blob stored"))
    assert target.split()[-3:] == ["<=", "0.05", "n/a"]
    assert not (tmp_path / "latest.png").exists()  # --no-save: no chart


def test_old_results_file_still_charts(tmp_path: Path) -> None:
    """Without --no-save the replay draws the chart beside the file (bench extra only)."""
    pytest.importorskip("matplotlib", reason="the chart needs the bench extra (make bench)")
    old = BENCH / "results" / "2026-12-05T010457.json"
    copy = tmp_path / old.name  # the chart goes beside it, not into bench/results
    copy.write_text(old.read_text())
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "--from-results", str(copy)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "latest.png").stat().st_size > 0
