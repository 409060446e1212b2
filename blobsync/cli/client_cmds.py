"""The client commands of ``blobsync``: init, put, get, ls, rm, flags, sync, status, check
and incoming process, over ``blobsync.client.BlobManager``; this module holds their
options and help, the commands live in init_cmd, blob_cmds and sync_cmds.

Every command is a ``func(args) -> int`` that never raises: failures become one line on
stderr and an exit code from ``failures`` (client_runtime.as_command). Heavy imports (the
client library, rich) happen inside the commands so that ``blobsync --help`` stays quick.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from .blob_cmds import cmd_flags, cmd_put
from .client_runtime import (
    DEFAULT_HOME,
    DEFAULT_MAX_WAIT,
    HOME_ENV,
    Handler,
    as_command,
    default_home,
)
from .config_cmds import KEYS, cmd_config_set, cmd_config_show
from .failures import EXIT_CODES_HELP
from .get_cmds import cmd_get
from .init_cmd import cmd_init
from .list_cmds import cmd_ls, cmd_rm
from .passphrase import add_passphrase_options
from .sync_cmds import (
    RETRY_FAILED_OPTION,
    cmd_check,
    cmd_incoming_process,
    cmd_status,
    cmd_sync,
    sync_prelude,
)

PRIORITIES = ("low", "medium", "high", "urgent")
FLAGS = ("PENDING", "PROCESSING", "PROCESSED", "FAILED")


def _common() -> argparse.ArgumentParser:
    """--home and --json also after the command; SUPPRESS keeps main's values otherwise."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"profile directory (default: ${HOME_ENV}, else {DEFAULT_HOME})")
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout, for scripts")
    add_passphrase_options(parent, argparse.SUPPRESS)
    return parent


def _selection_args(p: argparse.ArgumentParser, recursive_note: str = "") -> None:
    """The blobs get and rm act on: ids, one name, or a tree of names."""
    p.add_argument("ids", nargs="*", metavar="ID", help="blob ids")
    p.add_argument("--name", metavar="NAME",
                   help="the blob with this name (several: an error that lists them)")
    p.add_argument("-r", "--recursive", metavar="PREFIX",
                   help=f"every blob named PREFIX or under it{recursive_note}")


def _namespace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", metavar="NS", default="default",
                        help="namespace of the blobs (default: %(default)s)")


# For parsers whose values may start with '-' (see init and ls).
_DASH_VALUE = re.compile(r"^-.")


def _max_wait_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-wait", type=_seconds, metavar="SECONDS", default=None,
        help="stop retrying passing failures after this long; what is left stays pending "
             f"for the next sync (default: the profile's setting, else {DEFAULT_MAX_WAIT:g})",
    )


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {value!r}")
    return seconds


def _flag(value: str) -> str:
    flag = value.upper()
    if flag not in FLAGS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(FLAGS)}")
    return flag


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """--home and --json before the command (cli.main calls this on the top parser)."""
    parser.add_argument("--home", metavar="DIR", default=default_home(),
                        help=f"client profile directory (default: ${HOME_ENV}, "
                             f"else {DEFAULT_HOME})")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable JSON on stdout, for scripts")
    add_passphrase_options(parser, None)


