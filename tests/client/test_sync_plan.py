"""The sync planner (client/plan.py) and the one concurrency helper (client/jobs.py):
plain data in, plain data out; no server, no store, no SyncEngine."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blobsync.client import ClientSettings, SyncStatus
from blobsync.client.jobs import Job, gather, run_jobs
from blobsync.client.localstore import Row
from blobsync.client.plan import (
    FIRST_SIZE_GUESS,
    SizeBook,
    batches,
    is_small,
    order_uploads,
    rank,
    reconcile,
    take_batch,
)
from blobsync.format import SEAL_OVERHEAD

SYNCED = SyncStatus.SYNCED.value


def row(i: int, sealed: int | None, priority: int = 1) -> Row:
    return Row(i, "ns", f"b{i}", SyncStatus.PENDING_UPLOAD, priority, None, sealed, None,
               False, False, 0, 0.0, 0, None, 0.0)


# --- batching (moved from test_units.py, where they needed SyncEngine(None, None, ...)) ---


def test_batches_respect_count_and_bytes() -> None:
    def cut(rows: list[Row]) -> list[list[Row]]:
        return batches(rows, 3, 1000)

    rows = [row(i, 300) for i in range(7)]
    assert [len(b) for b in cut(rows)] == [3, 3, 1]
    rows = [row(i, 450) for i in range(5)]
    assert [len(b) for b in cut(rows)] == [2, 2, 1]
    # one blob over the byte bound still goes, alone
    assert [len(b) for b in cut([row(0, 5000), row(1, 10)])] == [1, 1]
    # unknown sizes (downloads not seen yet) are bounded by count only
    assert [len(b) for b in cut([row(i, None) for i in range(4)])] == [3, 1]


def test_small_and_large_split_at_the_stream_threshold() -> None:
    sealed_max = ClientSettings(stream_threshold=1000).stream_threshold + SEAL_OVERHEAD
    assert is_small(row(0, 1000 + 753), sealed_max)
    assert not is_small(row(0, 1000 + 754), sealed_max)
    assert is_small(row(0, None), sealed_max)


async def test_pool_runs_at_most_concurrency_jobs_in_order() -> None:
    running = 0
    peak = 0
    started: list[int] = []

    def job(i: int) -> Job:
        async def run() -> None:
            nonlocal running, peak
            started.append(i)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

        return run

    await run_jobs([job(i) for i in range(10)], ClientSettings(concurrency=3).concurrency)
    assert peak == 3
    assert started == list(range(10))  # queued order (highest priority first) is kept


@given(
    st.lists(st.one_of(st.none(), st.integers(0, 3000)), max_size=60),
    st.integers(1, 10),
    st.integers(1, 5000),
)
def test_batches_keep_every_row_once_in_order_within_bounds(
    sizes: list[int | None], max_count: int, max_bytes: int
) -> None:
    rows = [row(i, s) for i, s in enumerate(sizes)]
    out = batches(rows, max_count, max_bytes)
    assert [r for b in out for r in b] == rows
    for b in out:
        assert 1 <= len(b) <= max_count
        if len(b) > 1:
            assert sum(r.sealed_size or 0 for r in b) <= max_bytes


# --- download streams: taken from the queue, unknown sizes at the estimate ----------------


def test_take_batch_counts_unknown_sizes_at_the_guess() -> None:
    queue = deque(row(i, None) for i in range(10))
    assert [r.id for r in take_batch(queue, 300, 100, 1000)] == [0, 1, 2]
    assert [r.id for r in take_batch(queue, 300, 2, 1000)] == [3, 4]  # count bound
    queue = deque([row(0, 5000), row(1, 10)])
    assert [r.id for r in take_batch(queue, 300, 100, 1000)] == [0]  # too large: alone
    assert [r.id for r in take_batch(queue, 300, 100, 1000)] == [1]
    assert not queue


def test_size_book_guesses_then_learns_the_average() -> None:
    book = SizeBook(stream_sealed_max=10_000, stream_max_bytes=1 << 20)
    assert not book.knows("ns")
    assert book.estimate("ns") == FIRST_SIZE_GUESS
    assert SizeBook(10_000, 1000).estimate("ns") == 500  # at most half a stream
    book.seed("ns", (3000, 3))
    assert book.knows("ns") and book.estimate("ns") == 1000
    book.learn("ns", 4000)
    assert book.estimate("ns") == 1750
    book.learn("ns", 20_000)  # too large for a stream: not counted
    assert book.estimate("ns") == 1750
    assert book.estimate("other") == FIRST_SIZE_GUESS


# --- upload rounds: batches and single ones, highest priority first -----------------------


def test_order_uploads_puts_priority_first_then_age() -> None:
    rows = [row(0, 100, 1), row(1, 100_000, 1), row(2, 100, 3), row(3, 200_000, 2)]
    planned = order_uploads(rows, stream=True, stream_sealed_max=1000, max_count=10,
                            max_bytes=10_000)
    assert planned == [[rows[0], rows[2]], rows[3], rows[1]]
    # Streams off: every blob alone, in rank order.
    planned = order_uploads(rows, stream=False, stream_sealed_max=1000, max_count=10,
                            max_bytes=10_000)
    assert planned == sorted(rows, key=rank)


# --- reconcile: what a listing means ------------------------------------------------------


def test_reconcile_decides_each_case() -> None:
    known = {"kept", "deleted-there", "lost-there", "awaited", "awaited-deleted",
             "pending-delete", "pending-delete-uploading", "pending-up", "big-up"}
    unsynced = {
        "awaited": SyncStatus.PENDING_DOWNLOAD.value,
        "awaited-deleted": SyncStatus.FAILED_DOWNLOAD.value,
        "pending-delete": SyncStatus.PENDING_DELETE.value,
        "pending-delete-uploading": SyncStatus.PENDING_DELETE.value,
        "pending-up": SyncStatus.PENDING_UPLOAD.value,
        "big-up": SyncStatus.PENDING_UPLOAD.value,
    }
    listed = ["kept", "big-up", "new-1", "new-0"]
    tombstoned = ["deleted-there", "awaited-deleted", "tombstoned-unknown"]
    plan = reconcile(known, unsynced, listed, tombstoned,
                     uploading={"pending-delete-uploading"},
                     large_pending_upload={"big-up", "big-not-there"})
    assert plan.gone_here == ["awaited-deleted", "deleted-there"]
    assert plan.vanished == ["awaited", "pending-delete"]
    assert plan.reupload == ["lost-there"]
    assert plan.already == ["big-up"]
    assert plan.new == ["new-0", "new-1"]


def test_reconcile_of_an_unchanged_namespace_plans_nothing() -> None:
    ids = {f"b{i}" for i in range(1000)}
    plan = reconcile(ids, {}, sorted(ids), [])
    assert (plan.gone_here, plan.vanished, plan.reupload, plan.already, plan.new) == (
        [], [], [], [], []
    )


@given(st.data())
def test_reconcile_every_id_lands_in_at_most_one_list(data: st.DataObject) -> None:
    ids = [f"b{i}" for i in range(12)]
    statuses = [s.value for s in SyncStatus]
    known = set(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    unsynced = {b: data.draw(st.sampled_from(statuses)) for b in known}
    unsynced = {b: s for b, s in unsynced.items() if s != SYNCED}
    listed = data.draw(st.lists(st.sampled_from(ids), unique=True))
    tombs = data.draw(st.lists(st.sampled_from(ids), unique=True))
    plan = reconcile(known, unsynced, listed, tombs)
    lists = [plan.gone_here, plan.vanished, plan.reupload, plan.new]
    seen = [b for lst in lists for b in lst]
    assert len(seen) == len(set(seen))
    assert set(plan.new) == set(listed) - known - set(tombs)
    # Nothing the server lists is removed here or uploaded again.
    assert not set(plan.gone_here + plan.vanished + plan.reupload) & set(listed)


# --- the concurrency helper ---------------------------------------------------------------


async def test_run_jobs_pulls_late_and_fails_as_one_error() -> None:
    taken: list[int] = []
    pending = list(range(5))

    def next_job() -> Job | None:
        if not pending:
            return None
        i = pending.pop(0)
        taken.append(i)

        async def run() -> None:
            await asyncio.sleep(0)

        return run

    await run_jobs(next_job, 2)
    assert taken == [0, 1, 2, 3, 4]

    async def boom() -> None:
        raise KeyError("first")

    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(KeyError):  # itself, not an ExceptionGroup
        await asyncio.wait_for(run_jobs([slow, boom], 2), 5)


async def test_gather_returns_in_order() -> None:
    async def value(v: int, pause: float) -> int:
        await asyncio.sleep(pause)
        return v

    assert await gather(value(1, 0.02), value(2, 0)) == [1, 2]
