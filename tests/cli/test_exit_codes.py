"""The exit code table: one table in docs/cli.md, the same codes in failures.py and in
every --help, classify() mapping each kind of failure to its code, and the CLI exiting
with those codes where a test can bring the failure about for real."""

from __future__ import annotations

import errno
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from sqlcipher3 import dbapi2 as sqlcipher

from blobsync.cli import failures
from blobsync.cli.failures import (
    EXIT_CODES_HELP,
    CommandFailed,
    UsageError,
    classify,
    guarded,
)
from blobsync.cli.main import build_parser
from blobsync.client import errors as client_errors
from blobsync.format import InvalidBlob
from blobsync.server.auth import hash_token, new_token
from tests.helpers.cli import ROOT, Device, assert_one_line_error
from tests.helpers.cli_output import move_server
from tests.helpers.net import free_port
from tests.helpers.special_files import char_device
from tests.helpers.tmpfs import small_tmpfs as mounted_tmpfs

DOCS = ROOT / "docs" / "cli.md"


# --------------------------------------------------------------------------- the table


def documented_codes() -> dict[int, str]:
    """The rows of the one exit code table in docs/cli.md."""
    text = DOCS.read_text()
    section = text.split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.MULTILINE)
    assert rows, "no exit code table under 'Errors and exit codes'"
    assert text.count("| code | meaning |") == 1, "more than one exit code table"
    return {int(code): meaning for code, meaning in rows}


def defined_codes() -> set[int]:
    return {v for k, v in vars(failures).items() if k.startswith("EXIT_") and isinstance(v, int)}


def help_codes() -> set[int]:
    return {int(n) for n in re.findall(r"(\d+) [a-z]", EXIT_CODES_HELP.split(":", 1)[1])}


def test_one_table_with_the_codes_of_failures_py_and_of_help() -> None:
    documented = documented_codes()
    assert set(documented) == defined_codes() == help_codes()
    # The codes the issue fixed, with their meaning.
    for code, word in ((2, "usage"), (3, "revoked token"), (4, "could not be reached"),
                       (5, "verification"), (6, "no such blob"), (7, "incomplete"),
                       (8, "no space left"), (9, "profile is in use"), (10, "id is taken"),
                       (130, "interrupted")):
        assert word in documented[code], (code, documented[code])


def client_parsers() -> Iterator[tuple[str, object]]:
    subparsers = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    for name, parser in subparsers.choices.items():
        if name in ("server", "user", "service", "admin"):
            continue  # server commands: exit 0/1/2 only, described with the server
        yield name, parser
        for action in parser._subparsers._group_actions if parser._subparsers else []:
            yield from ((f"{name} {sub}", p) for sub, p in action.choices.items())


def test_every_client_command_help_ends_with_the_exit_codes() -> None:
    names = []
    for name, parser in client_parsers():
        names.append(name)
        text = " ".join(parser.format_help().split())  # type: ignore[attr-defined]
        assert " ".join(EXIT_CODES_HELP.split()) in text, name
    assert {"init", "put", "get", "ls", "rm", "flags", "sync", "status", "check",
            "incoming process"} <= set(names)


# --------------------------------------------------------------------------- classify


def enospc(filename: str | None = "/home/me/.blobsync/blobs/x") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def chained_client_error() -> client_errors.ClientError:
    try:
        try:
            raise enospc()
        except OSError as exc:
            raise client_errors.ClientError("cannot keep the blob") from exc
    except client_errors.ClientError as exc:
        return exc


def suppressed_context() -> RuntimeError:
    try:
        try:
            raise sqlcipher.OperationalError("database or disk is full")
        except sqlcipher.OperationalError:
            raise RuntimeError("commit failed") from None
    except RuntimeError as exc:
        return exc


