"""Turn the figures of one run into the table, the targets (PASS/FAIL), the results file,
the chart and the README section."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
RSS_LIMIT_MB = 100.0  # the project's rule for one large blob, client and server
README_START = "<!-- bench:start (bench/run.py --update-readme writes this section) -->"
README_END = "<!-- bench:end -->"


# machine -------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        ram_gib = round(int(m.group(1)) / (1 << 20), 1) if m else None
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# targets -------------------------------------------------------------------------------
def _get(r: dict[str, Any], path: str) -> Any:
    cur: Any = r
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


@dataclass
class Target:
    name: str
    value: float | None  # the measured ratio or figure
    goal: str
    passed: bool | None  # None: not measured in this run
    higher: bool = True  # which way is better (bench/compare.py reads it)
    # A stretch goal: shown beside the targets, met or not yet, never a FAIL.
    stretch: bool = False

    def row(self) -> dict[str, Any]:
        if self.passed is None:
            result = "n/a"
        elif self.stretch:
            result = "met" if self.passed else "not yet"
        else:
            result = "PASS" if self.passed else "FAIL"
        return {"target": self.name, "value": self.value, "goal": self.goal, "result": result,
                **({"stretch": True} if self.stretch else {})}


def _ratio(r: dict[str, Any], a: str, b: str) -> float | None:
    x, y = _get(r, a), _get(r, b)
    return round(x / y, 2) if x and y else None


# Issue 13's goals, each as the issue states it.
SMALL_VS_RCLONE = 4.0  # small blobs, streams, files/s against rclone crypt, each way
SMALL_VS_RESTIC = 2.0  # against restic backup and restore
SCALEOUT_VS_DEFAULT = 0.7  # PostgreSQL + S3 against the default store, put and sync
S3_PER_BLOB = 0.05  # S3 requests per small blob stored, and per small blob fetched
LARGE_VS_RCLONE = 1.5  # the 1 GiB blob, MB/s against rclone crypt, each way
LOAD_P99_MS = 150.0  # 32 streaming clients: p99 of a batch's request
# Stretch goals: informational (met / not yet), never a FAIL.
STRETCH_PUT = 10_000.0  # files/s, small put
STRETCH_SYNC = 20_000.0  # files/s, small sync
STRETCH_LARGE = 700.0  # MB/s, 1 GiB each way


def _load_errors(r: dict[str, Any], section: str) -> int | None:
    """The load generator's errors, plus the 5xx answers and tracebacks the server saw."""
    errors = _get(r, f"{section}.errors")
    if errors is None:
        return None
    return int(errors + (_get(r, f"{section}.server_5xx") or 0)
               + (_get(r, f"{section}.server_tracebacks") or 0))


