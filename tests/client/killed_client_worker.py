"""A client process for the crash tests of test_client_killed_mid_transfer.py: it runs one
operation on an existing home and is killed with SIGKILL by the test, at a point the test
chooses.

    python -m tests.client.killed_client_worker '{"op": "put", "home": ..., ...}'

``die_before`` names a LocalStore method: the process kills itself (SIGKILL, no cleanup)
the first time that method is called. It places a crash exactly between two steps, which
a timer never could; everything else is the real client against the real server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from blobsync.client import BlobManager
from blobsync.client.localstore import LocalStore


def _die_before(method: str) -> None:
    original = getattr(LocalStore, method)

    async def dying(self: LocalStore, *args: Any, **kwargs: Any) -> Any:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, *args, **kwargs)  # never reached

    setattr(LocalStore, method, dying)


async def main(job: dict[str, Any]) -> None:
    if job.get("die_before"):
        _die_before(job["die_before"])
    m = await BlobManager.open(job["home"], passphrase=job["passphrase"])
    try:
        print("OPENED", flush=True)
        op = job["op"]
        if op == "put":
            await m.put(job["blob_id"], Path(job["path"]), upload=job.get("upload", True))
        elif op == "sync":
            report = await m.sync()
            print(json.dumps({"downloaded": report.downloaded, "uploaded": report.uploaded}))
        elif op == "get_dest":
            await m.get(job["blob_id"], dest=job["dest"])
        else:
            raise SystemExit(f"unknown op {op}")
        print("DONE", flush=True)
    finally:
        await m.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
