"""A/B of the small-blob put and sync (10,000 x 10 kB) between copies of the package.

    .venv/bin/python bench/small_ab.py TREE_A,TREE_B[,...] [RUNS] [COUNT]

One server per tree (each from its own tree), then per run and per tree (alternating the
order each run) a fresh device A that ``put``s the files and a fresh device B that
``sync``s them, each timed as a whole command with its CPU, as ``make bench``'s small
section times them. Medians per tree at the end. A tree is a directory holding a
``blobsync`` package, e.g. ``git archive <commit> blobsync | tar -x -C DIR``. Run it
under the machine's lock.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sections  # noqa: E402
from procs import ServerProc  # noqa: E402


def main() -> None:
    trees = {Path(a).name: Path(a).resolve() for a in sys.argv[1].split(",")}
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    work = Path(tempfile.mkdtemp(prefix="small-ab-"))
    ctx = sections.Context(work, sections.Scale("ab", count, 10_000, 1, 1, 1.0, 1), None,
                           print)
    files = ctx.small_files()
    res: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in trees}
    with contextlib.ExitStack() as stack:
        servers = {}
        for label, tree in trees.items():
            os.environ["BENCH_SERVER_TREE"] = str(tree)
            servers[label] = stack.enter_context(ServerProc(work / f"srv-{label}"))
        order = list(trees.items())
        for i in range(runs):
            for label, tree in order if i % 2 == 0 else order[::-1]:
                server = servers[label]
                os.environ["BENCH_CLIENT_TREE"] = str(tree)
                user = f"u{label}{i}"
                token = server.add_user(user)
                a = sections._device(ctx, server, token, f"{label}{i}", user=user)
                up = sections._put(ctx, server, a, files, "ns", [], count, "x")
                b = sections._device(ctx, server, token, f"{label}{i}b", user=user,
                                     recover=True)
                down, _ = sections._sync(ctx, server, b, "ns", [], count, None)
                row = (up["seconds"], up["client_cpu_s"], down["seconds"],
                       down["client_cpu_s"])
                res[label].append(row)
                print(label, i, *row, flush=True)
    for label, rows in res.items():
        med = [statistics.median(r[k] for r in rows) for k in range(4)]
        print(f"{label}: put {med[0]:.3f} s (client CPU {med[1]:.3f} s), "
              f"sync {med[2]:.3f} s (client CPU {med[3]:.3f} s)")


if __name__ == "__main__":
    main()
