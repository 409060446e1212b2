"""What the client commands print: lines for people, one JSON document for scripts."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

# How much a command tells on stderr besides results and errors: -1 with -q (no progress,
# no notices), 0 by default, 1 with -v and 2 with -vv (the library's own log too). Set once
# per process by cli.main from the options.
_verbosity = 0


def set_verbosity(level: int) -> None:
    global _verbosity
    _verbosity = level


def verbosity() -> int:
    return _verbosity


def info(text: str) -> None:
    """A notice for a person, neither a result nor an error ("3 already stored, 2 stored"):
    stderr, unless -q."""
    if _verbosity >= 0:
        _stderr_line(f"blobsync: {text}")


def detail(text: str) -> None:
    """What -v adds: where the command works and what it did, on stderr."""
    if _verbosity >= 1:
        _stderr_line(f"blobsync: {text}")


def _stderr_line(text: str) -> None:
    if _stderr_console is not None:
        # Through the bars' console: above the bars, not into the one being redrawn.
        _stderr_console.out(text, highlight=False)
        return
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# The console of the progress bars (on stderr) while they are live; set only by
# ``lines_above``.
_stderr_console: Any = None
# The console of the progress bars while they are live on the very terminal stdout is.
# Result lines then go through it, which prints them above the bars; written straight to
# fd 1 they would land inside the bar being redrawn. Set only by ``lines_above``.
_bars_console: Any = None


@contextlib.contextmanager
def lines_above(console: Any, *, stdout_too: bool) -> Iterator[None]:
    """While live, notices for stderr (and with ``stdout_too``, text lines for stdout, the
    same terminal) print above the bars drawn by ``console``."""
    global _bars_console, _stderr_console
    _stderr_console = console
    if stdout_too:
        _bars_console = console
    try:
        yield
    finally:
        _bars_console = _stderr_console = None


@contextlib.contextmanager
def writing_stdout() -> Iterator[None]:
    """Name stdout in its OSErrors: "no space left on device (stdout)" says where, where a
    bare ENOSPC would not. OSError() picks the subclass by errno, so EPIPE stays a
    BrokenPipeError (exit 141)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, "stdout") from exc


class Output:
    """Stdout of one command.

    In text mode ``line`` prints at once (so ``put`` shows each id as soon as the blob is
    stored). In JSON mode text lines are dropped and the command ends with exactly one
    ``document``, so that ``json.loads(stdout)`` always works.
    """

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self._document_written = False
        self._pending: list[str] = []  # lines_soon's, not written yet

    def line_soon(self, text: str) -> None:
        """``line``, written with the others given in the same turn of the event loop:
        put tells a whole batch of stored blobs at once, and one write and flush per
        line cost a syscall each (10,000 for 10,000 files). Written before the loop does
        anything else; ``flush_lines`` writes what is left (the command's end does)."""
        if self.json_mode:
            return
        if _bars_console is not None:
            self.line(text)
            return
        if not self._pending:
            import asyncio

            asyncio.get_running_loop().call_soon(self.flush_lines)
        self._pending.append(text)

    def flush_lines(self) -> None:
        if self._pending:
            text, self._pending = "\n".join(self._pending) + "\n", []
            with writing_stdout():
                sys.stdout.write(text)
                sys.stdout.flush()

    def line(self, text: str) -> None:
        self.flush_lines()
        if not self.json_mode:
            if _bars_console is not None:
                # No markup, wrapping or highlighting: the line shows as it is.
                _bars_console.out(text, highlight=False)
                return
            with writing_stdout():
                sys.stdout.write(text + "\n")
                sys.stdout.flush()

    def document(self, data: dict[str, Any]) -> None:
        self.flush_lines()
        if self.json_mode:
            self._document_written = True  # even if it fails: no error document after it
            with writing_stdout():
                sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
                sys.stdout.flush()

    def error(self, code: int, message: str) -> None:
        """In JSON mode a failed command still leaves a parseable answer on stdout."""
        self.flush_lines()
        if self.json_mode and not self._document_written:
            self.document({"error": message, "exit_code": code})

    def mark_written(self) -> None:
        """A command that streamed its own JSON (``get``) has used up stdout."""
        self._document_written = True


def table(rows: list[tuple[str, str]], headers: tuple[str, str]) -> str:
    """A plain two-column table: stable for scripts and readable without a terminal."""
    width = max(len(r[0]) for r in [headers, *rows])
    lines = [f"{headers[0]:<{width}}  {headers[1]}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
