"""A put run again after it was interrupted stores only what is missing (issue 10, item 4):
the local store remembers which file (path, size, mtime) each blob came from."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blobsync.client import BlobManager
from tests.helpers.cli import ROOT, TIMEOUT, Device, assert_one_line_error
from tests.helpers.cli_output import put_ids, write_big
from tests.helpers.net import free_port

SMALL = 500
# The size: a put killed while this one is sealed or on its way.
BIG = 200 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def verify_all(home: Path, expected: dict[str, str]) -> None:
    """Every blob (id -> sha256 of its file) opens on ``home`` with the right content."""
    m = await BlobManager.open(home, passphrase=Device.passphrase)
    try:
        for blob_id, digest in expected.items():
            h = hashlib.sha256()
            async for chunk in m.open_stream(blob_id):
                h.update(chunk)
            assert h.hexdigest() == digest, blob_id
    finally:
        await m.close()


def test_put_dir_killed_midway_and_run_again_stores_each_file_once(
    ready_a: Device, ready_b: Device, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(SMALL):
        (src / f"f{i:03d}.txt").write_bytes(f"small file {i}\n".encode() * (i % 7 + 1))
    big = src / "zbig.bin"  # last in put's order: the small ones are stored first
    write_big(big, BIG)

    proc = subprocess.Popen(
        [sys.executable, "-m", "blobsync", "--home", str(ready_a.home), "put", str(src)],
        env=ready_a.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first batch is stored: ids are printed
        assert b"\t" in first, (first, proc.stderr.read() if proc.stderr else b"")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(TIMEOUT)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    again = ready_a.run("put", str(src))
    assert again.returncode == 0, again.stderr.decode()
    assert ready_a.ok("ls", "--remote", "--count").strip() == str(SMALL + 1)
    assert again.stderr.decode() == f"blobsync: {SMALL} already stored, 1 stored\n"
    ids = put_ids(again.stdout.decode())
    # Every path it was asked for gets its id, stored now or before.
    assert set(ids) == {str(p) for p in src.iterdir()}
    assert len(set(ids.values())) == SMALL + 1
    assert ready_a.ok("ls", "--remote", "--count").strip() == str(SMALL + 1)

    # Once more, for scripts: nothing new, every id, the counts in the document.
    doc = ready_a.json("put", str(src))
    assert (doc["already_stored"], doc["stored"]) == (SMALL + 1, 0)
    assert {b["path"]: b["id"] for b in doc["blobs"]} == ids
    assert ready_a.ok("ls", "--remote", "--count").strip() == str(SMALL + 1)

    # A changed file is a new blob; --force stores even an unchanged one again.
    (src / "f000.txt").write_bytes(b"changed, and longer than before")
    changed = ready_a.run("put", str(src / "f000.txt"), str(src / "f001.txt"))
    assert changed.returncode == 0, changed.stderr.decode()
    assert changed.stderr.decode() == "blobsync: 1 already stored, 1 stored\n"
    new_ids = put_ids(changed.stdout.decode())
    assert new_ids[str(src / "f001.txt")] == ids[str(src / "f001.txt")]
    assert new_ids[str(src / "f000.txt")] != ids[str(src / "f000.txt")]
    forced = ready_a.run("put", "--force", str(src / "f001.txt"))
    assert forced.returncode == 0 and forced.stderr == b""
    assert put_ids(forced.stdout.decode())[str(src / "f001.txt")] != ids[str(src / "f001.txt")]
    assert ready_a.ok("ls", "--remote", "--count").strip() == str(SMALL + 3)

    # Every file round-trips through the server, on the other device.
    ready_b.ok("sync")
    expected = {blob_id: sha256(Path(path)) for path, blob_id in ids.items()
                if path != str(src / "f000.txt")}
    asyncio.run(verify_all(ready_b.home, expected))


def test_put_id_run_again_uploads_the_blob_it_stored(ready_a: Device, tmp_path: Path) -> None:
    src = tmp_path / "note.txt"
    src.write_bytes(b"stored here, the upload did not happen")
    # The server down during the first run: the blob is stored here and left pending.
    config = ready_a.home / "config.json"
    doc = json.loads(config.read_text())
    url = doc["server"]
    doc["server"] = f"http://127.0.0.1:{free_port()}"
    config.write_text(json.dumps(doc))
    assert_one_line_error(ready_a.run("put", "--id", "note", str(src)), 4)
    doc["server"] = url
    config.write_text(json.dumps(doc))
    assert "note" not in ready_a.ok("ls", "--remote").split()

    again = ready_a.run("put", "--id", "note", str(src))
    assert again.returncode == 0, again.stderr.decode()
    assert again.stdout.decode() == f"note\t{src}\n"
    assert again.stderr.decode() == "blobsync: 1 already stored, 0 stored\n"
    assert ready_a.ok("ls", "--remote").split() == ["note"]
    assert ready_a.run("get", "note").stdout == src.read_bytes()

    # Uploaded already: still fine. Another file under that id: blobs are immutable.
    assert ready_a.ok("put", "--id", "note", str(src)) == f"note\t{src}\n"
    other = tmp_path / "other.txt"
    other.write_bytes(b"another file")
    assert "already exists" in assert_one_line_error(
        ready_a.run("put", "--id", "note", str(other)), 1)
    # The same path, changed: a different blob, so the id is taken.
    time.sleep(0.01)
    src.write_bytes(b"changed since")
    assert "already exists" in assert_one_line_error(
        ready_a.run("put", "--id", "note", str(src)), 1)


def test_source_paths_stay_in_the_encrypted_store(ready_a: Device, tmp_path: Path) -> None:
    secret_name = tmp_path / "my-very-private-file-name.txt"
    secret_name.write_bytes(b"x")
    ready_a.ok("put", str(secret_name))
    for path in ready_a.home.rglob("*"):
        if path.is_file():
            assert b"my-very-private-file-name" not in path.read_bytes(), path


@pytest.mark.parametrize("with_id", [False, True], ids=["random-id", "named-id"])
def test_put_again_after_another_device_deleted_the_blob_stores_it_again(
    ready_a: Device, ready_b: Device, tmp_path: Path, with_id: bool
) -> None:
    """A file put before whose blob another device has deleted since is not 'already
    stored': put learns the deletion first, stores the file again, and the id it prints
    exists (it used to print the deleted id and exit 0, with nothing stored)."""
    src = tmp_path / "r.txt"
    src.write_bytes(b"kept by B, deleted by A")
    id_args = ("--id", "d7") if with_id else ()
    first = ready_b.ok("put", *id_args, str(src)).split("\t")[0]
    ready_a.ok("sync")
    ready_a.ok("rm", first)
    again = ready_b.run("put", *id_args, str(src))
    assert again.returncode == 0, again.stderr.decode()
    blob_id = again.stdout.decode().split("\t")[0]
    assert b"already stored" not in again.stderr
    assert blob_id in ready_b.ok("ls", "--remote").split()
    assert ready_b.run("get", blob_id).stdout == src.read_bytes()
    ready_a.ok("sync")
    assert ready_a.run("get", blob_id).stdout == src.read_bytes()
