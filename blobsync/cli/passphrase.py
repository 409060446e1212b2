"""Where the passphrase comes from: --passphrase-file, --passphrase-command (as restic's
--password-file and --password-command, with their BLOBSYNC_PASSPHRASE_FILE and
BLOBSYNC_PASSPHRASE_COMMAND), else BLOBSYNC_PASSPHRASE, else the terminal, else stdin."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import subprocess
import sys
import threading

from .failures import CommandFailed, UsageError

PASSPHRASE_ENV = "BLOBSYNC_PASSPHRASE"
PASSPHRASE_FILE_ENV = "BLOBSYNC_PASSPHRASE_FILE"
PASSPHRASE_COMMAND_ENV = "BLOBSYNC_PASSPHRASE_COMMAND"
# A new passphrase shorter than this is refused (init); existing ones keep working.
MIN_LENGTH = 8


def add_passphrase_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--passphrase-file", metavar="FILE", default=default,
                        help="read the passphrase from the first line of FILE "
                             f"(default: ${PASSPHRASE_FILE_ENV})")
    parser.add_argument("--passphrase-command", metavar="CMD", default=default,
                        help="run CMD (through the shell) and take the first line of its "
                             f"output as the passphrase (default: ${PASSPHRASE_COMMAND_ENV})")


def read_passphrase(args: argparse.Namespace | None = None, *, confirm: bool = False) -> str:
    """The passphrase, asked twice when ``confirm`` (a new one that nobody may mistype).

    The file, the command and the environment variable are for scripts; none is ever
    echoed or logged, and none is asked twice.
    """
    file = getattr(args, "passphrase_file", None) or os.environ.get(PASSPHRASE_FILE_ENV)
    command = (getattr(args, "passphrase_command", None)
               or os.environ.get(PASSPHRASE_COMMAND_ENV))
    if getattr(args, "passphrase_file", None) and getattr(args, "passphrase_command", None):
        raise UsageError("--passphrase-file and --passphrase-command do not go together")
    if file:
        return _nonempty(_from_file(file), f"the passphrase file {file}")
    if command:
        return _nonempty(_from_command(command), "the passphrase command's output")
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        if not from_env:
            raise UsageError(f"{PASSPHRASE_ENV} is set but empty")
        return from_env
    try:
        first = _ask("Passphrase: ")
        if confirm and first:
            # Refused before it is typed again: a second entry of a passphrase that
            # cannot be used only wastes the user's time.
            check_new(first)
        if confirm and _ask("Passphrase again: ") != first:
            raise CommandFailed("the two passphrases differ")
    except EOFError:
        if _has_terminal():  # Ctrl-D at the prompt: the user chose to give none
            raise UsageError("no passphrase given") from None
        raise UsageError(f"no passphrase: set {PASSPHRASE_ENV} or run at a terminal") from None
    if not first:
        raise UsageError("the passphrase must not be empty")
    return first


def check_new(passphrase: str) -> str:
    """A passphrase about to protect a new secret: long enough to be worth its KDF."""
    if len(passphrase) < MIN_LENGTH:
        raise UsageError(
            f"the passphrase is {len(passphrase)} characters long: a new one needs at least "
            f"{MIN_LENGTH}, since it is all that protects the secret's copy on the server"
        )
    return passphrase


def _nonempty(passphrase: str, where: str) -> str:
    if not passphrase:
        raise UsageError(f"no passphrase: the first line of {where} is empty")
    return passphrase


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip("\r")


def _from_file(name: str) -> str:
    try:
        with open(os.path.expanduser(name), encoding="utf-8") as f:
            return _first_line(f.readline())
    except OSError as exc:
        raise CommandFailed(f"cannot read the passphrase file: {exc.strerror or exc}: "
                            f"{name}") from None
    except UnicodeDecodeError:
        raise CommandFailed(f"the passphrase file is not UTF-8 text: {name}") from None


def _from_command(command: str) -> str:
    # Its stderr and the terminal stay the user's: `gpg --decrypt` or `pass` may ask there.
    try:
        proc = subprocess.run(command, shell=True, stdout=subprocess.PIPE, check=False)
    except OSError as exc:
        raise CommandFailed(f"the passphrase command could not run: {exc}") from None
    if proc.returncode != 0:
        how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"failed with exit status {proc.returncode}")
        # The command is named, its output never: it may hold the passphrase.
        raise CommandFailed(f"the passphrase command {how}: {command}")
    try:
        return _first_line(proc.stdout.decode("utf-8"))
    except UnicodeDecodeError:
        raise CommandFailed("the passphrase command's output is not UTF-8 text") from None


# Set by `put -`: stdin carries the data, so a passphrase is never read from it.
stdin_is_data = False


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
    if stdin_is_data:
        # `put -` with no terminal: the first line of the data is not a passphrase.
        raise UsageError("stdin is the data to store ('put -'): give the passphrase by "
                         "BLOBSYNC_PASSPHRASE, --passphrase-file or --passphrase-command")
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
