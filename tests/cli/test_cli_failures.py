"""How the CLI turns an exception into its error contract: the exit code it maps to, one
line on stderr, 130 on an interrupt."""

from __future__ import annotations

import pytest

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
from blobsync.format import InvalidBlob


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