def targets(r: dict[str, Any], scale_count: int | None = None) -> list[Target]:
    out: list[Target] = []

    def at_least(name: str, value: float | None, goal: float, unit: str = "x",
                 stretch: bool = False) -> None:
        sep = "" if unit == "x" else " "
        out.append(Target(name, value, f">= {goal:,g}{sep}{unit}",
                          None if value is None else value >= goal, stretch=stretch))

    def below(name: str, value: float | None, goal: float, unit: str) -> None:
        out.append(Target(name, value, f"< {goal:g} {unit}",
                          None if value is None else value < goal, higher=False))

    def at_most(name: str, value: float | None, goal: float) -> None:
        out.append(Target(name, value, f"<= {goal:g}",
                          None if value is None else value <= goal, higher=False))

    up, down = "small.stream.up.files_per_s", "small.stream.down.files_per_s"
    at_least("small blobs up: files/s vs rclone",
             _ratio(r, up, "peer.small.up.files_per_s"), SMALL_VS_RCLONE)
    at_least("small blobs down: files/s vs rclone",
             _ratio(r, down, "peer.small.down.files_per_s"), SMALL_VS_RCLONE)
    at_least("small blobs up: files/s vs restic backup",
             _ratio(r, up, "peer.restic.up.files_per_s"), SMALL_VS_RESTIC)
    at_least("small blobs down: files/s vs restic restore",
             _ratio(r, down, "peer.restic.down.files_per_s"), SMALL_VS_RESTIC)
    at_least("streams vs one request per blob: up (put)",
             _ratio(r, up, "small.nostream.up.files_per_s"), 5)
    at_least("streams vs one request per blob: down (sync)",
             _ratio(r, down, "small.nostream.down.files_per_s"), 5)
    # Scale-out: the same put and sync on PostgreSQL + S3, against the default store of
    # the same run (n/a when the run had no small section).
    at_least("scale-out (PostgreSQL + S3) put: files/s vs default store",
             _ratio(r, "scaleout.up.files_per_s", up), SCALEOUT_VS_DEFAULT)
    at_least("scale-out (PostgreSQL + S3) sync: files/s vs default store",
             _ratio(r, "scaleout.down.files_per_s", down), SCALEOUT_VS_DEFAULT)
    at_most("scale-out: S3 requests per small blob stored",
            _get(r, "scaleout.up.s3_requests_per_blob"), S3_PER_BLOB)
    at_most("scale-out: S3 requests per small blob fetched",
            _get(r, "scaleout.down.s3_requests_per_blob"), S3_PER_BLOB)
    at_least("large blob up: MB/s vs rclone",
             _ratio(r, "large.up.mb_per_s", "peer.large.up.mb_per_s"), LARGE_VS_RCLONE)
    at_least("large blob down: MB/s vs rclone",
             _ratio(r, "large.down.mb_per_s", "peer.large.down.mb_per_s"), LARGE_VS_RCLONE)
    rss = [_get(r, f"large.{d}.client_peak_rss_mb") for d in ("up", "down")]
    below("large blob: client peak RSS",
          max(rss) if all(v is not None for v in rss) else None, RSS_LIMIT_MB, "MB")
    rss = [_get(r, f"large.{d}.server_peak_rss_mb") for d in ("up", "down")]
    below("large blob: server peak RSS",
          max(rss) if all(v is not None for v in rss) else None, RSS_LIMIT_MB, "MB")
    count = _get(r, "noop.count")
    # Issue 12: the feed makes a no-op sync one request, whatever the number of blobs.
    below(f"no-op sync of {count or '?'} blobs, feed (blobsync sync)",
          _get(r, "noop.cli_seconds"), 0.25, "s")
    below(f"no-op sync of {count or '?'} blobs, feed (BlobManager.sync, warm)",
          _get(r, "noop.library_seconds"), 0.010, "s")
    below("propagation put -> watching device: p50", _get(r, "feed.put_to_device.p50_ms"),
          50, "ms")
    below("propagation put -> watching device: p99", _get(r, "feed.put_to_device.p99_ms"),
          250, "ms")
    below("1,000 idle SSE watchers: server CPU", _get(r, "feed.idle.cpu_percent_of_one_core"),
          1.0, "% of a core")
    below("1,000 idle SSE watchers: RSS per waiter", _get(r, "feed.idle.kb_per_waiter"),
          20, "KB")
    for section, where in (("load", "default store"),
                           ("load_scaleout", "PostgreSQL + S3, --workers 2")):
        below(f"load ({where}): p99 of a batch", _get(r, f"{section}.p99_ms"), LOAD_P99_MS,
              "ms")
        errors = _load_errors(r, section)
        out.append(Target(f"load ({where}): errors", errors, "0",
                          None if errors is None else errors == 0, higher=False))
    at_least("stretch: small blobs put", _get(r, up), STRETCH_PUT, "files/s", stretch=True)
    at_least("stretch: small blobs sync", _get(r, down), STRETCH_SYNC, "files/s",
             stretch=True)
    at_least("stretch: large blob up", _get(r, "large.up.mb_per_s"), STRETCH_LARGE, "MB/s",
             stretch=True)
    at_least("stretch: large blob down", _get(r, "large.down.mb_per_s"), STRETCH_LARGE,
             "MB/s", stretch=True)
    return out


# the figures table ---------------------------------------------------------------------
def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.3g}" if abs(v) < 1 else f"{v:,.1f}"
    else:
        v = f"{v:,}" if isinstance(v, int) else str(v)
    return f"{v} {unit}".strip()