CASES: list[tuple[str, BaseException, int, str]] = [
    ("usage", UsageError("--id needs exactly one file"), 2, "--id needs exactly one file"),
    ("chosen code", CommandFailed("some files were skipped", 7), 7, "some files were skipped"),
    ("wrong passphrase", client_errors.WrongPassphrase(), 3, "wrong passphrase"),
    ("wrong token", client_errors.AuthFailed("refused", 401), 3, "refused"),
    ("revoked token", client_errors.AuthFailed("refused", 403), 3, "refused"),
    ("unreachable", client_errors.ServerUnreachable("cannot reach"), 4, "cannot reach"),
    ("dropped", client_errors.ConnectionLost("connection lost"), 4, "connection lost"),
    ("timeout", TimeoutError(), 4, "the server did not answer in time"),
    ("aiohttp", aiohttp.ClientConnectionError("x"), 4, "cannot reach the server: x"),
    ("verification", InvalidBlob("tag mismatch"), 5, "verification failed: tag mismatch"),
    ("no such blob", client_errors.BlobNotFound("blob x not found"), 6, "blob x not found"),
    ("no space", client_errors.NoSpace("no space left on device (x)"), 8,
     "no space left on device (x)"),
    ("profile busy", client_errors.ProfileBusy("in use by pid 1"), 9, "in use by pid 1"),
    ("id taken", client_errors.IdTaken("id x is taken"), 10, "id x is taken"),
    ("ENOSPC", enospc(), 8, "no space left on device (/home/me/.blobsync/blobs/x)"),
    ("EDQUOT", OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/q"), 8,
     f"no space left on device ({os.strerror(errno.EDQUOT)}: /q)"),
    ("ENOSPC, no file", enospc(None), 8, "no space left on device"),
    ("sqlite full", sqlite3.OperationalError("database or disk is full"), 8,
     "no space left on device (local database: database or disk is full)"),
    ("sqlcipher full", sqlcipher.OperationalError("database or disk is full"), 8,
     "no space left on device (local database: database or disk is full)"),
    ("ENOSPC in the chain", chained_client_error(), 8,
     "no space left on device (/home/me/.blobsync/blobs/x)"),
    ("full in a suppressed context", suppressed_context(), 8,
     "no space left on device (local database: database or disk is full)"),
    # Not a full local disk: the server's quota, a file problem, other SQLite errors.
    ("server quota", client_errors.QuotaExceeded("over quota", 507), 1, "over quota"),
    ("server error", client_errors.ServerError("boom", 500), 1, "boom"),
    ("missing file", FileNotFoundError(2, "No such file or directory", "/x"), 1,
     "No such file or directory: /x"),
    ("sqlite other", sqlite3.OperationalError("no such table: t"), 1,
     "unexpected OperationalError: no such table: t"),
    ("not sqlite", RuntimeError("database or disk is full"), 1,
     "unexpected RuntimeError: database or disk is full"),
    ("unexpected", RuntimeError("boom"), 1, "unexpected RuntimeError: boom"),
]


