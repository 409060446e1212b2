"""Run by test_incoming_memory.py in a fresh process: one round of the incoming box with a
consumer that only counts, then the process's peak RSS as JSON.

    python -m tests.client.incoming_memory_probe HOME PASSPHRASE
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from blobsync.client import BlobManager


def vm_hwm_kb() -> int:
    """Peak RSS of this process image (ru_maxrss would include the parent's, across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


class Counter:
    def __init__(self) -> None:
        self.bytes = 0

    async def process(self, blob_id: str, payload: bytes) -> object:
        self.bytes += len(payload)
        return len(payload)

    async def save(self, blob_id: str, result: object) -> None:
        pass


async def main(home: str, passphrase: str) -> None:
    m = await BlobManager.open(home, passphrase=passphrase)
    counter = Counter()
    m.register_consumer(counter)
    try:
        report = await m.process_incoming()
    finally:
        await m.close()
    print(json.dumps({
        "peak_kb": vm_hwm_kb(),
        "bytes": counter.bytes, "processed": report.processed, "failed": report.failed,
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
