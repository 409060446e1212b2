"""Fixtures of the tests that run real server processes side by side."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.helpers.subproc import ServerProcess


@pytest.fixture
def stop_later() -> Iterator[list[ServerProcess]]:
    """The processes a test started (tests/helpers/processes.start), killed at its end."""
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.kill()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request, so that SO_REUSEPORT spreads them over the workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s
