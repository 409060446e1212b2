"""Run by test_memory.py in a fresh process: put a large blob from one device and get it on
another, then print the process's peak RSS (VmHWM) as JSON.

    python -m tests.client.memory_probe SERVER_URL TOKEN WORKDIR SIZE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from blobsync.client import BlobManager, ClientSettings


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


async def main(url: str, token: str, work: Path, size: int) -> dict[str, float]:
    settings = ClientSettings(retry_scale=0.01)
    src = work / "source.bin"
    with open(src, "wb") as f:  # sparse: costs no disk, reads back as zeros
        f.truncate(size)
    t0 = time.monotonic()
    a = await BlobManager.init(work / "a", server=url, user="alice", token=token,
                               passphrase="pw", settings=settings)
    await a.put("huge", src)
    await a.close()
    src.unlink()
    t1 = time.monotonic()
    b = await BlobManager.init(work / "b", server=url, user="alice", token=token,
                               passphrase="pw", recover=True, settings=settings)
    dest = work / "dest.bin"
    await b.get("huge", dest=dest)
    await b.close()
    t2 = time.monotonic()
    return {"hwm_kb": vm_hwm_kb(), "dest_size": dest.stat().st_size, "put_s": t1 - t0,
            "get_s": t2 - t1}


if __name__ == "__main__":
    url, token, work, size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(main(url, token, work, size))))
