"""The CLI's failures over the client library are one line on stderr with exit 1 (a
destination directory missing, a local payload file gone, a damaged local database); a
pipe closed early ends it with 141 in silence."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.helpers.client import Account, cli, cli_env, home_with, one_line_error

ROOT = Path(__file__).resolve().parents[2]


async def test_errors_are_one_line(account: Account, tmp_path: Path) -> None:
    a = await home_with(account, "a")
    try:
        await a.put("eight", os.urandom(8 << 20), local_only=True)
        await a.put("lost", os.urandom(300_000), upload=False)
        row = await a.store.get("default", "lost")
        a.store.blob_path(row.location).unlink()  # its payload file vanished
    finally:
        await a.close()
    home = a.profile.home
    # stdout closed early (a pipe into head): exit 141, nothing on stderr
    cmd = (f"{sys.executable} -m blobsync --home {home} get eight | head -c 10 >/dev/null; "
           'echo "rc=${PIPESTATUS[0]}" >&2')
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", cmd, env=cli_env(), cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert err.decode().strip() == "rc=141"
    # a destination in a directory that does not exist
    rc, out, err_text = await cli(home, "get", "eight", "-o", str(tmp_path / "nope" / "x"))
    one_line_error(rc, err_text, 1)
    # a local payload file gone missing: get, then sync, say so in one line
    rc, out, err_text = await cli(home, "get", "lost")
    assert "missing" in one_line_error(rc, err_text, 1) and out == b""
    rc, out, err_text = await cli(home, "sync")
    assert "lost" in one_line_error(rc, err_text, 1)


async def test_damaged_local_database_is_one_line(account: Account) -> None:
    a = await home_with(account, "a")
    try:
        await a.put("x", b"data", local_only=True)
    finally:
        await a.close()
    db = a.profile.home / "local.db"
    data = bytearray(db.read_bytes())
    data[100:200] = os.urandom(100)  # first page: its HMAC fails
    db.write_bytes(bytes(data))
    rc, out, err = await cli(a.profile.home, "ls")
    one_line_error(rc, err, 1)
