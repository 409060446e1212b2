"""``blobsync config show`` and ``config set``: the profile's server, token and CA file,
changed without editing config.json by hand (a rotated token, a moved server).

Neither needs the passphrase: config.json is not under it (it is mode 0600 instead, and
``set`` rewrites it atomically, keeping that mode). ``show`` never prints the token.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .client_runtime import resolve_home
from .failures import EXIT_OK, CommandFailed, UsageError
from .output import Output, info

KEYS = ("server", "token", "ca-file")


def check_ca_file(name: str) -> str:
    """The absolute path of a readable PEM CA bundle (the profile outlives the cwd)."""
    import ssl

    path = os.path.abspath(os.path.expanduser(name))
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise CommandFailed(f"no such CA file: {name}") from None
    except ssl.SSLError:  # an OSError too: first
        raise CommandFailed(f"not a PEM certificate (CA) file: {name}") from None
    except OSError as exc:
        raise CommandFailed(f"cannot read the CA file {name}: {exc.strerror or exc}") from None
    return path


def check_server(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"the server must be an http:// or https:// URL, not {url!r}")
    return url.rstrip("/")


async def cmd_config_show(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client.profile import Profile

    profile = Profile.load(resolve_home(args))
    settings: dict[str, Any] = dict(profile.settings)
    ca_file = settings.pop("ca_file", None)
    out.line(f"home:     {profile.home}")
    out.line(f"server:   {profile.server}")
    out.line(f"user:     {profile.user}")
    out.line("token:    (set; never shown)")
    out.line(f"ca-file:  {ca_file or '(none: the system certificate authorities)'}")
    out.line("settings:")
    for key in sorted(settings):
        # None: the setting was never set, and the command's own default applies.
        value = "(default)" if settings[key] is None else settings[key]
        out.line(f"  {key} = {value}")
    out.document({"home": str(profile.home), "server": profile.server, "user": profile.user,
                  "ca_file": ca_file, "settings": settings})
    return EXIT_OK


async def cmd_config_set(args: argparse.Namespace, out: Output) -> int:
    from blobsync.client.profile import Profile

    profile = Profile.load(resolve_home(args))
    value: str = args.value
    if args.key == "server":
        profile.server = check_server(value)
        shown = profile.server
    elif args.key == "token":
        if value == "-":  # from stdin, so that it never shows in ps or the shell history
            value = sys.stdin.readline().strip()
        if not value or any(c.isspace() for c in value):
            raise UsageError("the token must be a non-empty string without spaces")
        profile.token = value
        shown = "(not shown)"
    else:
        path = check_ca_file(value) if value else None  # '' goes back to the system's
        profile.settings["ca_file"] = path
        shown = path or "(none)"
    profile.save()  # atomic, mode 0600 (profile.write_private)
    info(f"{args.key} set to {shown} in {profile.config_path}")
    out.document({"key": args.key, "value": None if args.key == "token" else shown,
                  "home": str(profile.home)})
    return EXIT_OK
