"""The CLI over the client library, run as real subprocesses against a real server
on loopback: bounded memory on a 1 GiB get to stdout, one-line errors, and what sync says
about blobs the server refused."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from blobsync.client import SyncStatus
from tests.helpers.client import Account, cli, cli_env, home_with, one_line_error

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
LIMIT_KB = 150 * 1000  # the project's memory bound, as in test_memory.py
# Runs the CLI and then reports the process's peak RSS on stderr. VmHWM, not ru_maxrss:
# the latter survives exec and would carry the (large) peak of the pytest process.
PEAK = (
    "import sys\n"
    "from pathlib import Path\n"
    "from blobsync.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "hwm = [l for l in Path('/proc/self/status').read_text().splitlines()\n"
    "       if l.startswith('VmHWM:')][0].split()[1]\n"
    "print('PEAK_KB', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


async def test_one_gib_get_to_stdout_stays_bounded(account: Account, tmp_path: Path) -> None:
    src = tmp_path / "zeros.bin"
    with open(src, "wb") as f:
        f.truncate(GIB)  # sparse: no disk, reads back as zeros
    a = await home_with(account, "a")
    try:
        await a.put("huge", src, local_only=True)
    finally:
        await a.close()
    src.unlink()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEAK, "--home", str(a.profile.home), "get", "huge",
        env=cli_env(), cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    received = 0
    nonzero = 0
    while chunk := await proc.stdout.read(1 << 20):
        received += len(chunk)
        nonzero += len(chunk.strip(b"\0")) != 0
    err = (await proc.stderr.read()).decode()
    await asyncio.wait_for(proc.wait(), 120)
    assert proc.returncode == 0, err
    assert received == GIB and nonzero == 0
    peak_kb = int(err.split("PEAK_KB")[1].split()[0])
    assert peak_kb < LIMIT_KB, err


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
