"""Two devices, one id, different bytes (issue 10 item 3, SPEC 7): never silent.

Two real CLI devices of one user on one real server: a 409 is SYNCED only for the same
sealed blob, another blob under the id makes `put` and `sync` exit 10, and
`check --remote` sees a divergence that came about behind the client's back.
"""

from __future__ import annotations

import json
from pathlib import Path

from blobsync.cli.failures import EXIT_ID_TAKEN, EXIT_VERIFY

from .conftest import Device, assert_one_line_error


def test_put_of_a_taken_id_exits_10_and_stays_failed(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    mine, theirs = tmp_path / "a.txt", tmp_path / "c.txt"
    mine.write_bytes(b"device A wrote this")
    theirs.write_bytes(b"device C wrote something else")
    ready_a.ok("put", "--id", "conflict", str(mine))

    proc = ready_b.run("put", "--id", "conflict", str(theirs))  # C has no local copy
    line = assert_one_line_error(proc, EXIT_ID_TAKEN)
    assert "id conflict is taken by another blob on the server" in line
    assert "conflict" in proc.stdout.decode()  # stored here, and said so on stdout

    status = ready_b.json("status")
    assert isinstance(status, dict) and status["statuses"]["FAILED_UPLOAD"] == 1
    # The server's blob is untouched: A's bytes, on both devices' get of the server copy.
    assert ready_a.run("get", "conflict").stdout == mine.read_bytes()
    proc = ready_b.run("check", "--remote")
    assert_one_line_error(proc, EXIT_VERIFY)
    assert "conflict: FAILED_UPLOAD" in proc.stdout.decode()

    # sync tries it again only when asked, and says why it failed: exit 10 again.
    proc = ready_b.run("--json", "sync", "--retry-failed")
    line = assert_one_line_error(proc, EXIT_ID_TAKEN)
    assert "id conflict is taken by another blob on the server" in line
    doc = json.loads(proc.stdout)
    assert doc["failed"] == ["conflict"]


def test_put_of_the_same_id_on_two_devices_after_a_delete_is_seen_by_check_remote(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    """The server's blob was replaced behind A's back (C deleted it and put another under
    the same id): A's copy still verifies, the server's too, yet they differ. Only the
    tags tell, and check --remote compares them."""
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_bytes(b"the first blob under this id")
    second.write_bytes(b"another blob under the same id")
    ready_a.ok("put", "--id", "shared", str(first))
    assert ready_a.ok("check", "--remote").strip() == "no problems found"
    ready_b.ok("rm", "shared")
    ready_b.ok("put", "--id", "shared", str(second))

    assert ready_a.ok("check").strip() == "no problems found"  # A's copy is fine
    proc = ready_a.run("check", "--remote")
    assert_one_line_error(proc, EXIT_VERIFY)
    report = proc.stdout.decode()
    assert "default/shared: the server's copy is another blob under the same id" in report
