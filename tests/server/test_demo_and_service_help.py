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


def pasted_command(repo: Path, path: str, *, expect: str = "init") -> str:
    """Run `.venv/bin/python -m blobsync server --demo` in ``repo``, paste its client
    command into a new shell elsewhere (its cwd another directory, PATH being ``path``)
    and return the command. ``expect``: the command's last step."""
    log = (repo.parent / "server.log").open("w")
    elsewhere = repo.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
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
        assert lines and f"--home {repo / 'demo-client'} " in lines[-1], (lines, log.name)
        command = lines[-1].strip()
        assert command.split(" && ")[-1].split()[3] == expect, command
        proc = subprocess.run(["sh", "-c", command], cwd=elsewhere, capture_output=True,
                              text=True, timeout=60,
                              env=cli_env(PATH=path, BLOBSYNC_PASSPHRASE=PASSPHRASE))
        assert proc.returncode == 0, (command, proc.stderr)
        assert (repo / "demo-client").is_dir()
        assert not list(elsewhere.iterdir())
        # No banner of any kind: what the server printed is its own lines.
        assert "eprecat" not in "".join(lines) + (repo.parent / "server.log").read_text()
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
    start with a bare `blobsync` (sh: blobsync: not found), then with .venv/bin/blobsync,
    which a new shell (in its home directory) does not find either. A second run prints
    a command for the profile the first one made."""
    if shutil.which("blobsync", path=SYSTEM_PATH) is not None:
        pytest.skip(f"a blobsync is installed on {SYSTEM_PATH}")
    repo = repository(tmp_path)
    command = pasted_command(repo, SYSTEM_PATH)
    program = repo / ".venv" / "bin" / "blobsync"
    assert command.startswith(f"{program} --home {repo / 'demo-client'} init --server "), \
        command
    again = pasted_command(repo, SYSTEM_PATH, expect="sync")
    # The port changed (port 0): the profile is pointed at the new one, then synced.
    assert again.startswith(f"{program} --home {repo / 'demo-client'} config set server "), \
        again
    # The profile removed while the server keeps the user's secret: a third run's init
    # recovers that secret (a plain init is refused: the server holds one already).
    shutil.rmtree(repo / "demo-client")
    third = pasted_command(repo, SYSTEM_PATH)
    assert third.endswith(" --recover"), third


def test_demo_command_spells_out_the_venv_even_when_on_path(tmp_path: Path) -> None:
    """The venv's bin on the server's PATH (an activated venv) is not on a new shell's."""
    repo = repository(tmp_path)
    command = pasted_command(repo, f"{repo / '.venv' / 'bin'}:{SYSTEM_PATH}")
    assert command.startswith(f"{repo / '.venv' / 'bin' / 'blobsync'} --home "), command


def test_pyproject_license_is_an_spdx_string() -> None:
    """The TOML-table form made setuptools print a deprecation banner on every install."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    doc = tomllib.loads((root / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "GPL-3.0-or-later"
    # SPDX strings need setuptools 77 (PEP 639); the build pulls it in.
    assert doc["build-system"]["requires"] == ["setuptools>=77"]


def test_service_add_help_names_the_valid_services() -> None:
    proc = blobsync("service", "add", "--help")
    assert proc.returncode == 0, proc.stderr
    usage_and_options = proc.stdout
    for name in SERVICES:
        assert f"Valid names: {name}" in " ".join(usage_and_options.split()), proc.stdout
        assert f"valid names: {', '.join(SERVICES)}" in usage_and_options
