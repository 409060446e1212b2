"""`make run`'s ready-to-paste client command works when pasted, and `service add --help`
names the services the server accepts."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from blobsync.server.routes_incoming import SERVICES
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.subproc import START_TIMEOUT, blobsync, cli_env

# A PATH with the system's tools and no blobsync: as after `make run` in a new shell.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def repository(tmp_path: Path) -> Path:
    """A directory laid out as the repository after `make run`: .venv/bin/blobsync.

    Its .venv is the shared venv under another name, so the server runs from
    repo/.venv/bin/python as `make run` would, without writing into the real one.
    """
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "blobsync").is_file():
        pytest.skip("the venv running the tests has no blobsync script")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".venv").symlink_to(venv)
    return repo


def pasted_command(repo: Path, path: str) -> str:
    """Run `.venv/bin/python -m blobsync server --demo` in ``repo``, paste its client
    command there (PATH being ``path``) and return the command."""
    log = (repo.parent / "server.log").open("w")
    server = subprocess.Popen(
        [str(repo / ".venv" / "bin" / "python"), "-m", "blobsync", "server", "--demo",
         "--port", "0", "--local-port", "0"],
        cwd=repo, env=cli_env(PATH=path), stdout=subprocess.PIPE, stderr=log, text=True,
    )
    try:
        lines: list[str] = []
        read = threading.Thread(target=lambda: lines.extend(_until_command(server)),
                                daemon=True)
        read.start()
        read.join(START_TIMEOUT)
        assert lines and "--home ./demo-client" in lines[-1], (lines, log.name)
        command = lines[-1].strip()
        proc = subprocess.run(["sh", "-c", command], cwd=repo, capture_output=True,
                              text=True, timeout=60,
                              env=cli_env(PATH=path, BLOBSYNC_PASSPHRASE=PASSPHRASE))
        assert proc.returncode == 0, (command, proc.stderr)
        assert (repo / "demo-client").is_dir()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
        log.close()
    return command


def _until_command(server: subprocess.Popen[str]) -> list[str]:
    got: list[str] = []
    assert server.stdout is not None
    for line in server.stdout:
        got.append(line)
        if got[-2:-1] == ["client command, ready to paste:\n"]:
            break
    return got


def test_demo_command_works_when_blobsync_is_not_on_path(tmp_path: Path) -> None:
    """After `make run` blobsync is .venv/bin/blobsync, not on PATH: the command used to
    start with a bare `blobsync` (sh: blobsync: not found)."""
    if shutil.which("blobsync", path=SYSTEM_PATH) is not None:
        pytest.skip(f"a blobsync is installed on {SYSTEM_PATH}")
    repo = repository(tmp_path)
    command = pasted_command(repo, SYSTEM_PATH)
    assert command.startswith(".venv/bin/blobsync --home ./demo-client init --server "), command


def test_demo_command_is_plain_blobsync_when_on_path(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    command = pasted_command(repo, f"{repo / '.venv' / 'bin'}:{SYSTEM_PATH}")
    assert command.startswith("blobsync --home ./demo-client init --server "), command


def test_service_add_help_names_the_valid_services() -> None:
    proc = blobsync("service", "add", "--help")
    assert proc.returncode == 0, proc.stderr
    usage_and_options = proc.stdout
    for name in SERVICES:
        assert f"Valid names: {name}" in " ".join(usage_and_options.split()), proc.stdout
        assert f"valid names: {', '.join(SERVICES)}" in usage_and_options
