"""The ``blobsync`` command: server, admin and client subcommands.

Each command module exposes ``register(subparsers)`` and may expose
``add_global_options(parser)``; every command sets ``func(args) -> int`` (the exit code).
Adding a module means adding its name to COMMAND_MODULES, nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from blobsync import __version__
from blobsync.allocator import tune_allocator

COMMAND_MODULES = ("blobsync.cli.server_cmds", "blobsync.cli.client_cmds")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line ``blobsync: error: ...`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"blobsync: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="blobsync",
        description="End-to-end encrypted blob sync (Soledad's blobs protocol).",
    )
    parser.add_argument("--version", action="version", version=f"blobsync {__version__}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    tune_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
