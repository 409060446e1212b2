"""The ``blobsync`` command: server, admin and client subcommands.

Each command module exposes ``register(subparsers)`` and may expose
``add_global_options(parser)``; every command sets ``func(args) -> int`` (the exit code).
Adding a module means adding its name to COMMAND_MODULES, nothing else. ``-q``/``-v``
are added here to every command (before or after its name), and ``version`` and
``help CMD`` are this module's own.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from typing import Any, NoReturn

from blobsync import __version__
from blobsync.allocator import tune_allocator

from .failures import EXIT_CODES_HELP
from .output import set_verbosity

COMMAND_MODULES = ("blobsync.cli.server_cmds", "blobsync.cli.client_cmds")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line ``blobsync: error: ...`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"blobsync: error: {' '.join(message.split())}\n")


def _add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    """-q and -v; after a command's name (``default`` SUPPRESS) they keep the values given
    before it unless given again."""
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress and no notices on stderr; errors still print")
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help="more detail on stderr: the profile, the time taken, retries "
                             "and skipped blobs (-vv: the client library's debug log)")


def _subparsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command parser below ``parser`` (``incoming process`` too)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases once
                found.append(sub)
                found.extend(_subparsers_of(sub))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="blobsync",
        description="End-to-end encrypted blob sync (Soledad's blobs protocol).",
    )
    parser.add_argument("--version", action="version", version=f"blobsync {__version__}")
    _add_verbosity(parser, None)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command module not written yet
        add_global = getattr(module, "add_global_options", None)
        if add_global is not None:
            add_global(parser)
        module.register(subparsers)
    p = subparsers.add_parser("version", help="print the version of blobsync",
                              description="Print 'blobsync VERSION' (as --version does).",
                              epilog=EXIT_CODES_HELP)
    p.set_defaults(func=_cmd_version)
    p = subparsers.add_parser("help", help="print the help of a command",
                              description="Print the help of COMMAND, the same text as "
                                          "'blobsync COMMAND --help' (without COMMAND: "
                                          "the list of commands).",
                              epilog=EXIT_CODES_HELP)
    p.add_argument("topic", nargs="*", metavar="COMMAND",
                   help="the command, e.g. put, or incoming process")
    p.set_defaults(func=functools.partial(_cmd_help, parser))
    for sub in _subparsers_of(parser):
        if not any("--quiet" in a.option_strings for a in sub._actions):
            _add_verbosity(sub, argparse.SUPPRESS)
    return parser


def _cmd_version(args: argparse.Namespace) -> int:
    sys.stdout.write(f"blobsync {__version__}\n")
    return 0


def _cmd_help(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    target = parser
    for word in args.topic:
        subs = [a for a in target._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            known = ", ".join(subs[0].choices) if subs else "none"
            parser.error(f"no such command: {' '.join(args.topic)} (commands: {known})")
        target = subs[0].choices[word]
    target.print_help()
    return 0


def main(argv: list[str] | None = None) -> int:
    tune_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("-q and -v do not go together")
    set_verbosity(-1 if args.quiet else int(args.verbose or 0))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
