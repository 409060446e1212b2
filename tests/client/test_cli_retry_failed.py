"""`blobsync sync` and blobs the server refused: exit 1 until `--retry-failed` sends them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers.client import Account, cli, home_with, one_line_error


async def over_quota(account: Account, tmp_path: Path) -> tuple[Path, Path]:
    """A profile, and a 100 kB file that the server's quota (50 kB of room) will refuse."""
    a = await home_with(account, "a")
    home = a.profile.home
    await a.close()
    store = account.server.store
    store.quota = await store.index.usage(account.user) + 50_000
    src = tmp_path / "report.pdf"
    src.write_bytes(os.urandom(100_000))
    return home, src


async def test_sync_names_and_retries_refused_blobs(account: Account, tmp_path: Path) -> None:
    home, src = await over_quota(account, tmp_path)
    store = account.server.store
    rc, _, err = await cli(home, "put", "--id", "report", str(src))
    assert "--retry-failed" in one_line_error(rc, err, 1)
    store.quota = 0  # space was freed
    rc, out, err = await cli(home, "--json", "sync")
    line = one_line_error(rc, err, 1)
    assert "report" in line and "--retry-failed" in line
    doc = json.loads(out)
    assert doc["still_failed"] == ["report"] and doc["failed"] == [] and doc["retried"] == 0
    rc, out, err = await cli(home, "--json", "sync", "--retry-failed")
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["retried"], doc["uploaded"], doc["still_failed"]) == (1, 1, [])
    rc, listed, _ = await cli(home, "ls", "--remote")
    assert listed.decode().split() == ["report"]
    rc, out, err = await cli(home, "sync")
    assert rc == 0, err


async def test_put_run_again_sends_a_refused_blob_again(
    account: Account, tmp_path: Path
) -> None:
    """`put` of the same file again retries its FAILED_UPLOAD blob: refused again while
    over quota (exit 1, named in the JSON's "refused"), uploaded once there is room."""
    home, src = await over_quota(account, tmp_path)
    store = account.server.store
    rc, _, err = await cli(home, "put", "--id", "report", str(src))
    one_line_error(rc, err, 1)
    rc, out, err = await cli(home, "--json", "put", "--id", "report", str(src))
    assert "refused by the server: quota or size" in one_line_error(rc, err, 1)
    doc = json.loads(out)
    assert (doc["refused"], doc["taken"], doc["pending"]) == (["report"], [], [])
    store.quota = 0  # space was freed
    rc, out, err = await cli(home, "--json", "put", "--id", "report", str(src))
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["uploaded"], doc["already_stored"], doc["refused"]) == (1, 1, [])
    rc, listed, _ = await cli(home, "ls", "--remote")
    assert listed.decode().split() == ["report"]
