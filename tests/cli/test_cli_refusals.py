"""Issue 14, failures in the middle: `put --fail-fast` stops at the first entry it cannot
store (the skipping of tests/cli/test_cli_put_skips.py is the default), and a refusal
names the limit the server said was hit: the user's quota (507) or the maximum blob size
(413), with the server's sizes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import Device, Server, assert_one_line_error


def test_fail_fast_stops_at_the_first_skip_storing_nothing(ready_a: Device,
                                                           tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"a")
    os.mkfifo(tree / "b-fifo")
    (tree / "c.txt").write_bytes(b"c")
    proc = ready_a.run("put", "--fail-fast", str(tree))
    line = assert_one_line_error(proc, 1)
    assert f"cannot store {tree / 'b-fifo'}: FIFO" in line and "nothing was stored" in line
    assert proc.stdout == b""
    assert ready_a.ok("ls") == ""
    proc = ready_a.run("put", str(tree))  # without it: skipped, the rest stored, exit 7
    assert proc.returncode == 7
    assert len(proc.stdout.splitlines()) == 2


@pytest.fixture
def limits(server: Server) -> Iterator[object]:
    """The shared server's store, its quota and size limit put back after the test."""
    store = server._running.store
    quota, max_size = store.quota, store.max_blob_size
    try:
        yield store
    finally:
        store.quota, store.max_blob_size = quota, max_size


def test_over_quota_says_the_quota(ready_a: Device, server: Server, limits: object,
                                   tmp_path: Path) -> None:
    store = limits
    usage = server._call(store.index.usage(ready_a.account.user))  # type: ignore[attr-defined]
    store.quota = usage + 50_000  # type: ignore[attr-defined]
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(100_000))
    proc = ready_a.run("put", "--id", "big", str(src))
    line = assert_one_line_error(proc, 1)
    assert "refused by the server: quota or size (1 over the user's quota: storing" in line
    assert f"would pass the quota of {usage + 50_000} bytes" in line
    assert "maximum blob size" not in line
    # sync names it too, when it tries again.
    proc = ready_a.run("--json", "sync", "--retry-failed")
    line = assert_one_line_error(proc, 1)
    assert "big" in line and "over the user's quota" in line
    assert json.loads(proc.stdout)["failed"] == ["big"]


def test_over_the_size_limit_says_the_size(ready_a: Device, limits: object,
                                           tmp_path: Path) -> None:
    limits.max_blob_size = 60_000  # type: ignore[attr-defined]
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(1000))
    big.write_bytes(os.urandom(100_000))
    proc = ready_a.run("put", "--no-stream", str(small), str(big))
    line = assert_one_line_error(proc, 1)
    assert "1 over the maximum blob size: blob of" in line
    assert "-byte limit" in line and "quota:" not in line
    assert len(proc.stdout.splitlines()) == 2  # both ids, stored here
