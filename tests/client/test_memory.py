"""A 1 GiB blob goes up and comes down in bounded memory (measured in a subprocess)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.helpers.servers import make_user, running_server

GIB = 1 << 30
LIMIT_KB = 100 * 1000  # 100 MB, the project's bound


async def test_one_gib_put_and_get_stay_under_100_mb(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        token = await make_user(srv.store, "alice")
        work = tmp_path / "work"
        work.mkdir()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.client.memory_probe", srv.url, token, str(work),
            str(GIB), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 600)
        assert proc.returncode == 0, err.decode()[-2000:]
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert result["dest_size"] == GIB
        info = await srv.store.index.get_blob("alice", "default", "huge")
        assert info.size == GIB + 753
        assert result["hwm_kb"] < LIMIT_KB, result
