"""The error contract: one line on stderr, a distinct exit code, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.cli import Device, assert_one_line_error, blobsync
from tests.helpers.cli_output import forge
from tests.helpers.net import free_port


def test_init_errors(device_a: Device) -> None:
    assert_one_line_error(device_a.init(server="127.0.0.1:2424"), 2)  # not a URL
    assert_one_line_error(device_a.init(server=f"http://127.0.0.1:{free_port()}"), 4)
    assert_one_line_error(device_a.init(token="not-the-token"), 3)
    # The failed attempts left nothing in the way of a good one...
    assert device_a.init().returncode == 0
    # ...and a second init does not overwrite the profile.
    assert "exists" in assert_one_line_error(device_a.init(), 1)


def test_server_gone_after_init(ready_a: Device, tmp_path: Path) -> None:
    config = ready_a.home / "config.json"
    doc = json.loads(config.read_text())
    doc["server"] = f"http://127.0.0.1:{free_port()}"  # the server moved away
    config.write_text(json.dumps(doc))
    assert_one_line_error(ready_a.run("ls", "--remote"), 4)
    assert_one_line_error(ready_a.run("sync"), 4)
    src = tmp_path / "kept.txt"
    src.write_bytes(b"kept locally until the server is back")
    proc = ready_a.run("put", str(src))
    assert_one_line_error(proc, 4)
    # The blob is stored here, its id was printed, and it waits for the next sync.
    (blob_id, path), = (line.split("\t") for line in proc.stdout.decode().splitlines())
    assert path == str(src)
    assert ready_a.run("get", blob_id).stdout == src.read_bytes()
    assert ready_a.json("status")["statuses"]["PENDING_UPLOAD"] == 1


def test_no_profile(tmp_path: Path) -> None:
    proc = blobsync("--home", str(tmp_path / "nothing-here"), "ls")
    assert "init" in assert_one_line_error(proc, 1)


def test_verification_failure_writes_nothing(ready_a: Device, tmp_path: Path) -> None:
    forge(ready_a.account, "forged", b"not sealed by this user" * 100)
    out = tmp_path / "out.bin"
    assert_one_line_error(ready_a.run("get", "forged", "-o", str(out)), 5)
    assert not out.exists()
    assert list(tmp_path.glob("*out.bin*")) == []  # no temporary left beside it either
    proc = ready_a.run("get", "forged")
    assert_one_line_error(proc, 5)
    assert proc.stdout == b""
    # The bad blob was not kept as good data.
    assert "forged" not in ready_a.ok("ls").split()
    # sync retries it a few times, then gives it up: FAILED_DOWNLOAD, and exit 1.
    assert "forged" in assert_one_line_error(ready_a.run("sync"), 1)
    assert ready_a.json("status")["statuses"]["FAILED_DOWNLOAD"] == 1
    assert_one_line_error(ready_a.run("check"), 5)


def test_wrong_passphrase_and_unknown_blobs(ready_a: Device, tmp_path: Path) -> None:
    proc = ready_a.run("ls", passphrase="wrong passphrase")
    assert "passphrase" in assert_one_line_error(proc, 3).lower()
    assert proc.stdout == b""
    # Without BLOBSYNC_PASSPHRASE and without a terminal, the passphrase is read from stdin.
    env = ready_a.env()
    del env["BLOBSYNC_PASSPHRASE"]
    home = ("--home", str(ready_a.home))
    assert_one_line_error(blobsync(*home, "ls", env=env, input=b"wrong\n"), 3)
    assert_one_line_error(blobsync(*home, "ls", env=env, input=b""), 2)
    proc = blobsync(*home, "ls", env=env, input=ready_a.passphrase.encode() + b"\n")
    assert proc.returncode == 0 and proc.stderr == b""

    assert_one_line_error(ready_a.run("get", "no-such-blob"), 6)
    assert_one_line_error(ready_a.run("get", "no-such-blob", "-o", str(tmp_path / "o")), 6)
    assert not (tmp_path / "o").exists()
    assert_one_line_error(ready_a.run("flags", "no-such-blob"), 6)
    proc = ready_a.run("--json", "get", "no-such-blob")
    assert_one_line_error(proc, 6)
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 6 and doc["error"]
