"""Exit codes of the ``blobsync`` client commands and the one place errors become them.

Scripts branch on these codes, so they are part of the interface. Their one table is in
docs/cli.md ("Errors and exit codes"); tests/cli/test_exit_codes.py holds the constants
below, ``EXIT_CODES_HELP`` and that table to the same codes.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_VERIFY = 5
EXIT_NOT_FOUND = 6
EXIT_INCOMPLETE = 7
EXIT_NO_SPACE = 8
EXIT_PROFILE_BUSY = 9
EXIT_ID_TAKEN = 10
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 error, 2 usage, 3 wrong token or passphrase, "
    "4 server unreachable, 5 verification failed, 6 no such blob, 7 incomplete, "
    "8 no space left, 9 profile in use, 10 id taken, 130 interrupted, "
    "141 output closed early"
)

# OSError numbers that mean the disk (or the user's share of it) is full.
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# SQLite's text for SQLITE_FULL, as sqlite3 and sqlcipher3 both report it.
_SQLITE_FULL_TEXT = "database or disk is full"
_SQLITE_FULL = 13
NO_SPACE = "no space left on device"

# Set BLOBSYNC_DEBUG=1 to see the traceback of an unexpected error instead of one line.
DEBUG_ENV = "BLOBSYNC_DEBUG"


class UsageError(Exception):
    """A command line that parses but makes no sense (``--id`` with two files, say)."""


class CommandFailed(Exception):
    """A command that ran to its end but must report failure with a chosen exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    """Fold a message onto one line: the error contract is exactly one line on stderr."""
    return " ".join(text.split()) or "unknown error"


def _os_error_message(exc: OSError) -> str:
    # str(OSError) reads "[Errno 2] No such file or directory: 'x'"; people want the tail.
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return exc.strerror or str(exc) or type(exc).__name__


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for ``exc``.

    An error that would be a plain 1 but stems from a full disk anywhere in its chain
    (ENOSPC, SQLite's "database or disk is full") is 8: a full disk must read the same
    whichever layer met it.
    """
    code, message = _classify(exc)
    if code == EXIT_ERROR:
        full = _no_space(exc)
        if full is not None:
            return EXIT_NO_SPACE, f"{NO_SPACE} ({full})" if full else NO_SPACE
    return code, message


def _no_space(exc: BaseException) -> str | None:
    """What ran out of space ("" when unknown), if ``exc`` or an error it came from is a
    full disk; None if none is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE_ERRNOS:
            parts = [] if current.errno == errno.ENOSPC else [current.strerror or ""]
            if current.filename is not None:
                parts.append(str(current.filename))
            return ": ".join(p for p in parts if p)
        if _is_sqlite_full(current):
            return f"local database: {_SQLITE_FULL_TEXT}"
        current = current.__cause__ or current.__context__
    return None


def _is_sqlite_full(exc: BaseException) -> bool:
    # sqlite3 and sqlcipher3 are told apart by module, not imported: either may be absent.
    if not type(exc).__module__.startswith(("sqlite3", "sqlcipher3")):
        return False
    if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    return _SQLITE_FULL_TEXT in str(exc)


def _classify(exc: BaseException) -> tuple[int, str]:
    # Imported here so that `blobsync --help` does not pay for the client library.
    from blobsync.format.errors import BlobsyncError, InvalidBlob

    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, CommandFailed):
        return exc.code, str(exc)
    if isinstance(exc, InvalidBlob):
        return EXIT_VERIFY, f"verification failed: {exc}"
    if isinstance(exc, BlobsyncError):
        # The server commands' errors carry their own code (server_cmds.CommandError).
        code = getattr(exc, "exit_code", None)
        if not isinstance(code, int):
            code = _client_error_code(exc)
        return code, str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return EXIT_UNREACHABLE, "the server did not answer in time"
    if isinstance(exc, OSError):
        return EXIT_ERROR, _os_error_message(exc)
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a hard dependency
        aiohttp = None  # type: ignore[assignment]
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError):
        # The library should wrap these in ServerUnreachable; this is the safety net.
        return EXIT_UNREACHABLE, f"cannot reach the server: {exc}"
    return EXIT_ERROR, f"unexpected {type(exc).__name__}: {exc}"


def _client_error_code(exc: BaseException) -> int:
    try:
        from blobsync.client import errors as client_errors
    except ImportError:
        return EXIT_ERROR
    table: list[tuple[str, int]] = [
        ("WrongPassphrase", EXIT_AUTH),
        ("AuthFailed", EXIT_AUTH),
        ("ServerUnreachable", EXIT_UNREACHABLE),
        ("ConnectionLost", EXIT_UNREACHABLE),
        ("BlobNotFound", EXIT_NOT_FOUND),
        ("NoSpace", EXIT_NO_SPACE),
        ("ProfileBusy", EXIT_PROFILE_BUSY),
        ("IdTaken", EXIT_ID_TAKEN),
    ]
    for name, code in table:
        cls = getattr(client_errors, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return code
    return EXIT_ERROR


def print_error(message: str) -> None:
    sys.stderr.write(f"blobsync: error: {one_line(message)}\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    # After EPIPE, Python would complain again while flushing stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def guarded(body: Callable[[], int], on_error: Callable[[int, str], None] | None = None) -> int:
    """Run ``body`` and turn any failure into a one-line message and an exit code.

    ``on_error(code, message)`` lets the caller also report the failure elsewhere (the
    JSON document on stdout in ``--json`` mode).
    """
    try:
        return body()
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the contract is: never a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        code, message = classify(exc)
        print_error(message)
        if on_error is not None:
            try:
                on_error(code, one_line(message))
            except (OSError, ValueError):
                pass
        return code