def register(subparsers: Any) -> None:
    """Add the client commands to ``blobsync``'s subparsers (called by cli.main)."""
    common = _common()

    def add(name: str, handler: Handler, help_text: str, description: str) -> Any:
        parser = subparsers.add_parser(
            name, parents=[common], help=help_text, description=description,
            epilog=EXIT_CODES_HELP,
        )
        parser.set_defaults(func=as_command(handler))
        return parser

    p = add("init", cmd_init, "create the client profile of this device",
            "Create the profile at --home: server, user, token and the storage secret, "
            "kept encrypted under a passphrase (--passphrase-file, --passphrase-command, "
            "BLOBSYNC_PASSPHRASE, else prompted twice) of at least 8 characters. The "
            "secret is also stored on the server, encrypted under the passphrase, so "
            "that other devices can --recover it.")
    p.add_argument("--server", required=True, metavar="URL",
                   help="server URL, e.g. https://blobs.example.org:2424")
    p.add_argument("--user", required=True, metavar="UUID", help="your user id on the server")
    p.add_argument("--token", metavar="TOKEN",
                   help="your access token (default: $BLOBSYNC_TOKEN)")
    # Tokens are base64url and may begin with '-', which argparse would take for an
    # option; init's real options still match first, as exact or abbreviated names.
    p._negative_number_matcher = _DASH_VALUE
    p.add_argument("--ca-file", metavar="FILE",
                   help="trust the certificate authority (PEM) in FILE for the server's "
                        "TLS certificate, e.g. a private CA or a self-signed certificate "
                        "(default: the system's authorities)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--secret-file", metavar="F",
                     help="use the storage secret in file F instead of making a new one")
    how.add_argument("--recover", action="store_true",
                     help="fetch the secret that another device stored on the server "
                          "(needs that device's passphrase)")

    p = add("put", cmd_put, "store files and upload them",
            "Store each file (directories recursively) as a blob on this device and "
            "upload it: small files go up in streams, a batch at a time, while the next "
            "batch is read and sealed; large ones after them. Prints "
            "'blob_id<TAB>path' per file. Each blob is named (in its encrypted meta) by "
            "the file's path relative to the parent of the argument: 'put photos/' and "
            "'put /home/u/photos' both name photos/a.jpg. 'put -' stores stdin (--name "
            "names it). A file put before and unchanged since (same path, size and "
            "mtime), or whose name, size and mtime a blob already has (put from any "
            "device), is not stored again: its blob is printed as well, uploaded if it "
            "is still pending, and stderr counts them ('N already stored, M stored'); "
            "--force stores it anew. Entries that are not regular "
            "files (FIFOs, sockets, devices, dangling symlinks, symlinks to directories) "
            "or cannot be read are skipped, each said on stderr, and the exit code is "
            "then 7.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="file or directory to store; '-' alone: stdin")
    p.add_argument("--name", metavar="NAME",
                   help="with 'put -': the blob's name (default: none)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the paths that would be stored, store nothing")
    p.add_argument("--id", metavar="ID", help="blob id to use (only with exactly one file; "
                                              "default: a new random id)")
    _namespace_arg(p)
    p.add_argument("--priority", choices=PRIORITIES, default="medium",
                   help="transfer priority (default: %(default)s)")
    p.add_argument("--local-only", action="store_true",
                   help="keep the blobs on this device only, never upload them")
    p.add_argument("--no-stream", action="store_true",
                   help="upload one request per blob instead of batching in streams")
    p.add_argument("--force", action="store_true",
                   help="store every file anew, even one already stored (same path, or "
                        "same name, size and mtime)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first entry that cannot be stored (an unreadable "
                        "file, a FIFO...), storing nothing, instead of skipping it")
    _max_wait_arg(p)

    p = add("get", cmd_get, "write blobs' content to a file, a directory or stdout",
            "Write the verified content of a blob, from this device or else downloaded: "
            "ID (or --name NAME) to stdout, or to FILE with -o. Several ids, or -r "
            "PREFIX, need -o DIR: each blob goes to DIR/<its name> (DIR/<its id> without "
            "one), with the mtime and mode its meta holds; -r takes the names equal to "
            "PREFIX or under it as a directory (photos: photos/a.jpg, not photos2/b.jpg). "
            "A name that would land outside DIR is refused, one line each, the rest "
            "written, and the exit code is 7. A blob that fails verification is never "
            "written: with -o the file is not created. As with cp, a file is created or "
            "replaced atomically (a new one follows the umask), a symlink is followed, "
            "and a device or FIFO is written through, only once the blob verified.")
    _selection_args(p, " (needs -o DIR)")
    p.add_argument("-o", "--output", metavar="FILE|DIR",
                   help="write to FILE (default or '-': stdout); with several blobs, "
                        "into DIR (made if missing)")
    _namespace_arg(p)

    p = add("ls", cmd_ls, "list blobs: ids, or with -l sizes, dates and names",
            "List the blob ids of a namespace held on this device, or with --remote on "
            "the server. -l adds each blob's size, date (mtime) and name, in name order "
            "(a blob without a meta has an empty name); PREFIX lists only the names equal "
            "to it or under it as a directory.")
    p.add_argument("prefix", nargs="?", metavar="PREFIX",
                   help="only blobs named PREFIX or under it (photos: photos/a.jpg)")
    p.add_argument("-l", "--long", action="store_true",
                   help="id, size, date and name of each blob")
    p.add_argument("--remote", action="store_true", help="list the server's blobs")
    _namespace_arg(p)
    p.add_argument("--flag", metavar="F", type=_flag,
                   help=f"only blobs carrying flag F ({', '.join(FLAGS)}); needs --remote")
    p.add_argument("--order-by", choices=("date", "+date", "-date"),
                   help="date/+date oldest first, -date newest first; needs --remote")
    # argparse takes '-date' for an unknown option; reading it like a negative number
    # makes `--order-by -date` work as SPEC 4 spells it (ls has no option starting -d).
    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-date$")
    p.add_argument("--count", action="store_true", help="print only how many")
    p.add_argument("--deleted", action="store_true",
                   help="list deleted blobs (tombstones) instead; needs --remote")

    p = add("rm", cmd_rm, "delete blobs here and on the server",
            "Delete blobs (by id, --name NAME, or -r PREFIX: the names equal to PREFIX or "
            "under it) on this device and on the server; other devices delete them at "
            "their next sync. With the server unreachable the deletion is queued for the "
            "next sync, and the command says so and exits 4.")
    _selection_args(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the blobs that would be deleted ('ID<TAB>name'), delete "
                        "nothing")
    _namespace_arg(p)

    p = add("flags", cmd_flags, "show or set a blob's flags on the server",
            "Print the flags of a blob, or with --set replace them (an empty --set clears "
            "them). Flags are PENDING, PROCESSING, PROCESSED, FAILED.")
    p.add_argument("blob_id", metavar="ID", help="the blob id")
    p.add_argument("--set", nargs="*", type=_flag, metavar="FLAG",
                   help="replace the flags with these")
    _namespace_arg(p)

    p = add("sync", cmd_sync, "synchronize a namespace with the server",
            "Learn what changed on the server since the last sync (its change feed; a full "
            "listing the first time, with --full, or when the server asks for one), apply "
            "its deletions, then download what is missing here and upload what is missing "
            "there. Blobs that failed for good (refused by the server, or failing "
            "verification three times) are left alone unless --retry-failed is given. Exits "
            "1 if some blobs failed, now or before; 10 if the only failures of this run are "
            "ids the server holds under other blobs. With --watch it keeps the namespace in "
            "sync until Ctrl-C (exit 130), printing one line per blob moved.")
    _namespace_arg(p)
    p.add_argument("--full", action="store_true",
                   help="list every blob on the server instead of reading its change feed")
    p.add_argument("--watch", action="store_true",
                   help="keep syncing until Ctrl-C: remote changes as they happen, local "
                        "puts (from any shell) as they are made; one line per event "
                        "(downloaded, uploaded, deleted_here, deleted_there, resync), "
                        "with --json a JSON object per line; offline/online notices on "
                        "stderr")
    p.add_argument(RETRY_FAILED_OPTION, action="store_true",
                   help="give the blobs marked FAILED_UPLOAD or FAILED_DOWNLOAD another try "
                        "(after the quota was raised, say)")
    p.add_argument("--no-stream", action="store_true",
                   help="transfer one request per blob instead of batching in streams")
    p.add_argument("--dry-run", action="store_true",
                   help="print what a sync would do ('download ID', 'upload ID', "
                        "'delete_here ID', 'delete_there ID', then the counts), as a full "
                        "listing of the server shows it; do nothing")
    _max_wait_arg(p)
    # The passphrase read and the KDF started before the event loop (sync_prelude).
    p.set_defaults(func=as_command(cmd_sync, prelude=sync_prelude), unlocking=None,
                   passphrase=None)

    p = add("status", cmd_status, "count blobs per sync status",
            "Print a table of how many blobs of this device are in each sync status.")
    p.add_argument("--namespace", "-n", metavar="NS", default=None,
                   help="count one namespace only (default: all)")

    config = subparsers.add_parser(
        "config", parents=[common], help="show or change the profile's settings",
        description="Show the profile's server, user, CA file and settings (never the "
                    "token), or change the server, the token or the CA file without "
                    "editing config.json. No passphrase is needed.",
        epilog=EXIT_CODES_HELP,
    )
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION",
                                       required=True, help="what to do")
    p = config_sub.add_parser(
        "show", parents=[common], help="print the profile's settings (not the token)",
        description="Print home, server, user, CA file and settings; the token is never "
                    "printed. With --json: {home, server, user, ca_file, settings}.",
        epilog=EXIT_CODES_HELP,
    )
    p.set_defaults(func=as_command(cmd_config_show))
    p = config_sub.add_parser(
        "set", parents=[common], help="change the server, the token or the CA file",
        description="Set KEY to VALUE in the profile, written atomically and kept "
                    "mode 0600: 'server URL' (a moved server), 'token TOKEN' (a rotated "
                    "one; '-' reads it from stdin, out of ps and the shell history), "
                    "'ca-file FILE' (a PEM CA to trust; '' goes back to the system's). "
                    "The next command uses them.",
        epilog=EXIT_CODES_HELP,
    )
    p.set_defaults(func=as_command(cmd_config_set))
    p.add_argument("key", choices=KEYS, metavar="KEY", help=f"one of {', '.join(KEYS)}")
    p.add_argument("value", metavar="VALUE", help="the new value")
    p._negative_number_matcher = _DASH_VALUE  # a token may begin with '-'

    p = add("check", cmd_check, "verify every local blob (and with --remote, the server's)",
            "Verify the tag of every blob on this device; with --remote also compare the "
            "local and remote listings and each remote blob's tag with the local copy's "
            "(remote blobs not verified here are downloaded and verified). Prints each "
            "problem and exits 5 if there is any (with --repair: any left unrepaired).")
    p.add_argument("--remote", action="store_true",
                   help="also check the server's blobs against this device")
    p.add_argument("--repair", action="store_true",
                   help="put every synced blob whose local copy is missing or damaged back "
                        "to be downloaded at the next sync")

    incoming = subparsers.add_parser(
        "incoming", parents=[common], help="the incoming box (namespace MX)",
        description="Work on the incoming box: messages that services deliver for you.",
        epilog=EXIT_CODES_HELP,
    )
    incoming_sub = incoming.add_subparsers(dest="incoming_command", metavar="ACTION",
                                           required=True, help="what to do")
    p = incoming_sub.add_parser(
        "process", parents=[common], help="process pending messages with a command",
        description="Reserve each pending message, run CMD (through the shell) with the "
                    "payload on stdin and BLOBSYNC_BLOB_ID in the environment. Exit status "
                    "0 marks it PROCESSED and deletes it; anything else marks it FAILED.",
        epilog=EXIT_CODES_HELP,
    )
    p.set_defaults(func=as_command(cmd_incoming_process))
    p.add_argument("--exec", required=True, metavar="CMD", help="shell command per message")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="process at most N messages (default: %(default)s)")
    p.add_argument("--watch", action="store_true",
                   help="keep processing messages as they are delivered, until Ctrl-C "
                        "(exit 130); one line per message: incoming MX ID (OUTCOME), "
                        "with --json a JSON object per line")
