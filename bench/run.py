"""blobsync benchmark: blobsync against rclone crypt, side by side, in one run.

    make bench                                   # everything, full scale (~10 min)
    .venv/bin/python bench/run.py --quick        # smoke test at a small scale (~1 min)
    .venv/bin/python bench/run.py --only small,peer --notes "what changed"
    .venv/bin/python bench/run.py --profile bench/profiles   # py-spy the server too

Sections: small (10,000 x 10 kB put and sync, with and without streams), large (one 1 GiB
blob up and down, throughput and peak RSS), peer (rclone crypt to rclone serve s3,
--transfers 16, on the same files; and restic backup and restore of the small files to
rclone serve restic, when restic is installed: scripts/ensure-restic.sh), noop (sync of
100,000 unchanged blobs), server (the server alone on streams of the small blobs), load (32
clients streaming small blobs for 30 s), feed (a put reaching a watching device through two
servers on PostgreSQL + S3, an incoming delivery reaching a watching consumer, 1,000 idle
event-stream watchers), scaleout (the small section's streams on one server on PostgreSQL +
rclone serve s3, with the S3 requests per blob each way), load_scaleout (the load section on
PostgreSQL + rclone serve s3, --workers 2).
Everything runs on loopback in a temporary directory. Prints the figures and the targets
(ratios from this run, PASS/FAIL), writes bench/results/<date>.json (quick runs:
bench/results/quick/) and draws the chart (bench/results/latest.png; quick runs:
bench/results/quick/latest.png). --server-tree and --client-tree run either side from
another copy of the package, for before/after figures of a change.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import report  # noqa: E402
import sections  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="blobsync benchmark against rclone crypt on this machine",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__,
    )
    p.add_argument("--quick", action="store_true",
                   help="small scale for smoke tests: 500 blobs, 64 MiB, 10,000-blob no-op, "
                        "5 s load")
    p.add_argument("--only", metavar="LIST", default=",".join(sections.SECTIONS),
                   help=f"comma-separated sections to run, of {','.join(sections.SECTIONS)}")
    p.add_argument("--notes", default="", help="what this run is about (kept in the JSON)")
    p.add_argument("--profile", metavar="DIR", type=Path,
                   help="record the server with py-spy during each measured step "
                        "(raw collapsed stacks in DIR; see bench/profile_view.py)")
    p.add_argument("--server-tree", metavar="DIR", type=Path,
                   help="run the server from another copy of the package (a before/after "
                        "comparison: DIR holds a blobsync/ package)")
    p.add_argument("--client-tree", metavar="DIR", type=Path,
                   help="run the client CLI from another copy of the package (DIR holds a "
                        "blobsync/ package)")
    p.add_argument("--server-uvloop", action="store_true",
                   help="run the server on uvloop's event loop (needs uvloop installed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--workdir", type=Path, help="parent of the temporary directory")
    p.add_argument("--no-save", action="store_true",
                   help="do not write results or chart (with --from-results: no chart)")
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite the Benchmarks section of README.md from this run")
    p.add_argument("--from-results", metavar="JSON", type=Path,
                   help="measure nothing: print, chart (and with --update-readme, write to "
                        "the README) the run saved in JSON")
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in sections.SECTIONS]
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {list(sections.SECTIONS)}")
    args.sections = [s for s in sections.SECTIONS if s in wanted]
    return args


def log(text: str) -> None:
    print(text, flush=True)


def replay(args: argparse.Namespace) -> int:
    import json

    doc = json.loads(args.from_results.read_text())
    ts = report.targets(doc["results"])
    print(report.text_table(report.FIG_HEADERS, report.figures(doc["results"])))
    print()
    print(report.text_table(report.TARGET_HEADERS, report.target_rows(ts)))
    if not args.no_save:  # the chart needs matplotlib, which only the bench extra installs
        png = args.from_results.parent / "latest.png"
        report.chart(doc, png)
        log(f"chart: {png}")
    if args.update_readme:
        report.update_readme(report.markdown(doc, ts))
        log("README.md: Benchmarks section updated")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_results:
        return replay(args)
    scale = sections.QUICK if args.quick else sections.FULL
    # ServerProc reads these: every server of the run starts the same way.
    if args.server_tree:
        os.environ["BENCH_SERVER_TREE"] = str(args.server_tree.resolve())
    if args.client_tree:
        os.environ["BENCH_CLIENT_TREE"] = str(args.client_tree.resolve())
    if args.server_uvloop:
        os.environ["BENCH_SERVER_UVLOOP"] = "1"
    date = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="blobsync-bench-", dir=args.workdir))
    ctx = sections.Context(work, scale, args.profile.resolve() if args.profile else None, log)
    log(f"blobsync benchmark, {scale.name} scale, sections {', '.join(args.sections)}; "
        f"working in {work}")
    results: dict[str, Any] = {}
    failed: list[str] = []
    # The machine may be shared: the load average says how quiet it was.
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    try:
        for name in args.sections:
            log(f"[{name}]")
            t0 = time.perf_counter()
            ctx.out = {}
            try:
                results[name] = sections.SECTIONS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - one broken section must not hide the rest
                failed.append(name)
                results[name] = {**ctx.out, "error": f"{type(exc).__name__}: {exc}"}
                log(f"  FAILED: {exc}")
                traceback.print_exc()
            log(f"  ({time.perf_counter() - t0:.0f} s)")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    ts = report.targets(results)
    doc = {
        "date": date,
        "scale": scale.name,
        "notes": args.notes,
        "sections": args.sections,
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": {**report.machine(), "loadavg_before": load_before,
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "params": {**vars(scale), "server_tree": str(args.server_tree or ""),
                   "client_tree": str(args.client_tree or ""),
                   "server_uvloop": args.server_uvloop},
        "results": results,
        "targets": [t.row() for t in ts],
    }
    from peer import rclone_version

    doc["machine"]["rclone"] = rclone_version()
    print()
    print(report.text_table(report.FIG_HEADERS, report.figures(results)))
    print()
    print(report.text_table(report.TARGET_HEADERS, report.target_rows(ts)))
    if not args.no_save:
        path = report.save(doc, args.quick)
        png = path.parent / "latest.png"
        report.chart(doc, png)
        log(f"\nresults: {path.relative_to(BENCH_DIR.parent)}; chart: "
            f"{png.relative_to(BENCH_DIR.parent)}")
    if args.update_readme:
        report.update_readme(report.markdown(doc, ts))
        log("README.md: Benchmarks section updated")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
