"""``make run`` (``blobsync server --demo``): a demo user whose token survives restarts,
and a client command to paste into any shell: the program and the demo profile spelled
as absolute paths, since a new shell starts elsewhere and without the venv on PATH. The
first run's command makes the profile; a later one's uses it."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from blobsync.format.limits import valid_id

DEMO_FILE = "demo-user.txt"
DEMO_HOME = "demo-client"


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def demo_user(data_dir: str, store: Any, sites: Any) -> None:
    """Create (or reuse) the demo user and print the command to paste."""
    from blobsync.server.auth import hash_token, new_token

    path = Path(data_dir) / DEMO_FILE
    uuid, token = _read_demo(path)
    user = await store.index.get_user(uuid) if uuid else None
    if user is None or not token:
        import uuid as uuidlib

        uuid, token = str(uuidlib.uuid4()), new_token()
        await store.index.add_user(uuid, hash_token(token))
    elif user.token_hash != hash_token(token):
        await store.index.set_user_token(uuid, hash_token(token))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file an older blobsync made 0644 holds the token too
    with os.fdopen(fd, "w") as f:
        f.write(f"uuid={uuid}\ntoken={token}\n")
    _print(f"demo user:  {uuid}")
    _print(f"demo token: {token}")
    from blobsync.client.secret_transfer import SECRET_BLOB_ID, SECRET_NAMESPACE

    # A device made the secret already (its profile since removed): a new one recovers it.
    made = await store.index.get_blob(uuid, SECRET_NAMESPACE, SECRET_BLOB_ID) is not None
    command = client_command(Path.cwd() / DEMO_HOME, sites.url, uuid, token, recover=made)
    _print("client command, ready to paste:")
    _print(f"  {command}")


def client_command(home: Path, url: str, uuid: str, token: str, recover: bool = False) -> str:
    """``init`` of a demo profile at ``home`` (``--recover`` when the server holds the
    user's secret already); once it exists for this user, ``sync`` on it, after ``config
    set`` of what changed since (the port, the token)."""
    program = client_program()
    existing = _profile_of(home)
    if existing is not None and existing.get("user") != uuid:
        # Another demo user's (the data dir was reset): leave it, make one beside it.
        home = home.with_name(f"{home.name}-{uuid[:8]}")
        existing = _profile_of(home)
    at = f"{program} --home {shlex.quote(str(home))}"
    if existing is None:
        how = " --recover" if recover else ""
        return f"{at} init --server {url} --user {uuid} --token {token}{how}"
    steps = []
    if str(existing.get("server", "")).rstrip("/") != url.rstrip("/"):
        steps.append(f"{at} config set server {url}")
    if existing.get("token") != token:
        steps.append(f"{at} config set token {token}")
    steps.append(f"{at} sync")
    return " && ".join(steps)


def _profile_of(home: Path) -> dict[str, Any] | None:
    """The demo profile's config (not under the passphrase), if ``init`` made one."""
    try:
        doc = json.loads((home / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and (home / "secret.enc").exists() else None


def client_program() -> str:
    """This very blobsync, as a new shell finds it: ``blobsync`` when installed outside a
    venv on PATH; else its absolute path (after ``make run``, .venv/bin/blobsync of the
    repository, which a new shell has not on PATH)."""
    import shutil

    script = Path(sys.executable).parent / "blobsync"
    if not script.is_file():  # run as `python -m blobsync` from a source tree
        return f"{shlex.quote(os.path.abspath(sys.executable))} -m blobsync"
    on_path = shutil.which("blobsync")
    in_venv = sys.prefix != sys.base_prefix
    if not in_venv and on_path is not None and os.path.samefile(on_path, script):
        return "blobsync"
    return shlex.quote(os.path.abspath(script))


def _read_demo(path: Path) -> tuple[str | None, str | None]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None, None
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    uuid = values.get("uuid")
    return (uuid if uuid and valid_id(uuid) else None), values.get("token") or None