def figures(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measure, blobsync, rclone crypt, restic, detail). The rows of issue 13 (restic,
    scale-out, the second load) are there even when their section was not run ('-')."""
    rows: list[tuple[str, str, str, str, str]] = []
    n = _get(r, "small.count")
    if n:
        size = _get(r, "small.size")
        for mode, label in (("stream", "streams"), ("nostream", "one request per blob")):
            up = _get(r, f"small.{mode}.up") or {}
            down = _get(r, f"small.{mode}.down") or {}
            stream = mode == "stream"
            rows.append((f"{n:,} x {size / 1000:g} kB put, {label}",
                         _fmt(up.get("files_per_s"), "files/s"),
                         _fmt(_get(r, "peer.small.up.files_per_s") if stream else None,
                              "files/s"),
                         _fmt(_get(r, "peer.restic.up.files_per_s") if stream else None,
                              "files/s"),
                         f"{up.get('seconds', 0):.1f} s, of which "
                         f"{up.get('upload_s', 0):.1f} s after the last was stored"))
            rows.append((f"{n:,} x {size / 1000:g} kB sync, {label}",
                         _fmt(down.get("files_per_s"), "files/s"),
                         _fmt(_get(r, "peer.small.down.files_per_s") if stream else None,
                              "files/s"),
                         _fmt(_get(r, "peer.restic.down.files_per_s") if stream else None,
                              "files/s"),
                         f"{down.get('seconds', 0):.1f} s"))
    for d, verb, base in (("up", "put", "small.stream.up.files_per_s"),
                          ("down", "sync", "small.stream.down.files_per_s")):
        x = _get(r, f"scaleout.{d}") or {}
        ops = x.get("s3_requests") or {}
        detail = "-"
        if x:
            ratio = _ratio(r, f"scaleout.{d}.files_per_s", base)
            detail = (f"{_fmt(ratio)}x the default store; "
                      f"{_fmt(x.get('s3_requests_per_blob'))} S3 requests per blob"
                      + (f" ({', '.join(f'{op} {v:,}' for op, v in ops.items())})"
                         if ops else "")
                      + f"; CPU client {x.get('client_cpu_s')} s, server "
                      f"{x.get('server_cpu_s')} s; RSS client {x.get('client_peak_rss_mb')}"
                      f" MB, server {x.get('server_peak_rss_mb')} MB")
        rows.append((f"small blobs {verb}, streams, PostgreSQL + S3 (scale-out)",
                     _fmt(x.get("files_per_s"), "files/s"), "-", "-", detail))
    size = _get(r, "large.size")
    if size:
        for d, verb in (("up", "put"), ("down", "sync")):
            x = _get(r, f"large.{d}") or {}
            rows.append((f"{size / (1 << 20):,.0f} MiB {verb}", _fmt(x.get("mb_per_s"), "MB/s"),
                         _fmt(_get(r, f"peer.large.{d}.mb_per_s"), "MB/s"), "-",
                         f"RSS client {x.get('client_peak_rss_mb')} MB, "
                         f"server {x.get('server_peak_rss_mb')} MB"))
    if _get(r, "noop.count"):
        rows.append((f"no-op sync, {_get(r, 'noop.count'):,} blobs",
                     _fmt(_get(r, "noop.cli_seconds"), "s"), "-", "-",
                     f"BlobManager.sync {_fmt(_get(r, 'noop.library_seconds'), 's')}; "
                     f"python start {_fmt(_get(r, 'noop.python_startup_s'), 's')}"))
        if _get(r, "noop.full_cli_seconds") is not None:
            rows.append((f"no-op sync --full (listing diff), {_get(r, 'noop.count'):,} blobs",
                         _fmt(_get(r, "noop.full_cli_seconds"), "s"), "-", "-",
                         f"BlobManager.sync(full=True) "
                         f"{_fmt(_get(r, 'noop.full_library_seconds'), 's')}"))
        rows.append((f"first sync, {_get(r, 'noop.count'):,} tiny blobs",
                     _fmt(_get(r, "noop.initial_sync.files_per_s"), "files/s"), "-", "-",
                     f"{_fmt(_get(r, 'noop.initial_sync.seconds'), 's')}"))
    for key, label in (("put_to_device", "put on server 1 -> device watching server 2"),
                       ("delivery_to_consumer", "incoming delivery -> watching consumer")):
        x = _get(r, f"feed.{key}")
        if x:
            rows.append((f"propagation, {label} (PostgreSQL + S3)",
                         _fmt(x.get("p50_ms"), "ms p50"), "-", "-",
                         f"p99 {x.get('p99_ms')} ms over {x.get('count')}"))
    idle = _get(r, "feed.idle")
    if idle:
        rows.append((f"{idle.get('count'):,} idle SSE watchers, {idle.get('seconds')} s",
                     _fmt(idle.get("cpu_percent_of_one_core"), "% CPU"), "-", "-",
                     f"{idle.get('kb_per_waiter')} KB RSS per waiter"))
    if _get(r, "server.count"):
        for d, verb in (("upload", "up"), ("download", "down")):
            rows.append((f"server alone: {_get(r, 'server.count'):,} blobs {verb}, streams",
                         _fmt(_get(r, f"server.{d}_blobs_per_s"), "blobs/s"), "-", "-",
                         f"server CPU {_get(r, f'server.{d}_server_cpu_ms_per_blob')} ms/blob"))
    for section, where in (("load", "default store"),
                           ("load_scaleout", "PostgreSQL + S3, --workers 2")):
        x = _get(r, section) or {}
        rows.append((f"load: {x.get('clients', 32)} clients, {x.get('seconds', 30)} s, {where}",
                     _fmt(x.get("blobs_per_s"), "blobs/s"), "-", "-",
                     f"p50 {x.get('p50_ms')} ms, p99 {x.get('p99_ms')} ms, "
                     f"{x.get('errors')} errors" if x.get("clients") else "-"))
    return rows


def text_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(f"{h:<{w}}" for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def md_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


FIG_HEADERS = ("measure", "blobsync", "rclone crypt", "restic", "detail")
TARGET_HEADERS = ("target", "measured", "goal", "result")


def target_rows(ts: list[Target]) -> list[tuple[str, str, str, str]]:
    return [(t.name, _fmt(t.value), t.goal, t.row()["result"]) for t in ts]


# the results file ------------------------------------------------------------------------
def save(doc: dict[str, Any], quick: bool) -> Path:
    folder = RESULTS / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{doc['date']}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def history() -> list[dict[str, Any]]:
    docs = []
    for p in sorted(RESULTS.glob("*.json")):
        try:
            docs.append(json.loads(p.read_text()))
        except ValueError:
            continue
    return docs


# the chart --------------------------------------------------------------------------------
def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = doc["results"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    fig.suptitle(f"blobsync benchmark {doc['date']} ({doc['scale']} scale) - "
                 f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores", fontsize=11)
    blue, grey, light = "#1f77b4", "#9e9e9e", "#aec7e8"

    def bars(ax: Any, title: str, unit: str, groups: list[str],
             series: list[tuple[str, str, list[float | None]]]) -> None:
        width = 0.8 / len(series)
        for i, (label, color, values) in enumerate(series):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            vals = [v or 0 for v in values]
            rects = ax.bar(xs, vals, width, label=label, color=color)
            ax.bar_label(rects, labels=[f"{v:,.0f}" if v else "-" for v in values],
                         fontsize=8, padding=2)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
        ax.margins(y=0.15)

    bars(axes[0][0], f"{_get(r, 'small.count') or 0:,} small blobs", "files/s",
         ["up (put)", "down (sync)"],
         [("blobsync, streams", blue,
           [_get(r, "small.stream.up.files_per_s"), _get(r, "small.stream.down.files_per_s")]),
          ("blobsync, one request per blob", light,
           [_get(r, "small.nostream.up.files_per_s"),
            _get(r, "small.nostream.down.files_per_s")]),
          ("blobsync on PostgreSQL + S3, streams", "#2ca02c",
           [_get(r, "scaleout.up.files_per_s"), _get(r, "scaleout.down.files_per_s")]),
          ("rclone crypt, 16 transfers", grey,
           [_get(r, "peer.small.up.files_per_s"), _get(r, "peer.small.down.files_per_s")]),
          ("restic backup / restore", "#ff7f0e",
           [_get(r, "peer.restic.up.files_per_s"), _get(r, "peer.restic.down.files_per_s")])])
    bars(axes[0][1], f"one {(_get(r, 'large.size') or 0) / (1 << 20):,.0f} MiB blob", "MB/s",
         ["up", "down"],
         [("blobsync", blue, [_get(r, "large.up.mb_per_s"), _get(r, "large.down.mb_per_s")]),
          ("rclone crypt", grey,
           [_get(r, "peer.large.up.mb_per_s"), _get(r, "peer.large.down.mb_per_s")])])
    ax = axes[1][0]
    bars(ax, "peak RSS moving the large blob", "MB",
         ["client up", "client down", "server up", "server down"],
         [("blobsync", blue, [_get(r, "large.up.client_peak_rss_mb"),
                              _get(r, "large.down.client_peak_rss_mb"),
                              _get(r, "large.up.server_peak_rss_mb"),
                              _get(r, "large.down.server_peak_rss_mb")]),
          ("rclone", grey, [_get(r, "peer.large.up.client_peak_rss_mb"),
                            _get(r, "peer.large.down.client_peak_rss_mb"),
                            _get(r, "peer.large.up.server_peak_rss_mb"),
                            _get(r, "peer.large.down.server_peak_rss_mb")])])
    ax.axhline(RSS_LIMIT_MB, color="red", linestyle="--", linewidth=1)
    ax.text(3.4, RSS_LIMIT_MB, f"{RSS_LIMIT_MB:g} MB", color="red", fontsize=8, va="bottom",
            ha="right")

    ax = axes[1][1]
    runs = [d for d in history() if d.get("scale") == "full"]
    if doc.get("scale") == "full" and doc["date"] not in {d["date"] for d in runs}:
        runs.append(doc)
    series = [
        ("small up vs rclone", lambda d: _ratio(d["results"], "small.stream.up.files_per_s",
                                                 "peer.small.up.files_per_s")),
        ("small down vs rclone", lambda d: _ratio(d["results"],
                                                   "small.stream.down.files_per_s",
                                                   "peer.small.down.files_per_s")),
        ("streams vs per-blob, up", lambda d: _ratio(d["results"],
                                                      "small.stream.up.files_per_s",
                                                      "small.nostream.up.files_per_s")),
        ("load blobs/s / 1000", lambda d: (_get(d["results"], "load.blobs_per_s") or 0) / 1000
         or None),
        ("server alone, stream up blobs/s / 1000",
         lambda d: (_get(d["results"], "server.upload_blobs_per_s") or 0) / 1000 or None),
    ]
    _history_plot(ax, runs, series)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _history_plot(ax: Any, runs: list[dict[str, Any]],
                  series: list[tuple[str, Callable[[dict[str, Any]], float | None]]]) -> None:
    ax.set_title("history of full-scale runs (notes in bench/results/*.json)", fontsize=10)
    if not runs:
        ax.text(0.5, 0.5, "no full runs yet", ha="center", va="center", transform=ax.transAxes)
        return
    xs = list(range(len(runs)))
    for label, fn in series:
        ys = [fn(d) for d in runs]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o", label=label)
    labels = [f"{d['date'][5:10]} {d['date'][11:13]}:{d['date'][13:15]}" for d in runs]
    ax.set_xticks(xs, labels, rotation=30, fontsize=7, ha="right")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


# the README section ------------------------------------------------------------------------
def markdown(doc: dict[str, Any], ts: list[Target]) -> str:
    m = doc["machine"]
    r = doc["results"]
    lines = [
        f"Latest full run: {doc['date']}, commit {m.get('commit') or '?'}"
        f"{' (with uncommitted changes)' if m.get('dirty') else ''}. Machine: {m['cpu']}, "
        f"{m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, Linux "
        f"{m['kernel']}; {_get(r, 'peer.rclone') or 'rclone'} as the peer, everything on "
        "loopback, on one machine, in one run. Load average before the run "
        f"{(m.get('loadavg_before') or ['?'])[0]}, after {(m.get('loadavg_after') or ['?'])[0]}"
        " (the machine is shared).",
        "",
        md_table(FIG_HEADERS, figures(r)),
        "",
        md_table(TARGET_HEADERS, target_rows(ts)),
        "",
        "![benchmark chart](bench/results/latest.png)",
    ]
    return "\n".join(lines)


def update_readme(section: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{README_START}\n{section}\n{README_END}"
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        _, tail = rest.split(README_END, 1)
        text = head + block + tail
    else:
        raise RuntimeError("README.md has no benchmark markers; add the section first")
    readme.write_text(text)
