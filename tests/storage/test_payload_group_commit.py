"""The SQLite payload store commits concurrent runs together (issue 13, load p99).

Under load every stream request's batch was one transaction and one fsync, all queued on
the store's one writer thread: the uploads waited behind each other's fsyncs. Runs that
arrive while a commit is under way now go in together, in one transaction; each caller
still gets its own locations, durable when its call returns, and a failure fails every
run of the transaction with nothing of any left.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from blobsync.server.storage.sqlitepayloads import PAGE_SIZE, PREFIX, SQLitePayloads

RUNS = 12
PER_RUN = 20


@pytest.fixture
async def payloads(tmp_path: Path) -> AsyncIterator[SQLitePayloads]:
    store = SQLitePayloads(tmp_path / "payloads.sqlite3")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def count_transactions(store: SQLitePayloads) -> list[int]:
    """Count the write transactions of ``store`` (its writer thread's ``write`` calls)."""
    calls = [0]
    write: Callable[..., Any] = store._writes.write

    def counted(func: Callable[..., Any], *args: Any) -> Any:
        calls[0] += 1
        return write(func, *args)

    store._writes.write = counted  # type: ignore[method-assign]
    return calls


def run_of(n: int) -> list[tuple[str, bytes]]:
    return [(f"b{n}-{i}", bytes([n]) * (1000 + i)) for i in range(PER_RUN)]


async def test_concurrent_runs_share_transactions(payloads: SQLitePayloads) -> None:
    calls = count_transactions(payloads)
    located = await asyncio.gather(
        *(payloads.store_many("alice", "ns", run_of(n)) for n in range(RUNS))
    )
    # The first run commits alone; every run that queued meanwhile goes in with the next.
    assert calls[0] <= 3, f"{calls[0]} transactions for {RUNS} concurrent runs"
    every = [loc for locs in located for loc in locs]
    assert len(set(every)) == RUNS * PER_RUN
    assert all(loc.startswith(PREFIX) and len(loc) == len(PREFIX) + 32 for loc in every)
    for n, locs in enumerate(located):
        assert await payloads.read_many(locs) == [data for _, data in run_of(n)]


async def test_runs_one_after_another_each_commit(payloads: SQLitePayloads) -> None:
    calls = count_transactions(payloads)
    for n in range(3):
        await payloads.store_many("alice", "ns", run_of(n))
    assert calls[0] == 3


async def test_a_failed_group_leaves_nothing_and_the_next_goes_in(
    payloads: SQLitePayloads,
) -> None:
    write: Callable[..., Any] = payloads._writes.write
    fail = [True]

    def failing(func: Callable[..., Any], *args: Any) -> Any:
        if fail[0]:
            fail[0] = False

            def broken(conn: sqlite3.Connection, *a: Any) -> None:
                func(conn, *a)  # rows in, then the disk fails before the commit
                raise sqlite3.OperationalError("disk I/O error")

            return write(broken, *args)
        return write(func, *args)

    payloads._writes.write = failing  # type: ignore[method-assign]
    outcomes = await asyncio.gather(
        *(payloads.store_many("alice", "ns", run_of(n)) for n in range(4)),
        return_exceptions=True,
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert failed and all(isinstance(o, sqlite3.OperationalError) for o in failed)
    stored = [o for o in outcomes if not isinstance(o, BaseException)]
    for locs in stored:
        assert len(await payloads.read_many(locs)) == PER_RUN
    listed = [loc async for loc, _ in payloads.locations()]
    assert len(listed) == PER_RUN * len(stored)  # nothing of a failed run is left
    assert await payloads.store_many("alice", "ns", run_of(9))


async def test_new_locations_rise(payloads: SQLitePayloads) -> None:
    """Rising names append to the end of the location index instead of touching a page of
    it anywhere in the file per row."""
    runs = [await payloads.store_many("alice", "ns", run_of(n)) for n in range(3)]
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert max(earlier) < min(later)


async def test_a_new_database_has_large_pages_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """New payload databases use PAGE_SIZE pages (a 10 KB payload no longer spans three
    4 KiB overflow pages); one made before keeps its 4 KiB pages and works as before."""
    new = SQLitePayloads(tmp_path / "new.sqlite3")
    await new.open()
    await new.close()
    old_path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old_path, isolation_level=None)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    old = SQLitePayloads(old_path)
    await old.open()
    try:
        [loc] = await old.store_many("alice", "ns", [("b", b"x" * 10_000)])
        assert await old.read_many([loc]) == [b"x" * 10_000]
    finally:
        await old.close()
    for path, size in ((tmp_path / "new.sqlite3", PAGE_SIZE), (old_path, 4096)):
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA page_size").fetchone()[0] == size
        conn.close()
