"""Time ``BlobManager.sync`` in a process of its own (so that it imports the client the
benchmark is measuring): ``python bench/lib_sync.py HOME NAMESPACE REPEATS [full]``
(full: ``sync(full=True)``, the listing diff).

The passphrase comes from BLOBSYNC_PASSPHRASE. Prints a JSON list of seconds, one per
sync, each timed around the sync call alone (the manager is opened once, before).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


async def main(home: str, namespace: str, repeats: int, full: bool = False) -> list[float]:
    from blobsync.client import BlobManager

    manager = await BlobManager.open(home, passphrase=os.environ["BLOBSYNC_PASSPHRASE"])
    times: list[float] = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            report = await manager.sync(namespace, full=full)
            times.append(time.perf_counter() - t0)
            if report.downloaded or report.uploaded or report.failed:
                raise SystemExit(f"the no-op sync moved something: {report}")
    finally:
        await manager.close()
    return times


if __name__ == "__main__":
    home, namespace, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    full = sys.argv[4:] == ["full"]
    print(json.dumps(asyncio.run(main(home, namespace, repeats, full))))
