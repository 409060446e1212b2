"""Where the passphrase comes from: BLOBSYNC_PASSPHRASE, else the terminal, else stdin."""

from __future__ import annotations

import getpass
import os
import sys

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
        return getpass.getpass(prompt)
    # No terminal at all (a cron job, a pipe): one line from stdin, without getpass's
    # "input may be echoed" warnings, which would break the one-line error contract.
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\r\n")
