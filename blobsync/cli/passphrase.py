"""Where the passphrase comes from: BLOBSYNC_PASSPHRASE, else the terminal, else stdin."""

from __future__ import annotations

import getpass
import os
import signal
import sys
import threading

from .failures import CommandFailed, UsageError

PASSPHRASE_ENV = "BLOBSYNC_PASSPHRASE"


def read_passphrase(*, confirm: bool = False) -> str:
    """The passphrase, asked twice when ``confirm`` (a new one that nobody may mistype).

    The environment variable is for scripts and tests; it is never echoed or logged.
    """
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        if not from_env:
            raise UsageError(f"{PASSPHRASE_ENV} is set but empty")
        return from_env
    try:
        first = _ask("Passphrase: ")
        if confirm and _ask("Passphrase again: ") != first:
            raise CommandFailed("the two passphrases differ")
    except EOFError:
        if _has_terminal():  # Ctrl-D at the prompt: the user chose to give none
            raise UsageError("no passphrase given") from None
        raise UsageError(f"no passphrase: set {PASSPHRASE_ENV} or run at a terminal") from None
    if not first:
        raise UsageError("the passphrase must not be empty")
    return first


def _has_terminal() -> bool:
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


def _ask(prompt: str) -> str:
    if _has_terminal():
        # Asked from inside asyncio.run, whose SIGINT handler only cancels the main task:
        # that cannot happen while getpass blocks the loop, so Ctrl-C would do nothing.
        # Python's own handler raises KeyboardInterrupt right here instead.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
        try:
            return getpass.getpass(prompt)
        except (EOFError, KeyboardInterrupt):
            _end_prompt_line()  # or the error would follow "Passphrase: " on its line
            raise
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
    # No terminal at all (a cron job, a pipe): one line from stdin, without getpass's
    # "input may be echoed" warnings, which would break the one-line error contract.
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")


def _end_prompt_line() -> None:
    try:
        with open("/dev/tty", "w") as tty:
            tty.write("\n")
    except OSError:
        pass
