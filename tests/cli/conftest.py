"""Fixtures of the CLI tests: one real server on loopback for the session, a user of its
own for each test, and devices A and B of that user (tests/helpers/cli.py has the parts).

Each test gets its own user, so tests share one server without sharing blobs.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import Account, Device, Server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def account(server: Server) -> Account:
    user = "u" + uuidlib.uuid4().hex
    return Account(server, user, server.add_user(user))


@pytest.fixture
def device_a(tmp_path: Path, account: Account) -> Device:
    return Device(tmp_path / "device-a", account)


@pytest.fixture
def device_b(tmp_path: Path, account: Account) -> Device:
    return Device(tmp_path / "device-b", account)


@pytest.fixture
def ready_a(device_a: Device) -> Device:
    proc = device_a.init()
    assert proc.returncode == 0, proc.stderr.decode()
    return device_a


@pytest.fixture
def ready_b(ready_a: Device, device_b: Device) -> Device:
    """Device B of the same user, with the secret recovered from the server."""
    proc = device_b.init("--recover")
    assert proc.returncode == 0, proc.stderr.decode()
    return device_b


@pytest.fixture(scope="session")
def incoming_token(server: Server) -> str:
    """The token of the server's ``incoming`` service (a mail exchanger, say)."""
    return server.add_service("incoming")
