"""Measure where the client's sealed payloads should live: inside the SQLCipher database or
as sealed files beside it. Figures go to docs/client.md ("Local store").

    .venv/bin/python bench/client_localstore.py [count] [size ...]

Each case writes ``count`` sealed blobs through the real LocalStore (one transaction per
blob, as sync does; files are fsynced and renamed as keep_file does), then reads them all
back, and reports seconds and disk use.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from blobsync.client.localstore import LocalStore
from blobsync.client.model import SyncStatus
from blobsync.client.secrets import names_key, store_key
from blobsync.format import seal


def disk_use(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


async def case(root: Path, count: int, size: int, inline: bool) -> dict[str, float]:
    secret = os.urandom(128)
    store = LocalStore(
        root / "local.db", root / "blobs", root / "tmp",
        db_key=store_key(secret), names_key=names_key(secret),
        inline_max=1 << 62 if inline else 0,
    )
    await store.open()
    sealed = [seal(secret, f"b{i}", os.urandom(size)) for i in range(min(count, 50))]
    t0 = time.perf_counter()
    for i in range(count):
        data = sealed[i % len(sealed)]
        if inline:
            await store.insert("ns", f"b{i}", SyncStatus.SYNCED, size=size,
                               sealed_size=len(data), payload=data)
        else:
            tmp = store.temp_path()
            await asyncio.to_thread(tmp.write_bytes, data)
            loc = await store.keep_file("ns", f"b{i}", tmp)
            await store.insert("ns", f"b{i}", SyncStatus.SYNCED, size=size,
                               sealed_size=len(data), location=loc)
    t1 = time.perf_counter()
    total = 0
    for row in await store.rows("ns"):
        async for chunk in store.read_sealed(row):
            total += len(chunk)
    t2 = time.perf_counter()
    await store.close()
    return {"write_s": t1 - t0, "read_s": t2 - t1, "disk_mb": disk_use(root) / 1e6}


async def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    sizes = [int(s) for s in sys.argv[2:]] or [10_000]
    print(f"{'size':>9} {'count':>6} {'where':>6} {'write s':>8} {'read s':>7} {'disk MB':>8}")
    for size in sizes:
        for inline in (True, False):
            root = Path(tempfile.mkdtemp(prefix="bs-bench-"))
            try:
                r = await case(root, count, size, inline)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            where = "db" if inline else "files"
            print(f"{size:>9} {count:>6} {where:>6} {r['write_s']:>8.2f} {r['read_s']:>7.2f} "
                  f"{r['disk_mb']:>8.1f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
