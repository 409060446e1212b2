"""pytest fixtures around tests/helpers/servers.py; import them in a conftest::

    from tests.helpers.fixtures import server  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.servers import RunningServer, running_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A fresh server (SQLite + files under tmp_path/srv) for one test."""
    async with running_server(tmp_path) as srv:
        yield srv
