"""A typo in ``--data`` must not make a new store: every command but ``server`` (and
``admin import-soledad``, which fills new stores) refuses a data dir the server has not
made, with one line and exit 1. Real processes, as an operator runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.server_cli import ok_token
from tests.helpers.subproc import ServerProcess, blobsync, cli_env, new_data_dir

# Every command that opens the store of a data dir, but the server.
COMMANDS = [
    ["user", "add", "alice"],
    ["user", "list"],
    ["user", "remove", "alice"],
    ["user", "token", "alice"],
    ["service", "add", "incoming"],
    ["service", "list"],
    ["service", "remove", "incoming"],
    ["admin", "gc"],
]


def refused(data: Path | str) -> str:
    return (f"blobsync: error: no blobsync data directory at {data} "
            f"(start the server once with --data {data} to create it)\n")


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_missing_data_dir_is_refused_not_created(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "nonexistent-data"
    proc = blobsync(*args, "--data", str(data))
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", refused(data))
    assert not data.exists()


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_directory_without_a_store_is_refused(tmp_path: Path, args: list[str]) -> None:
    # /tmp, a home directory, a mount point made for a server not started yet.
    data = tmp_path / "typo"
    data.mkdir()
    (data / "notes.txt").write_text("not a store\n")
    proc = blobsync(*args, "--data", str(data))
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", refused(data))
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt"]


def test_the_data_dir_from_the_environment_and_the_default_are_checked(tmp_path: Path) -> None:
    data = tmp_path / "from-env"
    proc = blobsync("user", "add", "alice", env=cli_env(BLOBSYNC_DATA=str(data)))
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", refused(data))
    proc = blobsync("service", "add", "incoming", cwd=tmp_path)  # ./blobsync-data
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", refused("./blobsync-data"))
    assert sorted(tmp_path.iterdir()) == []


def test_the_commands_work_once_a_server_has_made_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess("--data", str(data), "--port", "0", "--local-port", "0")
    assert server.terminate() == 0
    ok_token(blobsync("user", "add", "alice", "--data", str(data)))
    ok_token(blobsync("service", "add", "incoming", "--data", str(data)))
    assert blobsync("user", "list", "--data", str(data)).stdout == "alice\n"
    gc = blobsync("admin", "gc", "--data", str(data))
    assert (gc.returncode, gc.stdout) == (0, "0\n0\n"), gc.stderr  # payloads, changes


def test_import_soledad_may_make_a_new_data_dir(tmp_path: Path) -> None:
    # Importing is how a new store is first filled: the one command besides the server
    # that makes its data dir. Users are added afterwards.
    soledad = tmp_path / "soledad"
    soledad.mkdir()
    data = tmp_path / "new-data"
    run = blobsync("admin", "import-soledad", str(soledad), "--data", str(data))
    assert run.returncode == 0, run.stderr
    assert (data / "index.sqlite3").is_file()
    ok_token(blobsync("user", "add", "alice", "--data", str(data)))


def test_a_postgresql_index_needs_no_data_dir(tmp_path: Path, postgres_db: str) -> None:
    data = tmp_path / "never-made"
    ok_token(blobsync("user", "add", "alice", "--data", str(data), "--metadata", postgres_db))
    ok_token(blobsync("service", "add", "incoming", "--metadata", postgres_db, cwd=tmp_path))
    listed = blobsync("user", "list", "--data", str(data), "--metadata", postgres_db)
    assert (listed.returncode, listed.stdout) == (0, "alice\n"), listed.stderr
    assert not data.exists() and not (tmp_path / "blobsync-data").exists()


def test_new_data_dir_helper_makes_what_the_commands_accept(tmp_path: Path) -> None:
    data = new_data_dir(tmp_path / "d")
    ok_token(blobsync("user", "add", "alice", "--data", data))
