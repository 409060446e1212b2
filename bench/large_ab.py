"""A/B of the 1 GiB download (or upload) between copies of the package, in one sitting.

    .venv/bin/python bench/large_ab.py TREE_A,TREE_B [--rounds 3] [--mode sync|get|put] [--json]

One server (from the checkout), one ``put`` of a 1 GiB file of random bytes, then per
round and per tree (alternating the order each round) a fresh device B that ``sync``s
the blob (kept sealed), ``get``s it into a file (``-o``) or ``put``s the file again,
timed as a whole command with its CPU (user and kernel) and peak RSS, and the server's
CPU and peak RSS. Medians per tree at the end. A tree is a directory holding a
``blobsync`` package, e.g. ``git archive <commit> blobsync | tar -x -C DIR``. Run it
under the machine's lock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import ServerProc, cli  # noqa: E402

GIB = 1 << 30
_times: dict[str, float] = {}
_wait4 = os.wait4


def _wait4_noting(pid: int, options: int) -> tuple[int, int, Any]:
    """``os.wait4`` that also notes the child's user and kernel time apart."""
    got = _wait4(pid, options)
    _times["user"], _times["kernel"] = got[2].ru_utime, got[2].ru_stime
    return got


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", help="comma-separated directories, each holding a blobsync package")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mode", choices=("sync", "get", "put"), default="sync")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp)")
    p.add_argument("--json", action="store_true",
                   help="put and get with --json too (sync always has it): progress reported")
    args = p.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="large-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    os.wait4 = _wait4_noting  # procs.run_measured reaps its child with it
    src = work / "src" / "large.bin"
    if not src.exists() or src.stat().st_size != GIB:
        src.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "wb") as f:
            for _ in range(GIB >> 20):
                f.write(os.urandom(1 << 20))
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    with ServerProc(work / "server") as server:
        token = server.add_user("bench")
        a = work / "device-A"
        shutil.rmtree(a, ignore_errors=True)
        cli(a, "init", "--server", server.url, "--user", "bench", token=token).check()
        blob_id = cli(a, "put", str(src), "-n", "large").check().stdout.split("\t")[0].strip()
        for r in range(args.rounds):
            for tree in trees if r % 2 == 0 else trees[::-1]:
                os.environ["BENCH_CLIENT_TREE"] = tree
                b, out = work / "device-B", work / "out.bin"
                shutil.rmtree(b, ignore_errors=True)
                out.unlink(missing_ok=True)
                cli(b, "init", "--server", server.url, "--user", "bench", "--recover",
                    token=token).check()
                os.sync()
                time.sleep(0.5)
                stats: dict[str, float] = {}
                json_flag = ["--json"] if args.json else []
                with server.watch(stats):
                    if args.mode == "sync":
                        m = cli(b, "--json", "sync", "-n", "large").check()
                    elif args.mode == "put":  # a new blob of the same bytes
                        m = cli(b, *json_flag, "put", str(src), "-n", f"put{r}").check()
                    else:
                        m = cli(b, *json_flag, "get", blob_id, "-n", "large", "-o",
                                str(out)).check()
                row = {
                    "seconds": round(m.seconds, 3),
                    "mb_per_s": round(GIB / 1e6 / m.seconds),
                    "client_cpu_s": round(m.cpu_seconds, 2),
                    "client_user_s": round(_times["user"], 2),
                    "client_kernel_s": round(_times["kernel"], 2),
                    "client_peak_rss_mb": round(m.max_rss_kib / 1024, 1),
                    "server_cpu_s": stats["server_cpu_s"],
                    "server_peak_rss_mb": stats["server_peak_rss_mb"],
                }
                results[tree].append(row)
                print(tree, row, flush=True)
        shutil.rmtree(work / "device-B", ignore_errors=True)
        (work / "out.bin").unlink(missing_ok=True)
    for tree, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{tree}: medians of {len(rows)}: {med}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
