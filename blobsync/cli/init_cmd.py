"""``blobsync init``: the profile of this device, with a new, imported or recovered
storage secret."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .client_runtime import check_id, resolve_home
from .config_cmds import check_ca_file, check_server
from .failures import EXIT_OK, CommandFailed, UsageError
from .output import Output
from .passphrase import check_new, read_passphrase


async def cmd_init(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client import BlobManager

    home = resolve_home(args)
    check_id(args.user, "user")
    check_server(args.server)
    token = args.token or os.environ.get("BLOBSYNC_TOKEN")
    if not token:
        raise UsageError("--token is required (or set BLOBSYNC_TOKEN)")
    if args.secret_file is not None and not Path(args.secret_file).is_file():
        raise CommandFailed(f"no such secret file: {args.secret_file}")
    settings = None
    if args.ca_file is not None:
        from blobsync.client import ClientSettings

        settings = ClientSettings(ca_file=check_ca_file(args.ca_file))
    # A new secret gets a new passphrase, typed twice; recovering uses the existing one.
    passphrase = read_passphrase(args, confirm=not args.recover)
    if not args.recover:  # recovering takes the other device's, however long it is
        check_new(passphrase)
    manager = await BlobManager.init(
        home,
        server=args.server,
        user=args.user,
        token=token,
        passphrase=passphrase,
        secret_file=args.secret_file,
        recover=args.recover,
        settings=settings,
    )
    await manager.close()
    how = "recovered the secret" if args.recover else "created the profile"
    out.line(f"{how} at {home} for user {args.user} on {args.server}")
    out.document(
        {"home": str(home), "server": args.server, "user": args.user, "recovered": args.recover}
    )
    return EXIT_OK
