"""Server and administration commands: ``server``, ``user``, ``service``, ``admin gc``,
``admin import-soledad``.

User and service commands touch only the metadata index, so they work while a server runs
on the same data (SQLite in WAL mode, or PostgreSQL). Tokens are printed once, alone on
stdout, and stored only as their SHA-256. ``admin gc`` only deletes old orphans, so it too
runs beside servers. ``admin import-soledad`` writes payloads: on the embedded store it
takes the data dir's lock, as a server does (server/datalock.py), so that a server's
start-up sweep, which takes every orphan at once, never meets an import's payload that
is not indexed yet.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from blobsync.cli.demo import demo_user
from blobsync.cli.failures import guarded
from blobsync.format.errors import BlobsyncError
from blobsync.format.limits import valid_id

T = TypeVar("T")

class CommandError(BlobsyncError):
    exit_code = 1


class UsageError(CommandError):
    """An argument the command parses but cannot take: exit 2, as argparse's own errors."""

    exit_code = 2


# --------------------------------------------------------------------------- plumbing


def _guard(body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Every failure is one line on stderr and an exit code (failures.guarded, as for the
    client commands): 1, or 2 for a usage error; never a traceback."""

    def run(args: argparse.Namespace) -> int:
        def call() -> int:
            try:
                return body(args)
            except ValueError as exc:  # a bad setting (ConfigError, a size, a duration)
                raise CommandError(str(exc) or type(exc).__name__) from None

        return guarded(call)

    return run


def _config(args: argparse.Namespace) -> Any:
    from blobsync.server.config import KEYS, load_config

    given = {k: getattr(args, k) for k in KEYS if getattr(args, k, None) is not None}
    return load_config(given, os.environ, getattr(args, "config", None))


def _check_name(value: str, what: str) -> str:
    if not valid_id(value):
        raise CommandError(f"invalid {what} {value!r}: must match [A-Za-z0-9_-]{{1,254}}")
    return value


def _require_store(config: Any) -> None:
    """Refuse a data directory the server has not made: a typo in ``--data`` would
    otherwise create a new, empty store and put a user or token where no server looks.
    Only the embedded SQLite index lives there; a PostgreSQL index needs no data dir."""
    from blobsync.server.storage.factory import INDEX_FILE

    if config.metadata is None and not os.path.isfile(os.path.join(config.data, INDEX_FILE)):
        raise CommandError(
            f"no blobsync data directory at {config.data} "
            f"(start the server once with --data {config.data} to create it)"
        )


def _with_index(args: argparse.Namespace, job: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``job(index)`` on the configured metadata index, opened and closed around it."""
    from blobsync.server.storage.factory import make_index

    config = _config(args)
    _require_store(config)

    async def run() -> T:
        index = make_index(config.data, config.metadata)
        await index.open()
        try:
            return await job(index)
        finally:
            await index.close()

    import asyncio

    return asyncio.run(run())


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- server


def cmd_server(args: argparse.Namespace) -> int:
    from blobsync.server.app import run_server
    from blobsync.server.logs import setup_logging

    config = _config(args)
    setup_logging(config.log_level)
    if config.workers > 1:
        if args.demo:
            raise CommandError("--demo runs a single process: leave out --workers")
        from blobsync.server.workers import serve_workers

        return serve_workers(config, config.workers)
    on_ready = functools.partial(demo_user, config.data) if args.demo else None
    try:
        import asyncio

        asyncio.run(run_server(config, on_ready=on_ready))
    except KeyboardInterrupt:
        pass  # a second Ctrl-C during shutdown
    return 0


# --------------------------------------------------------------------------- users


def _issue_token(args: argparse.Namespace, record: Callable[[Any, str], Awaitable[Any]]) -> int:
    """Make a token, store only its hash through ``record(index, hash)``, print it alone."""
    from blobsync.server.auth import hash_token, new_token

    token = new_token()
    _with_index(args, lambda index: record(index, hash_token(token)))
    _print(token)
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    uuid = _check_name(args.uuid, "uuid")
    return _issue_token(args, lambda index, digest: index.add_user(uuid, digest))


def cmd_user_list(args: argparse.Namespace) -> int:
    for user in _with_index(args, lambda index: index.list_users()):
        _print(user.name)
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    uuid = _check_name(args.uuid, "uuid")
    _with_index(args, lambda index: index.remove_user(uuid))
    return 0


def cmd_user_token(args: argparse.Namespace) -> int:
    uuid = _check_name(args.uuid, "uuid")
    return _issue_token(args, lambda index, digest: index.set_user_token(uuid, digest))


# --------------------------------------------------------------------------- services


def cmd_service_add(args: argparse.Namespace) -> int:
    from blobsync.server.routes_incoming import SERVICES

    name = _check_name(args.name, "service name")
    if name not in SERVICES:
        # A token for a name no endpoint accepts would only ever get 403s.
        raise UsageError(f"unknown service {name!r}: the server uses {', '.join(SERVICES)}")
    return _issue_token(args, lambda index, digest: index.add_service(name, digest))


def cmd_service_list(args: argparse.Namespace) -> int:
    for service in _with_index(args, lambda index: index.list_services()):
        _print(service.name)
    return 0


def cmd_service_remove(args: argparse.Namespace) -> int:
    name = _check_name(args.name, "service name")
    _with_index(args, lambda index: index.remove_service(name))
    return 0


# --------------------------------------------------------------------------- admin


def cmd_admin_gc(args: argparse.Namespace) -> int:
    from blobsync.server.storage.factory import make_store

    config = _config(args)
    _require_store(config)

    async def run() -> tuple[int, int]:
        from blobsync.server.storage.sweep import compact_feed

        store = make_store(config.data, config.metadata, config.payload,
                           inline_max=config.inline_max)
        await store.open()
        try:
            removed = (await store.sweep(args.grace)).removed  # and gives the space back
            return removed, await compact_feed(store, config.feed_retention)
        finally:
            await store.close()

    import asyncio

    removed, dropped = asyncio.run(run())
    _print(str(removed))  # the first line, as before the feed: scripts read it
    _print(str(dropped))
    return 0


def cmd_admin_import_soledad(args: argparse.Namespace) -> int:
    """Exit 0 when every blob came in (or was there already), 5 when some were invalid."""
    from blobsync.server.datalock import hold_data_dir
    from blobsync.server.soledad_import import import_soledad
    from blobsync.server.storage.factory import make_store

    config = _config(args)
    namespace = _check_name(args.namespace_default, "namespace")
    if not os.path.isdir(args.dir):
        raise CommandError(f"not a directory: {args.dir}")
    if config.metadata is None or config.payload is None:
        # Unlike the other commands, an import may make the data dir: filling a new store
        # is what it is for. Its summary names the blobs, so a typo does not go unseen.
        os.makedirs(config.data, exist_ok=True)

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    async def run() -> Any:
        # No quota and no size limit: existing data comes in whole; quotas apply to
        # what clients write afterwards.
        store = make_store(config.data, config.metadata, config.payload,
                           inline_max=config.inline_max)
        await store.open()
        try:
            return await import_soledad(
                store, args.dir, namespace_default=namespace, report=progress
            )
        finally:
            await store.close()

    with hold_data_dir(config, "blobsync admin import-soledad"):
        import asyncio

        report = asyncio.run(run())
    progress(report.summary())
    return 5 if report.invalid else 0


# --------------------------------------------------------------------------- parsers


def _store_options(payload: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--data", metavar="DIR",
                        help="data directory (default: ./blobsync-data; env BLOBSYNC_DATA)")
    parent.add_argument("--metadata", metavar="URL",
                        help="metadata index: unset for SQLite in the data directory, "
                        "postgresql://... or memory: (env BLOBSYNC_METADATA)")
    if payload:
        parent.add_argument("--payload", metavar="URL",
                            help="payload store: unset for SQLite and files in the data directory, "
                            "s3://bucket/prefix or memory: (env BLOBSYNC_PAYLOAD)")
    parent.add_argument("--config", metavar="FILE",
                        help="TOML file of settings (env BLOBSYNC_CONFIG)")
    return parent


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    return parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)


