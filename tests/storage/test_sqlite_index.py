"""What only SQLiteIndex promises: schema versions, indexed listings, several processes."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from blobsync.server.storage.base import BlobExists, NewBlob, Order
from blobsync.server.storage.sqlite import MIGRATIONS, SQLiteIndex

TAG = b"t" * 16


async def opened(path: Path) -> SQLiteIndex:
    index = SQLiteIndex(path)
    await index.open()
    return index


async def test_schema_version_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite3"
    index = await opened(path)
    assert await index.schema_version() == len(MIGRATIONS)
    await index.insert_blob("u", "ns", NewBlob("a", 10, TAG, "loc-a", frozenset({"FAILED"})))
    await index.close()
    index = await opened(path)  # migrations do not run twice
    info = await index.get_blob("u", "ns", "a")
    assert info is not None and info.flags == {"FAILED"} and info.tag == TAG
    assert await index.usage("u") == 10
    assert await index.schema_version() == len(MIGRATIONS)
    await index.close()
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite3"
    await (await opened(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        await opened(path)


async def test_every_listing_is_served_by_an_index(tmp_path: Path) -> None:
    index = await opened(tmp_path / "i.sqlite3")
    try:
        for flag in (None, "PENDING", "PROCESSING", "PROCESSED", "FAILED"):
            for order in Order:
                plan = await index.explain_listing("u", "ns", filter_flag=flag, order=order,
                                                   limit=10)
                want = "blobs_by_seq" if flag is None else f"blobs_{flag.lower()}"
                assert want in plan, plan
                assert "TEMP B-TREE" not in plan, plan  # no sort of the whole result
    finally:
        await index.close()


async def test_100k_blobs_list(tmp_path: Path) -> None:
    index = await opened(tmp_path / "i.sqlite3")
    try:
        n = 100_000
        ids = [f"blob{i:06d}x" for i in range(n)]
        ids.reverse()  # stored order must not be name order
        await index.insert_many(
            ("u", "ns", bid, 1000, TAG, f"loc/{bid}",
             frozenset({"PENDING"}) if i % 100 == 0 else frozenset())
            for i, bid in enumerate(ids)
        )
        await index.insert_many([("u", "other", "x", 5, TAG, "loc/x", frozenset())])
        assert await index.list_blobs("u", "ns", order=Order.OLDEST_FIRST) == ids
        assert await index.list_blobs("u", "ns", order=Order.NEWEST_FIRST, limit=3) == ids[
            : -4 : -1
        ]
        assert await index.count_blobs("u", "ns") == n
        assert await index.list_blobs("u", "ns", filter_flag="PENDING",
                                      order=Order.OLDEST_FIRST) == ids[::100]
        assert await index.usage("u") == n * 1000 + 5
        with pytest.raises(BlobExists):
            await index.insert_many([("u", "ns", "new", 1, TAG, "l", frozenset()),
                                     ("u", "ns", ids[5], 1, TAG, "l", frozenset())])
        assert await index.get_blob("u", "ns", "new") is None  # all or nothing
        assert len(await index.get_blobs("u", "ns", ids[:2000])) == 2000
    finally:
        await index.close()


async def test_two_connections_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite3"
    a, b = await opened(path), await opened(path)
    try:
        seqs = []
        for i in range(10):
            idx = a if i % 2 else b
            seqs.append((await idx.insert_blob("u", "ns", NewBlob(f"b{i}", 1, TAG, f"l{i}"))).seq)
        assert seqs == sorted(seqs) and len(set(seqs)) == 10
        with pytest.raises(BlobExists):
            await a.insert_blob("u", "ns", NewBlob("b0", 1, TAG, "other"))
        await a.delete_blob("u", "ns", "b9")
        assert await b.list_deleted("u", "ns") == ["b9"]
        assert await b.usage("u") == 9
        # a deleted row's seq is never handed out again
        again = await b.insert_blob("u", "ns", NewBlob("b9", 1, TAG, "l9b"))
        assert again.seq > max(seqs)
    finally:
        await a.close()
        await b.close()


WORKER = """
import asyncio, sys
from blobsync.server.storage.base import BlobExists, NewBlob, QuotaExceeded
from blobsync.server.storage.sqlite import SQLiteIndex

async def main(path, name):
    index = SQLiteIndex(path)
    await index.open()
    results = []
    for i in range(30):
        for bid in (f"{name}-{i}", "shared"):
            try:
                info = await index.insert_blob(
                    "u", "ns", NewBlob(bid, 10, b"t" * 16, f"{name}/{bid}"), quota=500
                )
                results.append(f"ok {bid} {info.seq}")
            except BlobExists:
                results.append(f"exists {bid}")
            except QuotaExceeded:
                results.append(f"quota {bid}")
    await index.close()
    print("\\n".join(results))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite3"
    await (await opened(path)).close()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, str(path), f"p{n}", stdout=subprocess.PIPE
        )
        for n in range(3)
    ]
    outputs = [(await p.communicate())[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    lines = [line.split() for out in outputs for line in out.splitlines()]
    ok = [line for line in lines if line[0] == "ok"]
    assert len(ok) == 50  # the quota of 500 bytes holds exactly 50 blobs of 10
    assert sum(1 for line in ok if line[1] == "shared") == 1
    seqs = [int(line[2]) for line in ok]
    assert len(set(seqs)) == 50
    for out in outputs:  # each process saw its own seqs increase
        mine = [int(line.split()[2]) for line in out.splitlines() if line.startswith("ok")]
        assert mine == sorted(mine)
    index = await opened(path)
    try:
        assert await index.usage("u") == 500
        assert await index.count_blobs("u", "ns") == 50
    finally:
        await index.close()
