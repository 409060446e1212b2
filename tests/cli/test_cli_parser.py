"""The CLI's argument parser: global options before or after the command, the choices
and flags of each command, a help text for every option."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from blobsync.cli import client_runtime
from blobsync.cli.main import build_parser


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