@pytest.mark.parametrize(("exc", "code", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_classify(exc: BaseException, code: int, message: str) -> None:
    assert classify(exc) == (code, message)


@pytest.mark.parametrize(("exc", "code"), [(KeyboardInterrupt(), 130),
                                           (BrokenPipeError(), 141), (enospc(), 8)])
def test_guarded_codes(exc: BaseException, code: int,
                       capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise exc

    assert guarded(body) == code
    err = capsys.readouterr().err
    assert err.count("\n") == (0 if code == 141 else 1), err


# --------------------------------------------------------------------------- CLI, for real


def test_rm_with_the_server_down_says_the_deletion_is_queued(
    ready_a: Device, tmp_path: Path
) -> None:
    src = tmp_path / "doomed.txt"
    src.write_bytes(b"to be deleted while the server is away")
    blob_id = ready_a.ok("put", str(src)).split("\t")[0]
    url = move_server(ready_a, f"http://127.0.0.1:{free_port()}")
    line = assert_one_line_error(ready_a.run("rm", blob_id), 4)
    assert "deletion is queued" in line and "next sync" in line and blob_id in line
    # Why, in the system's words, without aiohttp's "ssl:default" for an http:// URL.
    assert "connection refused" in line.lower() and "ssl:" not in line, line
    assert ready_a.json("status")["statuses"]["PENDING_DELETE"] == 1
    assert blob_id not in ready_a.ok("ls").split()
    proc = ready_a.run("--json", "rm", blob_id)  # again: still queued, still 4
    assert_one_line_error(proc, 4)
    doc = json.loads(proc.stdout)
    assert doc["queued"] is True and doc["deleted"] is True
    # A blob this device never knew: queued too.
    assert_one_line_error(ready_a.run("rm", "never-seen-here"), 4)
    # The server back: the next sync delivers the deletion.
    move_server(ready_a, url)
    assert blob_id in ready_a.ok("ls", "--remote").split()
    ready_a.ok("sync")
    assert blob_id not in ready_a.ok("ls", "--remote").split()
    assert ready_a.json("status")["statuses"]["PENDING_DELETE"] == 0
    # With the server up, rm is plain success.
    (other,) = [ready_a.ok("put", str(src)).split("\t")[0]]
    assert json.loads(ready_a.ok("--json", "rm", other)) == {
        "id": other, "namespace": "default", "deleted": True, "queued": False}


def test_a_revoked_token_is_exit_3(ready_a: Device, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"a")
    blob_id = ready_a.ok("put", str(src)).split("\t")[0]
    server = ready_a.account.server
    server._call(server._running.store.index.set_user_token(  # the token reset: old one revoked
        ready_a.account.user, hash_token(new_token())))
    for args in (("ls", "--remote"), ("sync",), ("flags", blob_id), ("rm", blob_id),
                 ("put", str(src))):
        assert_one_line_error(ready_a.run(*args), 3)


def test_a_full_disk_is_exit_8(ready_a: Device, tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(200_000))
    blob_id = ready_a.ok("put", str(src)).split("\t")[0]
    full = char_device(tmp_path / "full", 1, 7)  # every write: ENOSPC, as on a full disk
    line = assert_one_line_error(ready_a.run("get", blob_id, "-o", str(full)), 8)
    assert line.startswith("blobsync: error: no space left on device (")
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    # stdout on a full disk: one line too, nothing more at exit.
    for args in (("get", blob_id), ("--json", "get", blob_id), ("ls",)):
        with open(full, "wb") as sink:
            proc = subprocess.run(
                [*ready_a_command(ready_a), *args], env=ready_a.env(), stdout=sink,
                stderr=subprocess.PIPE, timeout=120, start_new_session=True)
        line = assert_one_line_error(proc, 8)
        assert line == "blobsync: error: no space left on device (stdout)", line


def ready_a_command(device: Device) -> list[str]:
    return [sys.executable, "-m", "blobsync", "--home", str(device.home)]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a disk that really fills up."""
    with mounted_tmpfs(tmp_path / "small", "3m", mode="0700") as mnt:
        yield mnt


def fill(directory: Path, leave: int) -> None:
    """Fill the file system of ``directory`` up to ``leave`` free bytes."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_full_profile_disk_is_exit_8(ready_a: Device, small_tmpfs: Path,
                                       tmp_path: Path) -> None:
    """Put into a profile whose disk is full: ENOSPC in the blob files or SQLite's
    "database or disk is full", whichever comes first, is exit 8 and one line."""
    device = Device(small_tmpfs / "home", ready_a.account)
    assert device.run("init", "--recover", "--server", ready_a.account.server.url,
                      "--user", ready_a.account.user, "--token", ready_a.account.token,
                      ).returncode == 0
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4 << 20))  # more than the whole tmpfs
    line = assert_one_line_error(device.run("put", "--local-only", str(big)), 8)
    assert line.startswith("blobsync: error: no space left on device")
    files = tmp_path / "files"
    files.mkdir()
    for i in range(50):
        (files / f"{i}").write_bytes(os.urandom(2000))
    fill(small_tmpfs, 0)
    line = assert_one_line_error(device.run("put", "--local-only", str(files)), 8)
    assert line.startswith("blobsync: error: no space left on device (")
    (small_tmpfs / "filler").unlink()
    # Room again: the profile works, and holds nothing half-stored.
    assert device.run("check").returncode == 0
    # Room to open the store, not to keep the blobs: SQLite's "database or disk is full".
    fill(small_tmpfs, 300 << 10)
    for i in range(200):
        (files / f"{i}").write_bytes(os.urandom(2000))
    line = assert_one_line_error(device.run("put", "--local-only", str(files)), 8)
    # The store names where it ran out of room (the profile); the CLI's fallback would
    # have said "local database: database or disk is full".
    assert line.startswith("blobsync: error: no space left on device (")
    # Room again: nothing half-stored is left (no row without its payload).
    (small_tmpfs / "filler").unlink()
    check = device.run("check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_get_onto_a_full_disk_is_exit_8_and_leaves_nothing(
    ready_a: Device, small_tmpfs: Path, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 << 20))  # larger than the whole tmpfs
    blob_id = ready_a.ok("put", str(src)).split("\t")[0]
    dest = small_tmpfs / "out.bin"
    line = assert_one_line_error(ready_a.run("get", blob_id, "-o", str(dest)), 8)
    assert line == f"blobsync: error: no space left on device (writing {dest})"
    assert os.listdir(small_tmpfs) == []  # neither the file nor a temporary
