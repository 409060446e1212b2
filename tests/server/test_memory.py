"""Bounded memory: a 1 GiB PUT and a 1 GiB GET keep the server process under 100 MB.

The server runs as a subprocess so that its peak resident set (VmHWM in /proc) is its own;
the client generates the body on the fly and reads the answer chunk by chunk, so neither
side ever holds the blob.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from blobsync.format import Sealer
from blobsync.format.limits import CHUNK_SIZE
from tests.helpers.server_cli import add_user
from tests.helpers.servers import auth_header
from tests.helpers.subproc import ServerProcess

from .conftest import SECRET

SIZE = 1 << 30
LIMIT_KIB = 100 * 1000  # 100 MB, the project's bound


@pytest.mark.memory
async def test_one_gib_put_and_get_stay_under_100_mb(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await asyncio.to_thread(add_user, data, "alice", "tok")
    server = await asyncio.to_thread(
        ServerProcess, "--data", str(data), "--port", "0", "--local-port", "0"
    )
    try:
        head = Sealer(SECRET, "huge", SIZE).start()
        total = SIZE
        filler = bytes(CHUNK_SIZE)

        async def body() -> AsyncIterator[bytes]:
            # The head must be real for the server to accept the blob; what follows it is
            # never decrypted by the server, so zeros stand in for ciphertext.
            yield head
            left = total - len(head)
            while left:
                piece = filler if left >= len(filler) else filler[:left]
                left -= len(piece)
                yield piece

        url = f"{server.url}/blobs/alice/huge"
        headers = {**auth_header("alice", "tok"), "Content-Length": str(total)}
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.put(url, data=body(), headers=headers) as r:
                assert r.status == 200, await r.text()
            after_put = server.vm_hwm_kib()
            received = bytearray()  # the head, then only a count: zeros are checked in place
            zeros = 0
            async with s.get(url, headers=auth_header("alice", "tok")) as r:
                assert r.status == 200
                async for chunk in r.content.iter_chunked(1 << 20):
                    if len(received) < len(head):
                        take = len(head) - len(received)
                        received += chunk[:take]
                        chunk = chunk[take:]
                    zeros += chunk.count(0)
        assert bytes(received) == head
        assert zeros == total - len(head)
        peak = server.vm_hwm_kib()
        print(f"server peak: {after_put} KiB after PUT, {peak} KiB after GET")
        assert after_put < LIMIT_KIB, f"PUT peak {after_put} KiB"
        assert peak < LIMIT_KIB, f"GET peak {peak} KiB"
    finally:
        server.kill()
        await asyncio.to_thread(shutil.rmtree, data, True)
