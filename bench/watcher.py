"""A watching device for the propagation benchmark, in a process of its own:
``python bench/watcher.py HOME``. Opens the profile (passphrase from BLOBSYNC_PASSPHRASE),
registers an incoming consumer, and follows ``BlobManager.watch()``: one JSON line per
event on stdout, ``{"kind", "id", "t"}`` with ``t`` the wall clock when it happened (the
benchmark compares it with the putting process's clock: one machine, one clock). Prints
``{"kind": "ready"}`` once watching. Stops at EOF on stdin.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


def emit(kind: str, blob_id: str | None) -> None:
    sys.stdout.write(json.dumps({"kind": kind, "id": blob_id, "t": time.time()}) + "\n")
    sys.stdout.flush()


class Consumer:
    """Takes each incoming message; the time it has it is the delivery's arrival."""

    async def process(self, blob_id: str, payload: bytes) -> object:
        emit("consumed", blob_id)
        return None

    async def save(self, blob_id: str, result: object) -> None:
        return None


async def main(home: str) -> None:
    from blobsync.client import BlobManager

    manager = await BlobManager.open(home, passphrase=os.environ["BLOBSYNC_PASSPHRASE"])
    manager.register_consumer(Consumer())
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)

    async def follow() -> None:
        first = True
        async for event in manager.watch():
            if first:
                first = False
            emit(event.kind, event.blob_id)

    task = asyncio.ensure_future(follow())
    emit("ready", None)
    try:
        await asyncio.wait({task, stdin_closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - cancelled or failed: we are stopping
            pass
        await manager.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
