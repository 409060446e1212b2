"""Issue 14: stdout carries results only, whatever the terminal; -q and -v on every
command; ``blobsync version`` and ``blobsync help CMD``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from blobsync import __version__
from blobsync.cli.main import _subparsers_of, build_parser
from tests.helpers.cli import Device, assert_one_line_error, blobsync
from tests.helpers.ptyscreen import BAR_CHARS, on_terminal, shown_lines


def many_files(tmp_path: Path, n: int = 60) -> Path:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(n):
        (src / f"f{i:03d}.txt").write_bytes(f"file {i}\n".encode())
    (src / "zz-big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    return src


def test_put_to_a_file_gets_every_result_line_and_nothing_else(ready_a: Device,
                                                               tmp_path: Path) -> None:
    """`put DIR > ids.txt` at a terminal: one line per file in the file, no bar, no
    control sequence in it, while the terminal showed the bars."""
    src = many_files(tmp_path)
    ids = tmp_path / "ids.txt"
    code, seen = on_terminal(ready_a, "put", str(src), stdout=ids)
    assert code == 0, seen.decode(errors="replace")
    text = ids.read_text()
    assert "\x1b" not in text and not any(c in text for c in BAR_CHARS)
    paths = [line.split("\t")[1] for line in text.splitlines()]
    assert paths == sorted(str(p) for p in src.iterdir())
    assert any(c in line for line in shown_lines(seen) for c in BAR_CHARS)
    for line in text.splitlines():
        assert line.split("\t")[0].encode() not in seen


def test_quiet_draws_no_bars_and_says_no_notices(ready_a: Device, tmp_path: Path) -> None:
    src = many_files(tmp_path, 3)
    ids = tmp_path / "ids.txt"
    code, seen = on_terminal(ready_a, "-q", "put", str(src), stdout=ids)
    assert code == 0, seen.decode(errors="replace")
    assert seen == b""  # nothing on the terminal at all
    assert len(ids.read_text().splitlines()) == 4
    # The notice of files already stored is an info line: gone with -q, after the
    # command too.
    again = ready_a.run("put", str(src))
    assert again.stderr.decode() == "blobsync: 4 already stored, 0 stored\n"
    quiet = ready_a.run("put", str(src), "-q")
    assert quiet.returncode == 0 and quiet.stderr == b""
    assert quiet.stdout == again.stdout
    # Errors still print.
    assert_one_line_error(ready_a.run("-q", "get", "no-such-blob"), 6)


def test_verbose_tells_more_on_stderr_only(ready_a: Device, tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("a\n")
    plain = ready_a.run("put", "--id", "a1", str(f))
    assert plain.returncode == 0 and plain.stderr == b""
    for argv in (("-v", "ls"), ("ls", "-v"), ("ls", "--verbose")):
        proc = ready_a.run(*argv)
        assert proc.returncode == 0
        assert proc.stdout == b"a1\n"  # results unchanged
        err = proc.stderr.decode()
        assert f"blobsync: profile {ready_a.home}: user {ready_a.account.user} on " in err
        assert re.search(r"^blobsync: blobsync ls took \d+\.\d\d s$", err, re.M), err


def test_verbose_names_the_profile_on_a_sync_with_nothing_to_do(ready_a: Device) -> None:
    """A sync with nothing to do takes a path of its own (quicksync.py), which opens no
    manager: -v still says which profile it used."""
    assert ready_a.run("sync").returncode == 0
    proc = ready_a.run("-v", "sync")
    assert proc.returncode == 0
    err = proc.stderr.decode()
    assert f"blobsync: profile {ready_a.home}: user {ready_a.account.user} on " in err
    assert re.search(r"^blobsync: blobsync sync took \d+\.\d\d s$", err, re.M), err


def test_quiet_and_verbose_together_are_a_usage_error(ready_a: Device) -> None:
    assert_one_line_error(ready_a.run("-q", "ls", "-v"), 2)


def test_every_command_takes_q_and_v() -> None:
    parser = build_parser()
    for sub in [parser, *_subparsers_of(parser)]:
        options = {o for a in sub._actions for o in a.option_strings}
        assert {"-q", "--quiet", "-v", "--verbose"} <= options, sub.prog


def test_version_and_help() -> None:
    proc = blobsync("version")
    assert (proc.returncode, proc.stdout.decode()) == (0, f"blobsync {__version__}\n")
    assert blobsync("--version").stdout == proc.stdout
    for command in (["put"], ["sync"], ["incoming", "process"], ["config", "set"]):
        helped = blobsync("help", *command)
        assert helped.returncode == 0
        assert helped.stdout == blobsync(*command, "--help").stdout
        assert helped.stdout.startswith(f"usage: blobsync {' '.join(command)} ".encode())
    assert blobsync("help").stdout == blobsync("--help").stdout
    line = assert_one_line_error(blobsync("help", "nosuch"), 2)
    assert "no such command: nosuch" in line