def register(subparsers: Any) -> None:
    """Add server, user, service and admin to ``blobsync``'s subparsers."""
    full = _store_options(payload=True)
    index_only = _store_options(payload=False)

    server = subparsers.add_parser(
        "server", parents=[full], help="run the blobs server",
        description="Run the public API and the local incoming endpoint. Settings come from "
        "options, else BLOBSYNC_* environment variables, else the TOML file, else defaults.",
    )
    server.add_argument("--host", help="public address (default 127.0.0.1)")
    server.add_argument("--port", help="public port (default 2424)")
    server.add_argument("--local-host", dest="local_host",
                        help="incoming endpoint address (default 127.0.0.1)")
    server.add_argument("--local-port", dest="local_port",
                        help="incoming endpoint port (default 2525)")
    server.add_argument("--quota", metavar="BYTES",
                        help="default per-user quota, 0 for none (K, M, G, T suffixes)")
    server.add_argument("--max-blob-size", dest="max_blob_size", metavar="BYTES",
                        help="largest blob, 0 for no limit (default 4G)")
    server.add_argument("--max-stream-size", dest="max_stream_size", metavar="BYTES",
                        help="largest stream upload, 0 for no limit (default 1G)")
    server.add_argument("--inline-max", dest="inline_max", metavar="BYTES",
                        help="PostgreSQL metadata + S3 payloads: keep payloads up to this size "
                        "as rows in PostgreSQL, not S3 objects; 0 for none (default and "
                        "most 256K)")
    server.add_argument("--tls-cert", dest="tls_cert", metavar="FILE", help="PEM certificate")
    server.add_argument("--tls-key", dest="tls_key", metavar="FILE", help="PEM private key")
    server.add_argument("--log-level", dest="log_level",
                        help="debug, info (default), warning or error")
    server.add_argument("--workers", metavar="N",
                        help="server processes sharing the ports (SO_REUSEPORT), default 1")
    server.add_argument("--sweep-interval", dest="sweep_interval", metavar="SECONDS",
                        help="sweep orphan payloads at start-up and this often, 0 never "
                        "(default 3600; 15m, 1h, 2d also work)")
    server.add_argument("--sweep-grace", dest="sweep_grace", metavar="SECONDS",
                        help="spare orphan payloads younger than this (default 3600)")
    server.add_argument("--feed-retention", dest="feed_retention", metavar="SECONDS",
                        help="drop feed changes older than this at each sweep, 0 never "
                        "(default 30d); older cursors get 410")
    server.add_argument("--feed-heartbeat", dest="feed_heartbeat", metavar="SECONDS",
                        help="comment line on an idle event stream this often (default 15)")
    # `make run` only: create (or reuse) a demo user and print a client command.
    server.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    server.set_defaults(func=_guard(cmd_server))

    user = subparsers.add_parser("user", help="manage users (works while the server runs)")
    user_sub = _subcommands(user)
    p = user_sub.add_parser("add", parents=[index_only],
                            help="create a user and print its token")
    p.add_argument("uuid")
    p.set_defaults(func=_guard(cmd_user_add))
    p = user_sub.add_parser("list", parents=[index_only], help="print every user")
    p.set_defaults(func=_guard(cmd_user_list))
    p = user_sub.add_parser("remove", parents=[index_only],
                            help="remove a user and its blobs' index rows")
    p.add_argument("uuid")
    p.set_defaults(func=_guard(cmd_user_remove))
    p = user_sub.add_parser("token", parents=[index_only],
                            help="issue a new token (the old one stops working)")
    p.add_argument("uuid")
    p.set_defaults(func=_guard(cmd_user_token))

    service = subparsers.add_parser("service", help="manage local service tokens")
    service_sub = _subcommands(service)
    # The names of routes_incoming.SERVICES, spelt out so that --help need not import the
    # server (tests/server/test_server_cli.py keeps the two the same).
    p = service_sub.add_parser("add", parents=[index_only],
                               help="add a service (or replace its token); print the token. "
                               "The server uses one: incoming",
                               description="Add a local service, or replace its token, and "
                               "print the token. Valid names: incoming (delivers messages "
                               "to users' incoming box, namespace MX).")
    p.add_argument("name", help="the service's name; valid names: incoming")
    p.set_defaults(func=_guard(cmd_service_add))
    p = service_sub.add_parser("list", parents=[index_only], help="print every service")
    p.set_defaults(func=_guard(cmd_service_list))
    p = service_sub.add_parser("remove", parents=[index_only], help="remove a service")
    p.add_argument("name")
    p.set_defaults(func=_guard(cmd_service_remove))

    admin = subparsers.add_parser("admin", help="maintenance")
    admin_sub = _subcommands(admin)
    p = admin_sub.add_parser("gc", parents=[full],
                             help="delete payloads no index row names and compact the change "
                             "feed; print how many payloads, then how many changes")
    p.add_argument("--grace", type=_duration, default=3600.0, metavar="SECONDS",
                   help="spare payloads younger than this: seconds, or 30s, 15m, 1h, 2d "
                   "(default 3600)")
    p.add_argument("--feed-retention", dest="feed_retention", metavar="SECONDS",
                   help="also drop feed changes older than this, 0 never (default 30d, or "
                   "BLOBSYNC_FEED_RETENTION / the config file's)")
    p.set_defaults(func=_guard(cmd_admin_gc))
    p = admin_sub.add_parser(
        "import-soledad", parents=[full],
        help="import a Soledad server's blobs directory into this store",
        description="Import every blob, flag and deletion of a Soledad blobs directory "
        "({dir}/{user}/{namespace}/...). Invalid blobs are skipped and reported; blobs "
        "already present are skipped, so the import can be re-run. Users are not created: "
        "add each with `blobsync user add UUID`. Exit 0 if all blobs are in, 5 if some "
        "were invalid.",
    )
    p.add_argument("dir", metavar="DIR", help="Soledad's blobs directory")
    p.add_argument("--namespace-default", dest="namespace_default", default="default",
                   metavar="NS", help="namespace for Soledad's default one (default: default)")
    p.set_defaults(func=_guard(cmd_admin_import_soledad))


def _duration(text: str) -> float:
    """A duration argument, read as the config file reads one (``90``, ``15m``, ``1h``)."""
    from blobsync.server.config import ConfigError, parse_duration

    try:
        return parse_duration(text, "duration")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("duration: ")) from None
