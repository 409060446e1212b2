"""A 1 GiB get to stdout through the CLI, run as a real subprocess against a real server
on loopback, stays within the project's memory bound (the process's own peak RSS)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.helpers.client import Account, cli_env, home_with

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
LIMIT_KB = 100 * 1000  # the project's memory bound, as in test_memory.py
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
