"""`blobsync check` finds a local blob whose sealed bytes were altered on disk."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.cli import Device, assert_one_line_error
from tests.helpers.cli_output import put_ids
from tests.helpers.payloads import damage_payload, flip_byte, stored_location

# Larger than the library's in-database limit (1 MiB sealed), so the sealed blob is a file
# under home/blobs/ that the test can damage like a failing disk would.
LARGE = (1 << 20) + 4096


def sealed_files(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()]


def test_check_finds_a_corrupted_local_blob(ready_a: Device, tmp_path: Path) -> None:
    big, small = tmp_path / "big.bin", tmp_path / "small.txt"
    big.write_bytes(os.urandom(LARGE))
    small.write_bytes(b"small and fine")
    ids = put_ids(ready_a.ok("put", str(big), str(small)))
    assert ready_a.ok("check").strip() == "no problems found"
    assert ready_a.ok("check", "--remote").strip() == "no problems found"

    (stored,) = sealed_files(ready_a.home)
    damaged = bytearray(stored.read_bytes())
    damaged[-100] ^= 0x01  # one bit in the ciphertext: only the tag can tell
    stored.write_bytes(bytes(damaged))

    proc = ready_a.run("check")
    line = assert_one_line_error(proc, 5)
    assert "1 problem" in line
    report = proc.stdout.decode()
    assert ids[str(big)] in report
    assert ids[str(small)] not in report

    # get names the blob that failed, and how to learn which copy is damaged.
    line = assert_one_line_error(ready_a.run("get", ids[str(big)], "-o", str(tmp_path / "o")), 5)
    assert ids[str(big)] in line and "check --remote" in line, line
    assert not (tmp_path / "o").exists()


def test_check_remote_downloads_and_verifies_the_servers_copies(
    ready_a: Device, tmp_path: Path
) -> None:
    src = tmp_path / "r.txt"
    src.write_bytes(b"fine here, damaged on the server")
    (blob_id,) = put_ids(ready_a.ok("put", str(src))).values()
    account = ready_a.account
    location = stored_location(account.server.data, account.user, "default", blob_id)
    damage_payload(account.server.data, location, flip_byte(-1))  # the last byte of the tag

    assert ready_a.ok("check").strip() == "no problems found"  # the local copy is fine
    proc = ready_a.run("check", "--remote")
    assert_one_line_error(proc, 5)
    assert blob_id in proc.stdout.decode()
