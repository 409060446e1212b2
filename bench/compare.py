"""Compare two sets of `make bench` runs: the median of each figure, before and after.

    .venv/bin/python bench/compare.py --before A.json B.json C.json --after D.json E.json F.json

A figure counts as worse when it moved the wrong way (a rate down; a time, CPU or RSS up)
by more than ``--threshold`` (15% by default). The machine is shared, so a single run says
little: compare medians of three runs or more, and repeat an A/B for any figure flagged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from report import RESULTS, _fmt, _get, targets

# The figures that the README table and the targets are made of, and which way is better.
HEADLINE: list[tuple[str, bool]] = [  # (path in "results", higher is better)
    ("small.stream.up.files_per_s", True),
    ("small.stream.down.files_per_s", True),
    ("small.nostream.up.files_per_s", True),
    ("small.nostream.down.files_per_s", True),
    ("small.stream.up.client_peak_rss_mb", False),
    ("small.stream.down.client_peak_rss_mb", False),
    ("large.up.mb_per_s", True),
    ("large.down.mb_per_s", True),
    ("large.up.client_peak_rss_mb", False),
    ("large.down.client_peak_rss_mb", False),
    ("large.up.server_peak_rss_mb", False),
    ("large.down.server_peak_rss_mb", False),
    ("noop.cli_seconds", False),
    ("noop.library_seconds", False),
    ("noop.initial_sync.files_per_s", True),
    ("server.upload_blobs_per_s", True),
    ("server.download_blobs_per_s", True),
    ("server.upload_server_cpu_ms_per_blob", False),
    ("server.download_server_cpu_ms_per_blob", False),
    ("load.blobs_per_s", True),
    ("load.p50_ms", False),
    ("load.p99_ms", False),
    ("scaleout.up.files_per_s", True),
    ("scaleout.down.files_per_s", True),
    ("scaleout.up.s3_requests_per_blob", False),
    ("scaleout.down.s3_requests_per_blob", False),
    ("load_scaleout.blobs_per_s", True),
    ("load_scaleout.p99_ms", False),
]


def _load(name: str) -> dict[str, Any]:
    path = Path(name)
    if not path.exists():
        path = RESULTS / (name if name.endswith(".json") else name + ".json")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]],
            threshold: float) -> tuple[list[tuple[str, str, str, str, str]], int]:
    rows: list[tuple[str, str, str, str, str]] = []
    worse = 0
    series: list[tuple[str, bool, list[float | None], list[float | None]]] = [
        (path, up, [_get(d["results"], path) for d in before],
         [_get(d["results"], path) for d in after]) for path, up in HEADLINE
    ]
    for i, t in enumerate(targets(before[0]["results"])):
        if t.name.endswith("errors") or t.stretch:  # a count; a headline figure already
            continue
        series.append((f"target: {t.name}", t.higher,
                       [targets(d["results"])[i].value for d in before],
                       [targets(d["results"])[i].value for d in after]))
    for label, up, b, a in series:
        mb, ma = _median(b), _median(a)
        if mb is None or ma is None or mb == 0:
            continue
        change = (ma - mb) / mb
        bad = (-change if up else change) > threshold
        worse += bad
        rows.append((label, _fmt(float(mb)), _fmt(float(ma)), f"{change:+.0%}",
                     "WORSE" if bad else "ok"))
    return rows, worse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", nargs="+", required=True, help="results files (or dates)")
    ap.add_argument("--after", nargs="+", required=True, help="results files (or dates)")
    ap.add_argument("--threshold", type=float, default=0.15,
                    help="how far the wrong way counts as worse (default 0.15)")
    args = ap.parse_args()
    rows, worse = compare([_load(n) for n in args.before], [_load(n) for n in args.after],
                          args.threshold)
    headers = ("figure", "median before", "median after", "change", "")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for r in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"\n{worse} figure(s) more than {args.threshold:.0%} worse")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
