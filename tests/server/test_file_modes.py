"""Everything the server writes is private to its user (issue 10 item 11a, storage side):
directories 0700, files 0600, under the usual umask 022, and an older data dir with looser
modes is tightened when a server starts on it."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from blobsync.format import encode_upstream_header
from tests.helpers.server_cli import call
from tests.helpers.subproc import ServerProcess, blobsync, cli_env, new_data_dir

from .conftest import sealed


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The umask of processes started inside (they inherit it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def loose_modes(data: Path) -> list[str]:
    """Every path below ``data`` (and itself) whose mode lets anyone else in."""
    wrong: list[str] = []
    for path in [data, *data.rglob("*")]:
        st = path.lstat()
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) != want:
            wrong.append(f"{path.relative_to(data.parent)} {oct(stat.S_IMODE(st.st_mode))}")
    return wrong


def upload_some(url: str, token: str) -> None:
    # A small blob (the payload db), a large one (a file in its shard dirs), a stream.
    for blob_id, size in (("small", 500), ("large", 600_000)):
        status, body = call("PUT", f"{url}/blobs/alice/{blob_id}", "alice", token,
                            sealed(blob_id, size))
        assert status == 200, body
    run = {f"s{i}": sealed(f"s{i}", 300) for i in range(3)}
    stream = encode_upstream_header([(b, len(d)) for b, d in run.items()])
    stream += b"".join(run.values())
    assert call("POST", f"{url}/stream/alice?direction=upload", "alice", token,
                stream)[0] == 200


def test_server_files_are_private_under_umask_022(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ("--data", str(data), "--port", "0", "--local-port", "0")
    with umask(0o022):
        new_data_dir(data)
        added = blobsync("user", "add", "alice", "--data", str(data), env=cli_env())
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip()
        server = ServerProcess(*args, "--demo")
    try:
        upload_some(server.url, token)
        server.wait_for_stdout("demo token")
        assert (data / "demo-user.txt").exists()
        assert (data / "index.sqlite3-wal").exists() and (data / "payloads.sqlite3-shm").exists()
        assert list((data / "blobs" / "alice").rglob("large"))
        assert loose_modes(data) == []  # while it runs: -wal, -shm and temp dirs too
    finally:
        assert server.terminate() == 0
    assert loose_modes(data) == []


def test_an_older_data_dir_is_tightened_at_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ("--data", str(data), "--port", "0", "--local-port", "0")
    added = blobsync("user", "add", "alice", "--data", new_data_dir(data), env=cli_env())
    token = added.stdout.strip()
    server = ServerProcess(*args, "--demo")
    try:
        upload_some(server.url, token)
        server.wait_for_stdout("demo token")
    finally:
        assert server.terminate() == 0
    # What an older blobsync left: everything readable by all.
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert len(loose_modes(data)) > 10

    with umask(0o022):
        server = ServerProcess(*args, "--demo")
    try:
        server.wait_for_log("sweep: ")  # the start-up sweep walks (and tightens) the shards
        server.wait_for_stdout("demo token")
        assert loose_modes(data) == []
        assert call("GET", f"{server.url}/blobs/alice/small", "alice", token)[0] == 200
    finally:
        assert server.terminate() == 0
    assert loose_modes(data) == []
