"""Two devices, one id, different bytes (issue 10 item 3, SPEC 7): never silent.

Two real CLI devices of one user on one real server: a 409 is SYNCED only for the same
sealed blob, another blob under the id makes `put` and `sync` exit 10, and
`check --remote` sees a divergence that came about behind the client's back.
"""

from __future__ import annotations

import json
from pathlib import Path

from blobsync.cli.failures import EXIT_ID_TAKEN, EXIT_VERIFY
from tests.helpers.cli import Device, assert_one_line_error
from tests.helpers.cli_output import move_server
from tests.helpers.net import free_port


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


def test_rm_after_an_id_conflict_forgets_here_and_leaves_the_other_blob(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    """After a conflict, the advice is `rm conflict` on B: it must never send a DELETE,
    which would remove A's blob from the server, and A's next sync would drop it too."""
    mine, _ = id_conflict(ready_a, ready_b, tmp_path)

    rm = ready_b.run("rm", "conflict")
    assert rm.returncode == 0 and rm.stdout == b""  # a notice, not a result: on stderr
    notice = rm.stderr.decode()
    assert "forgotten on this device only" in notice and "nothing was deleted" in notice
    status = ready_b.json("status")
    assert isinstance(status, dict) and status["statuses"]["FAILED_UPLOAD"] == 0

    ready_b.ok("sync")
    ready_a.ok("sync")
    assert ready_a.run("get", "conflict").stdout == mine.read_bytes()
    assert "conflict" in ready_a.ok("ls", "--remote")
    assert ready_b.run("get", "conflict").stdout == mine.read_bytes()  # B sees A's blob now


def test_rm_of_a_queued_put_never_deletes_another_devices_blob(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    """B puts and removes offline (a PENDING_UPLOAD, then a queued delete); meanwhile A put
    another blob under that id. B's next sync must not delete A's blob."""
    mine, theirs = tmp_path / "a.txt", tmp_path / "b.txt"
    mine.write_bytes(b"device A wrote this")
    theirs.write_bytes(b"device B wrote this offline")
    url = move_server(ready_b, f"http://127.0.0.1:{free_port()}")
    assert ready_b.run("put", "--id", "conflict", str(theirs)).returncode == 4
    assert ready_b.run("rm", "conflict").returncode == 4  # queued
    ready_a.ok("put", "--id", "conflict", str(mine))
    move_server(ready_b, url)

    ready_b.ok("sync")
    status = ready_b.json("status")
    assert isinstance(status, dict) and status["statuses"]["PENDING_DELETE"] == 0
    ready_a.ok("sync")
    assert ready_a.run("get", "conflict").stdout == mine.read_bytes()


def test_rm_of_a_queued_put_deletes_it_once_it_is_there(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    """The other way round: B's own blob did reach the server; its queued delete goes."""
    src = tmp_path / "b.txt"
    src.write_bytes(b"device B wrote this")
    ready_b.ok("put", "--id", "mine", str(src))
    url = move_server(ready_b, f"http://127.0.0.1:{free_port()}")
    assert ready_b.run("rm", "mine").returncode == 4  # SYNCED: queued as ever
    move_server(ready_b, url)
    ready_b.ok("sync")
    assert "mine" not in ready_a.ok("ls", "--remote")


def id_conflict(ready_a: Device, ready_b: Device, tmp_path: Path) -> tuple[Path, Path]:
    """A's file under the id "conflict" on the server; B's put of other bytes under it is
    refused (exit 10). Returns (A's file, B's file)."""
    mine, theirs = tmp_path / "a.txt", tmp_path / "b.txt"
    mine.write_bytes(b"device A wrote this")
    theirs.write_bytes(b"device B wrote something else")
    ready_a.ok("put", "--id", "conflict", str(mine))
    assert_one_line_error(ready_b.run("put", "--id", "conflict", str(theirs)), EXIT_ID_TAKEN)
    return mine, theirs


def test_put_run_again_after_an_id_conflict_tries_again_and_exits_10(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    mine, theirs = id_conflict(ready_a, ready_b, tmp_path)

    proc = ready_b.run("--json", "put", "--id", "conflict", str(theirs))
    line = assert_one_line_error(proc, EXIT_ID_TAKEN)
    assert "id conflict is taken by another blob on the server" in line
    doc = json.loads(proc.stdout)
    assert (doc["taken"], doc["refused"], doc["pending"]) == (["conflict"], [], [])
    assert doc["already_stored"] == 1
    assert ready_a.run("get", "conflict").stdout == mine.read_bytes()  # untouched


def test_rm_of_a_conflicted_blob_says_local_only_in_json(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    id_conflict(ready_a, ready_b, tmp_path)
    assert ready_b.json("rm", "conflict") == {
        "id": "conflict", "namespace": "default", "deleted": True, "queued": False,
        "local_only": True}
    assert "conflict" in ready_a.ok("ls", "--remote")
