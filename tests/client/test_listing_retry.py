"""The listing that starts `sync` and `put` is retried on a 5xx within --max-wait, and a
`put` to a server that cannot be reached says where the files are (issue 10 follow-up).

A real server behind a loopback relay that answers the first listings itself with 503;
the CLI runs as real processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.helpers.client import Account, cli, home_with, one_line_error
from tests.helpers.net import free_port
from tests.helpers.relay import relay_to

BODY = b'{"error": "down"}'
UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + BODY
)


def first_listings_down(user: str, n: int) -> tuple[Callable[[bytes], bytes | None], list[int]]:
    """A relay hook answering 503 to the first ``n`` listings (or change feed reads, which
    start a sync once the device has a cursor: SPEC 8); and how many it answered."""
    answered = [0]
    starts = (f"GET /blobs/{user}?".encode(), f"GET /changes/{user}?".encode())

    def answer(head: bytes) -> bytes | None:
        if head.startswith(starts) and answered[0] < n:
            answered[0] += 1
            return UNAVAILABLE
        return None

    return answer, answered


def point_at(home: Path, url: str) -> None:
    config = home / "config.json"
    doc = json.loads(config.read_text())
    doc["server"] = url
    config.write_text(json.dumps(doc))


async def test_sync_and_put_retry_a_listing_answered_with_503(
    account: Account, tmp_path: Path
) -> None:
    a = await home_with(account, "a")
    home = a.profile.home
    await a.put("there", b"on the server already")
    await a.close()
    src = tmp_path / "new.txt"
    src.write_bytes(os.urandom(1000))
    async with relay_to(account.server.url) as relay:
        point_at(home, relay.url)
        relay.answer, answered = first_listings_down(account.user, 3)
        rc, out, err = await cli(home, "put", "--max-wait", "5", "--id", "new", str(src))
        assert rc == 0, err
        assert answered[0] == 3  # refused three times, then listed

        relay.answer, answered = first_listings_down(account.user, 3)
        rc, out, err = await cli(home, "--json", "sync", "--max-wait", "25")
        assert rc == 0, err
        assert answered[0] == 3

        # Down for longer than --max-wait allows: given up, with the server's reason.
        relay.answer, answered = first_listings_down(account.user, 10_000)
        rc, out, err = await cli(home, "sync", "--max-wait", "0.5")
        assert "HTTP 503" in one_line_error(rc, err, 1)
        assert answered[0] > 1  # retried before giving up
    point_at(home, account.server.url)
    rc, listed, _ = await cli(home, "ls", "--remote")
    assert sorted(listed.decode().split()) == ["new", "there"]


async def test_put_to_an_unreachable_server_says_the_files_wait_for_sync(
    account: Account, tmp_path: Path
) -> None:
    a = await home_with(account, "a")
    home = a.profile.home
    await a.close()
    url = json.loads((home / "config.json").read_text())["server"]
    point_at(home, f"http://127.0.0.1:{free_port()}")
    src = tmp_path / "offline.txt"
    src.write_bytes(b"written while the server was away")
    rc, out, err = await cli(home, "put", "--id", "offline", str(src))
    line = one_line_error(rc, err, 4)
    assert "1 of 1 blobs are stored here" in line
    assert "will go up at the next 'blobsync sync'" in line
    assert out.decode() == f"offline\t{src}\n"
    point_at(home, url)
    rc, out, err = await cli(home, "sync")
    assert rc == 0, err
    rc, listed, _ = await cli(home, "ls", "--remote")
    assert listed.decode().split() == ["offline"]
