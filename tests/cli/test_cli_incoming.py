"""`blobsync incoming process --exec CMD` against messages a real service delivered."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.cli import Device, deliver


def test_process_runs_the_command_per_message(
    ready_a: Device, incoming_token: str, tmp_path: Path
) -> None:
    messages = {f"m{i}": os.urandom(300 * (i + 1)) for i in range(3)}
    for blob_id, payload in messages.items():
        deliver(ready_a.account, incoming_token, blob_id, payload)
    assert sorted(ready_a.ok("ls", "--remote", "-n", "MX", "--flag", "PENDING").split()) == (
        sorted(messages))

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    out = ready_a.ok("incoming", "process", "--exec", f'cat > "{inbox}/$BLOBSYNC_BLOB_ID"')
    assert {p.name: p.read_bytes() for p in inbox.iterdir()} == messages
    lines = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    assert lines == {blob_id: "PROCESSED" for blob_id in messages}
    # Processed messages are deleted from the box.
    assert ready_a.ok("ls", "--remote", "-n", "MX").split() == []


def test_failing_command_flags_failed_and_limit(
    ready_a: Device, incoming_token: str, tmp_path: Path
) -> None:
    deliver(ready_a.account, incoming_token, "bad", b"cannot be handled")
    doc = ready_a.json("incoming", "process", "--exec", "cat >/dev/null; exit 7")
    assert (doc["processed"], doc["failed"]) == (0, 1)
    assert ready_a.ok("ls", "--remote", "-n", "MX", "--flag", "FAILED").split() == ["bad"]
    # A FAILED message is not taken again by the next round.
    doc = ready_a.json("incoming", "process", "--exec", "cat >/dev/null")
    assert doc["processed"] == 0

    for i in range(3):
        deliver(ready_a.account, incoming_token, f"n{i}", b"message %d" % i)
    seen = tmp_path / "seen"
    doc = ready_a.json("incoming", "process", "--limit", "2",
                       "--exec", f'cat >> "{seen}"; echo >> "{seen}"')
    assert doc["processed"] == 2
    assert len(seen.read_bytes().splitlines()) == 2
    assert len(ready_a.ok("ls", "--remote", "-n", "MX", "--flag", "PENDING").split()) == 1
