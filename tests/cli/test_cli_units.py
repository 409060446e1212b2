"""Pure parts of the client CLI: file collection, error classification, output, parsing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from blobsync.cli import client_runtime, collect
from blobsync.cli.failures import (
    EXIT_ERROR,
    EXIT_USAGE,
    EXIT_VERIFY,
    CommandFailed,
    UsageError,
    classify,
    guarded,
    one_line,
)
from blobsync.cli.main import build_parser
from blobsync.cli.output import Output, table
from blobsync.format import InvalidBlob


def test_collect_files_walks_directories_in_order(tmp_path: Path) -> None:
    (tmp_path / "d" / "z").mkdir(parents=True)
    for rel in ("d/b", "d/a", "d/z/c", "top"):
        (tmp_path / rel).write_text(rel)
    found = collect.collect_files([str(tmp_path / "top"), str(tmp_path / "d")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["top", "d/a", "d/b", "d/z/c"]


def test_collect_files_records_what_it_leaves_out(tmp_path: Path) -> None:
    """Nothing is dropped silently: every entry not collected is in ``skipped``, why
    included, and a link to a directory inside is not followed (no loop)."""
    import os

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("f")
    os.mkfifo(tmp_path / "d" / "p")
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")
    (tmp_path / "d" / "gone").symlink_to(tmp_path / "missing")
    skipped: list[collect.Skip] = []
    found = collect.collect_files([str(tmp_path / "d")], skipped)
    assert found == [tmp_path / "d" / "f"]
    assert [(s.path.name, s.reason) for s in skipped] == [
        ("gone", "dangling symlink"), ("loop", "symlink to a directory, not followed"),
        ("p", "FIFO")]


def test_collect_files_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        collect.collect_files([str(tmp_path / "missing")])


def test_classify() -> None:
    assert classify(InvalidBlob("tag mismatch"))[0] == EXIT_VERIFY
    assert classify(UsageError("u")) == (EXIT_USAGE, "u")
    assert classify(CommandFailed("c", 5)) == (5, "c")
    code, message = classify(FileNotFoundError(2, "No such file or directory", "/x"))
    assert (code, message) == (EXIT_ERROR, "No such file or directory: /x")
    assert classify(RuntimeError("boom")) == (EXIT_ERROR, "unexpected RuntimeError: boom")


def test_guarded_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> int:
        raise CommandFailed("first line\nsecond line", 7)

    assert guarded(fail) == 7
    err = capsys.readouterr().err
    assert err == "blobsync: error: first line second line\n"
    assert one_line("  a \n b ") == "a b"


def test_guarded_interrupt(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert guarded(interrupted) == 130


def test_output_json_error_only_once(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output(json_mode=True)
    out.line("hidden in json mode")
    out.document({"a": 1})
    out.error(1, "late failure")
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == [{"a": 1}]
    text = Output(json_mode=False)
    text.line("shown")
    text.document({"a": 1})
    assert capsys.readouterr().out == "shown\n"


def test_table_aligns() -> None:
    assert table([("SYNCED", "12"), ("LOCAL_ONLY", " 3")], ("STATUS", "BLOBS")).splitlines() == [
        "STATUS      BLOBS", "SYNCED      12", "LOCAL_ONLY   3"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_global_options_before_and_after_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BLOBSYNC_HOME", str(tmp_path / "env-home"))
    args = parse("ls")
    assert client_runtime.resolve_home(args) == tmp_path / "env-home"
    assert args.json is False
    args = parse("--home", str(tmp_path / "h"), "--json", "ls")
    assert (args.home, args.json) == (str(tmp_path / "h"), True)
    args = parse("ls", "--home", str(tmp_path / "h2"), "--json")
    assert (args.home, args.json) == (str(tmp_path / "h2"), True)
    monkeypatch.delenv("BLOBSYNC_HOME")
    assert client_runtime.resolve_home(parse("ls")) == Path("~/.blobsync").expanduser()


def test_parser_choices_and_flags() -> None:
    assert parse("flags", "x", "--set", "pending", "FAILED").set == ["PENDING", "FAILED"]
    assert parse("flags", "x", "--set").set == []
    assert parse("flags", "x").set is None
    assert parse("ls", "--remote", "--order-by", "-date").order_by == "-date"
    assert parse("ls", "--order-by=+date").order_by == "+date"
    # Tokens are base64url: they may begin with '-' or '--'.
    for token in ("-a1_b", "--x-y"):
        args = parse("init", "--server", "http://h", "--user", "u", "--token", token, "--rec")
        assert (args.token, args.recover) == (token, True)
    with pytest.raises(SystemExit):
        parse("flags", "x", "--set", "DONE")
    with pytest.raises(SystemExit):
        parse("put", "f", "--priority", "whenever")
    with pytest.raises(SystemExit):
        parse("init", "--server", "u", "--user", "x", "--secret-file", "f", "--recover")


def test_every_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = ["init", "put", "get", "ls", "rm", "flags", "sync", "status", "check", "incoming"]
    commands = [sub.choices[name] for name in names]
    incoming = next(a for a in sub.choices["incoming"]._actions
                    if isinstance(a, argparse._SubParsersAction))
    commands.append(incoming.choices["process"])
    for command in commands:
        assert command.description, command.prog
        for action in command._actions:
            assert action.help, (command.prog, action.dest)
