"""The incoming box keeps to the project's memory bound."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp

from tests.helpers.client import Account
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.servers import auth_header, make_service

ROOT = Path(__file__).resolve().parents[2]
LIMIT_KB = 100 * 1000  # as test_memory.py


async def test_a_large_incoming_message_stays_within_the_memory_bound(
    devices, account: Account
) -> None:
    a = await devices("a")
    await a.close()
    service = await make_service(account.server.store)
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{account.server.local_url}/incoming/alice/mail-1",
                            data=os.urandom(70 << 20),
                            headers=auth_header("incoming", service)) as resp:
            assert resp.status == 200
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.client.incoming_memory_probe", str(a.profile.home),
        PASSPHRASE, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().splitlines()[-1])
    # processed whole, or refused as too large: either way within the bound
    assert result["processed"] + result["failed"] == 1
    assert result["peak_kb"] < LIMIT_KB, result
