"""`blobsync get -o`: devices and FIFOs written through, symlinks followed, existing files
replaced atomically, new files following the umask, one clear line for a missing directory,
and Ctrl-C while a FIFO waits for its reader.

Devices are our own nodes, made with mknod in tmp (the numbers of /dev/null and
/dev/full), never the real ones: should the fix regress, only the copy is replaced.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, TIMEOUT, Device, assert_one_line_error
from tests.helpers.cli_output import forge
from tests.helpers.special_files import FifoReader, char_device
from tests.helpers.terminal import fork_on_pty, read_until, reap


def put_one(device: Device, path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return device.ok("put", str(path)).split("\t")[0]


def test_get_onto_a_character_device_writes_through(ready_a: Device, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    blob_id = put_one(ready_a, tmp_path / "src.bin", data)
    null = char_device(tmp_path / "dev" / "null", 1, 3)
    doc = ready_a.json("get", blob_id, "-o", str(null))
    assert doc == {"id": blob_id, "namespace": "default", "path": str(null), "size": len(data)}
    st = os.lstat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert os.listdir(null.parent) == ["null"]
    # /dev/stdout style: a symlink to a character device is written through too.
    link = tmp_path / "dev" / "link"
    link.symlink_to(null)
    ready_a.ok("get", blob_id, "-o", str(link))
    assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)


def test_get_into_a_fifo(ready_a: Device, tmp_path: Path) -> None:
    data = os.urandom(2_500_000)
    blob_id = put_one(ready_a, tmp_path / "src.bin", data)
    reader = FifoReader(tmp_path / "out" / "fifo", tmp_path / "keep")
    try:
        proc = ready_a.run("get", blob_id, "-o", str(reader.path))
    finally:
        got = reader.stop()
    assert proc.returncode == 0, proc.stderr.decode()
    assert got == data
    assert stat.S_ISFIFO(os.lstat(reader.path).st_mode)
    assert os.listdir(reader.path.parent) == ["fifo"]


def test_a_forged_blob_never_reaches_a_fifo(ready_a: Device, tmp_path: Path) -> None:
    forge(ready_a.account, "forged", b"not sealed by this user" * 10_000)
    reader = FifoReader(tmp_path / "out" / "fifo", tmp_path / "keep")
    try:
        proc = ready_a.run("get", "forged", "-o", str(reader.path))
    finally:
        got = reader.stop()
    assert_one_line_error(proc, 5)
    assert got == b""
    assert stat.S_ISFIFO(os.lstat(reader.path).st_mode)


def test_a_missing_blob_fails_at_once_without_waiting_for_a_reader(
    ready_a: Device, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no reader: a get that opened it first would wait here forever
    assert_one_line_error(ready_a.run("get", "no-such-blob", "-o", str(fifo)), 6)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A reader that is waiting is let go (EOF) rather than left hanging.
    reader = FifoReader(tmp_path / "out" / "fifo", tmp_path / "keep")
    try:
        proc = ready_a.run("get", "no-such-blob", "-o", str(reader.path))
    finally:
        got = reader.stop()
    assert_one_line_error(proc, 6)
    assert got == b""


def test_ctrl_c_while_a_fifo_waits_for_its_reader(ready_a: Device, tmp_path: Path) -> None:
    """Under a real terminal: ^C while get -o waits for a reader is exit 130, one error
    line, and the FIFO is still a FIFO (it was never replaced)."""
    blob_id = put_one(ready_a, tmp_path / "src.bin", b"never read")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    argv = [sys.executable, "-m", "blobsync", "--home", str(ready_a.home), "get", blob_id,
            "-o", str(fifo)]
    pid, master = fork_on_pty(argv, ready_a.env(), ROOT)
    output = b""
    try:
        # The progress bar is drawn once the command is at work: get is then waiting on
        # the FIFO (it would have ended long ago had it renamed a file over it).
        output = read_until(master, b"get ", time.monotonic() + TIMEOUT)
        time.sleep(0.5)
        os.write(master, b"\x03")  # ^C, as typed
        output += read_until(master, b"interrupted", time.monotonic() + TIMEOUT)
        output += read_until(master, None, time.monotonic() + 10)
    finally:
        code = reap(pid, 10)
        os.close(master)
    text = output.decode(errors="replace")
    assert code == 130, text
    assert "blobsync: error: interrupted" in text
    assert "Traceback" not in text
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_to_a_file_is_followed(ready_a: Device, tmp_path: Path) -> None:
    blob_id = put_one(ready_a, tmp_path / "src.txt", b"through the link")
    target = tmp_path / "target.txt"
    target.write_bytes(b"old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    ready_a.ok("get", blob_id, "-o", str(link))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"through the link"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere.txt")
    line = assert_one_line_error(ready_a.run("get", blob_id, "-o", str(dangling)), 1)
    assert "dangling symlink" in line
    assert not (tmp_path / "nowhere.txt").exists()


def test_an_existing_file_is_replaced_atomically(ready_a: Device, tmp_path: Path) -> None:
    blob_id = put_one(ready_a, tmp_path / "src.txt", b"new")
    dest = tmp_path / "dest.txt"
    dest.write_bytes(b"old and longer")
    dest.chmod(0o640)
    inode = dest.stat().st_ino
    ready_a.ok("get", blob_id, "-o", str(dest))
    assert dest.read_bytes() == b"new"
    assert dest.stat().st_ino != inode  # renamed over, never half-written in place
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_a_new_file_follows_the_umask(ready_a: Device, tmp_path: Path, umask: int,
                                      mode: int) -> None:
    blob_id = put_one(ready_a, tmp_path / "src.txt", b"mode")
    dest = tmp_path / "new.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "blobsync", "--home", str(ready_a.home), "get", blob_id,
         "-o", str(dest)],
        env=ready_a.env(), capture_output=True, timeout=TIMEOUT, cwd=ROOT, umask=umask,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert stat.S_IMODE(dest.stat().st_mode) == mode


def test_a_missing_directory_is_one_clear_line(ready_a: Device, tmp_path: Path) -> None:
    blob_id = put_one(ready_a, tmp_path / "src.txt", b"x")
    dest = tmp_path / "missing" / "x.txt"
    line = assert_one_line_error(ready_a.run("get", blob_id, "-o", str(dest)), 1)
    assert line == f"blobsync: error: cannot write {dest}: no such directory: {dest.parent}"
    proc = ready_a.run("--json", "get", blob_id, "-o", str(dest))
    assert json.loads(proc.stdout)["exit_code"] == 1


def test_dash_is_stdout(ready_a: Device, tmp_path: Path) -> None:
    blob_id = put_one(ready_a, tmp_path / "src.txt", b"to stdout")
    assert ready_a.ok("get", blob_id, "-o", "-") == "to stdout"
    assert not (tmp_path / "-").exists() and not (ROOT / "-").exists()


def test_a_name_ending_in_slash_must_be_a_directory(ready_a: Device, tmp_path: Path) -> None:
    """`-o newfile/` used to create a regular file `newfile` (pathlib drops the slash);
    as cp does, a name ending in / names a directory: refused like `-o DIR`, exit 2."""
    blob_id = put_one(ready_a, tmp_path / "src.txt", b"content")
    new = tmp_path / "d" / "newfile"
    new.parent.mkdir()
    line = assert_one_line_error(ready_a.run("get", blob_id, "-o", f"{new}/"), 2)
    assert line == (f"blobsync: error: -o {new}/: not a directory (a name ending in / "
                    "must name an existing directory)")
    assert os.listdir(new.parent) == []
    # The same for a file that exists: left as it was, not replaced.
    old = tmp_path / "d" / "old.txt"
    old.write_bytes(b"old")
    assert_one_line_error(ready_a.run("get", blob_id, "-o", f"{old}/"), 2)
    assert old.read_bytes() == b"old"
    # `newfile/.` names a directory too (pathlib would drop the '.' as well).
    assert_one_line_error(ready_a.run("get", blob_id, "-o", f"{new}/."), 2)
    assert os.listdir(new.parent) == ["old.txt"]
    # An existing directory, with or without the slash: refused as before.
    for name in (str(new.parent), f"{new.parent}/"):
        line = assert_one_line_error(ready_a.run("get", blob_id, "-o", name), 2)
        assert "-o names a directory" in line
    assert os.listdir(new.parent) == ["old.txt"]
