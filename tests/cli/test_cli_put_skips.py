"""`put DIR` says what it does not store: FIFOs, sockets, dangling symlinks, symlinks to
directories (never followed: a link to a parent would loop) and files it may not read get
one `blobsync: skipped PATH: REASON` line each, the rest is stored, and the exit code is 7
(incomplete) when nothing else failed. They used to be left out silently, with exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, TIMEOUT, Device, assert_one_line_error
from tests.helpers.net import free_port


def put_ids(stdout: bytes) -> dict[str, str]:
    return {path: blob_id for blob_id, path in
            (line.split("\t") for line in stdout.decode().splitlines())}


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[Path]:
    """A directory of every kind of entry; the socket is bound for the test's length."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "file.txt").write_bytes(b"a regular file")
    (tree / "sub" / "inner.txt").write_bytes(b"one level down")
    os.mkfifo(tree / "fifo")
    (tree / "dangling").symlink_to(tmp_path / "nowhere")
    (tree / "to-file").symlink_to(tree / "file.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "not-mine.txt").write_bytes(b"behind a directory link")
    (tree / "to-dir").symlink_to(elsewhere)
    (tree / "sub" / "up").symlink_to(tree)  # a loop, were links followed
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(tree)  # a relative name: AF_UNIX paths are short
    try:
        sock.bind("sock")
    finally:
        os.chdir(cwd)
    try:
        yield tree
    finally:
        sock.close()


def test_put_dir_reports_what_it_skips_and_exits_7(ready_a: Device, mixed: Path) -> None:
    proc = ready_a.run("put", str(mixed))
    err = proc.stderr.decode()
    assert proc.returncode == 7, err
    assert "Traceback" not in err
    ids = put_ids(proc.stdout)
    stored = {mixed / "file.txt", mixed / "to-file", mixed / "sub" / "inner.txt"}
    assert set(ids) == {str(p) for p in stored}
    lines = err.splitlines()
    assert lines[:-1] == [
        f"blobsync: skipped {mixed / 'dangling'}: dangling symlink",
        f"blobsync: skipped {mixed / 'fifo'}: FIFO",
        f"blobsync: skipped {mixed / 'sock'}: socket",
        f"blobsync: skipped {mixed / 'to-dir'}: symlink to a directory, not followed",
        f"blobsync: skipped {mixed / 'sub' / 'up'}: symlink to a directory, not followed",
    ]
    assert lines[-1] == ("blobsync: error: incomplete: 5 entries skipped (not a regular "
                         "file, or unreadable), 3 files stored")
    # What was stored is stored and uploaded: only the skipped entries are missing.
    assert sorted(ready_a.ok("ls", "--remote").split()) == sorted(ids.values())
    assert ready_a.run("get", ids[str(mixed / "to-file")]).stdout == b"a regular file"


def test_put_dir_json_lists_the_skipped_entries(ready_a: Device, mixed: Path) -> None:
    proc = ready_a.run("--json", "put", str(mixed))
    line = assert_one_line_error(proc, 7)  # stderr: only the error; the list is in JSON
    assert "incomplete" in line
    doc = json.loads(proc.stdout)
    assert {b["path"] for b in doc["blobs"]} == {
        str(mixed / "file.txt"), str(mixed / "to-file"), str(mixed / "sub" / "inner.txt")}
    assert doc["skipped"] == [
        {"path": str(mixed / "dangling"), "reason": "dangling symlink"},
        {"path": str(mixed / "fifo"), "reason": "FIFO"},
        {"path": str(mixed / "sock"), "reason": "socket"},
        {"path": str(mixed / "to-dir"), "reason": "symlink to a directory, not followed"},
        {"path": str(mixed / "sub" / "up"), "reason": "symlink to a directory, not followed"},
    ]
    assert doc["stored"] == 3 and doc["uploaded"] == 3


def test_put_dir_of_regular_files_exits_0_and_counts_uploads_once(ready_a: Device,
                                                                 tmp_path: Path) -> None:
    tree = tmp_path / "plain"
    tree.mkdir()
    for name in "abc":
        (tree / name).write_bytes(name.encode())
    doc = ready_a.json("put", str(tree))
    assert doc["skipped"] == [] and doc["stored"] == 3
    # Counted once (the final upload pass used to add the streamed batches again: 6).
    assert doc["uploaded"] == 3


def test_a_fifo_named_on_the_command_line_is_skipped(ready_a: Device, tmp_path: Path) -> None:
    """Named explicitly, a FIFO is skipped like one found in a directory (it used to fail
    the whole command with exit 1); a missing path still fails at once with exit 1."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    src = tmp_path / "src.txt"
    src.write_bytes(b"stored")
    proc = ready_a.run("put", str(fifo), str(src))
    assert proc.returncode == 7, proc.stderr.decode()
    assert set(put_ids(proc.stdout)) == {str(src)}
    assert proc.stderr.decode().splitlines()[0] == f"blobsync: skipped {fifo}: FIFO"
    assert_one_line_error(ready_a.run("put", str(src), str(tmp_path / "nope")), 1)


def test_many_skips_are_counted_after_20(ready_a: Device, tmp_path: Path) -> None:
    tree = tmp_path / "fifos"
    tree.mkdir()
    for n in range(25):
        os.mkfifo(tree / f"f{n:02}")
    (tree / "real").write_bytes(b"real")
    proc = ready_a.run("put", str(tree))
    assert proc.returncode == 7, proc.stderr.decode()
    lines = proc.stderr.decode().splitlines()
    assert lines[:20] == [f"blobsync: skipped {tree / f'f{n:02}'}: FIFO" for n in range(20)]
    assert lines[20] == "blobsync: skipped 5 more (--json lists them all)"
    assert lines[21].startswith("blobsync: error: incomplete: 25 entries skipped")
    assert len(lines) == 22
    assert set(put_ids(proc.stdout)) == {str(tree / "real")}


def test_other_failures_keep_their_code(ready_a: Device, mixed: Path) -> None:
    """Skips and an unreachable server: exit 4, not 7 (the skips are still said)."""
    config = ready_a.home / "config.json"
    doc = json.loads(config.read_text())
    doc["server"] = f"http://127.0.0.1:{free_port()}"
    config.write_text(json.dumps(doc))
    proc = ready_a.run("put", str(mixed))
    err = proc.stderr.decode()
    assert proc.returncode == 4, err
    assert f"blobsync: skipped {mixed / 'fifo'}: FIFO" in err.splitlines()
    assert err.splitlines()[-1].startswith("blobsync: error: ")
    assert len(put_ids(proc.stdout)) == 3


def test_an_unreadable_file_is_skipped(ready_a: Device, tmp_path: Path) -> None:
    """A file put may not read is said (permission denied) and skipped; it used to stop
    the command halfway. Root reads any file, so as root the child runs without
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv), as an ordinary user would."""
    tree = tmp_path / "perms"
    tree.mkdir()
    (tree / "a-open.txt").write_bytes(b"readable")
    secret = tree / "b-secret.txt"
    secret.write_bytes(b"not for put")
    secret.chmod(0)
    closed = tree / "c-closed"
    closed.mkdir()
    (closed / "x").write_bytes(b"x")
    closed.chmod(0)
    argv = [sys.executable, "-m", "blobsync", "--home", str(ready_a.home), "put", str(tree)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("as root, dropping CAP_DAC_OVERRIDE needs setpriv (util-linux)")
        argv = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
                "--", *argv]
    try:
        proc = subprocess.run(argv, env=ready_a.env(), capture_output=True, timeout=TIMEOUT,
                              cwd=ROOT, start_new_session=True)
    finally:
        closed.chmod(0o700)
    err = proc.stderr.decode()
    assert proc.returncode == 7, err
    assert set(put_ids(proc.stdout)) == {str(tree / "a-open.txt")}
    assert err.splitlines()[:-1] == [
        f"blobsync: skipped {secret}: permission denied",
        f"blobsync: skipped {closed}: permission denied",
    ]
