"""The client's one concurrency helper: jobs run by at most N workers, failing as one.

A worker takes the next job only when it is free, so a job source can decide late (a
download stream is cut when a worker takes it: the size estimate improves with every
stream that came in meanwhile). The first failure cancels the rest and is raised as
itself, not as a group: AuthFailed, the transient errors and bugs must stay themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sized
from typing import Any, TypeVar

T = TypeVar("T")
Job = Callable[[], Awaitable[object]]


async def run_jobs(jobs: Iterable[Job] | Callable[[], Job | None], workers: int) -> None:
    """Run ``jobs`` (an iterable, or a function giving the next job or None when there is
    none) in order, at most ``workers`` at once."""
    if isinstance(jobs, Sized):
        workers = min(workers, len(jobs))
    if callable(jobs):
        source: Callable[[], Job | None] = jobs
    else:
        it: Iterator[Job] = iter(jobs)

        def source() -> Job | None:
            return next(it, None)

    async def worker() -> None:
        while (job := source()) is not None:
            await job()

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(worker())
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None


async def gather(*aws: Awaitable[Any]) -> list[Any]:
    """Await concurrently, results in order; fails as ``run_jobs`` does."""
    results: list[Any] = [None] * len(aws)

    def job(i: int, aw: Awaitable[Any]) -> Job:
        async def run() -> None:
            results[i] = await aw

        return run

    await run_jobs([job(i, aw) for i, aw in enumerate(aws)], len(aws))
    return results


def bind(fn: Callable[[T], Awaitable[object]], arg: T) -> Job:
    """A job with ``arg`` fixed now, not when the loop variable last changed."""
    return lambda: fn(arg)
