"""Summarize a py-spy raw profile (collapsed stacks, from ``bench/run.py --profile DIR``).

    .venv/bin/python bench/profile_view.py DIR/small-stream-up.txt [--top 25] [--thread Main]

Per thread group (the event loop's MainThread, the thread pools), prints where samples
fall: "self" is the innermost frame, "incl" any frame on the stack. Idle samples (the
event loop waiting in select, pool threads waiting for work) are counted apart, so the
busy part reads as a share of wall time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

IDLE_LEAVES = ("EpollSelector.select", "select (selectors.py", "_worker (concurrent/futures",
               "Condition.wait", "SimpleQueue.get", "_queue.SimpleQueue.get")
_THREAD = re.compile(r"^thread \(\d+\): ([^;]+)")
_LINE_NO = re.compile(r":\d+\)$")


def group_of(thread: str) -> str:
    # "asyncio_3" -> "asyncio pool", "sqlite-index_0" -> "sqlite-index"
    return re.sub(r"_\d+$", "", thread)


def frame_name(frame: str) -> str:
    return _LINE_NO.sub(")", frame.strip())


def summarize(path: Path, top: int, only: str | None) -> str:
    self_t: dict[str, Counter[str]] = defaultdict(Counter)
    incl: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        m = _THREAD.match(stack)
        thread = group_of(m.group(1)) if m else "?"
        if only and only.lower() not in thread.lower():
            continue
        frames = [frame_name(f) for f in stack.split(";")[1:]]
        totals[thread] += n
        leaf = frames[-1] if frames else "?"
        if any(leaf.startswith(p) for p in IDLE_LEAVES):
            idle[thread] += n
            continue
        self_t[thread][leaf] += n
        for f in set(frames):
            incl[thread][f] += n
    out: list[str] = []
    for thread, total in totals.most_common():
        busy = total - idle[thread]
        out.append(f"== {thread}: {total} samples, {busy} busy ({100 * busy / total:.0f}%)")
        out.append("  self:")
        for f, n in self_t[thread].most_common(top):
            out.append(f"    {100 * n / total:5.1f}%  {f}")
        out.append("  inclusive (blobsync frames):")
        shown = 0
        for f, n in incl[thread].most_common():
            if "blobsync/" in f or "aiohttp/" in f:
                out.append(f"    {100 * n / total:5.1f}%  {f}")
                shown += 1
                if shown >= top:
                    break
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--thread", help="only thread groups whose name contains this")
    args = p.parse_args()
    print(summarize(args.profile, args.top, args.thread))


if __name__ == "__main__":
    main()
