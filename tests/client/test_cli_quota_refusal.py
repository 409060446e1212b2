"""What sync says, through the CLI, about blobs the server refused for the quota."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from blobsync.client import SyncStatus
from tests.helpers.client import Account, cli, cli_env, one_line_error

ROOT = Path(__file__).resolve().parents[2]


async def test_sync_after_a_quota_refusal(account: Account, tmp_path: Path) -> None:
    home = tmp_path / "home-cli"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blobsync", "--home", str(home), "init", "--server",
        account.server.url, "--user", account.user, "--token", account.token,
        env=cli_env(), cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    store = account.server.store
    usage = await store.index.usage(account.user)
    store.quota = usage + 50_000
    src = tmp_path / "report.pdf"
    src.write_bytes(os.urandom(100_000))
    rc, out, err_text = await cli(home, "put", "--id", "report", str(src))
    assert "'blobsync sync' will retry" in one_line_error(rc, err_text, 1)
    rc, out, _ = await cli(home, "--json", "status")
    assert json.loads(out)["statuses"][SyncStatus.FAILED_UPLOAD.value] == 1
    store.quota = 0  # space was freed
    rc, out, err_text = await cli(home, "sync")
    rc_ls, listed, _ = await cli(home, "ls", "--remote")
    # Either sync sent it, as put promised, or it did not claim success.
    assert "report" in listed.decode().split() or rc != 0
