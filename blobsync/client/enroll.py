"""A device's profile made (``init``: a new secret, an imported one, or the one another
device left on the server) and unlocked (``open``): what ``BlobManager.init`` and
``BlobManager.open`` do before there is a manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ClientError
from .localstore import LocalStore
from .profile import (
    BLOBS_DIR,
    CONFIG_NAME,
    DB_NAME,
    SECRET_NAME,
    TMP_DIR,
    Profile,
    check_profile_args,
    write_private,
)
from .secret_transfer import delete_secret, download_secret, upload_secret
from .secrets import (
    decrypt_secret,
    encrypt_secret,
    generate_secret,
    load_raw_secret,
    names_key,
    store_key,
)
from .settings import ClientSettings
from .transport import Transport, load_http_stack


@dataclass(frozen=True)
class Unlocked:
    """What a BlobManager is made of: a profile whose store is open."""

    profile: Profile
    secret: bytes = field(repr=False)  # never shown, as BlobManager's repr
    settings: ClientSettings
    store: LocalStore
    transport: Transport


async def enroll(
    home: Path,
    *,
    server: str,
    user: str,
    token: str,
    passphrase: str,
    secret_file: str | Path | None,
    recover: bool,
    settings: ClientSettings | None,
) -> Unlocked:
    """``BlobManager.init``: create the profile at ``home``, or leave nothing behind."""
    if Profile.exists(home):
        raise ClientError(f"a blobsync profile already exists at {home}")
    check_profile_args(server, user, token)
    if recover and secret_file is not None:
        raise ClientError("recover and secret_file exclude each other")
    if not passphrase:
        raise ClientError("the passphrase must not be empty")
    settings = settings or ClientSettings()
    imported = load_raw_secret(secret_file) if secret_file is not None else None
    transport = new_transport(server, user, token, settings)
    created: list[Path] = []  # removed if init fails; never what was there before
    uploaded = False
    try:
        await transport.info()  # ServerUnreachable before anything else
        await transport.check_auth()  # AuthFailed
        if recover:
            document = await download_secret(transport)
            secret = await asyncio.to_thread(decrypt_secret, document, passphrase)
        else:
            secret = imported if imported is not None else generate_secret()
            document = await asyncio.to_thread(encrypt_secret, secret, passphrase)
            uploaded = await upload_secret(transport, document, secret, passphrase)
        profile = Profile(home, server.rstrip("/"), user, token, settings.to_dict())
        layout = [home, *(home / n for n in (BLOBS_DIR, TMP_DIR, CONFIG_NAME, SECRET_NAME)),
                  *(home / f"{DB_NAME}{s}" for s in ("", "-wal", "-shm"))]
        created = [p for p in layout if not p.exists()]
        profile.create_dirs()
        write_private(profile.secret_path, document)
        profile.save()
        store = new_store(profile, secret, settings)
        await store.open()
    except BaseException:
        if uploaded:
            # Ours and nobody else's yet: a later init must not be told that the
            # server already holds a secret (for a passphrase nobody may remember).
            with contextlib.suppress(Exception):
                await delete_secret(transport)
        await transport.close()
        _remove(created)
        raise
    return Unlocked(profile, secret, settings, store, transport)


async def unlock(
    home: str | Path, *, passphrase: str, settings: ClientSettings | None, reading: bool
) -> Unlocked:
    """``BlobManager.open``: decrypt the secret of the profile at ``home``, open its store."""
    profile = Profile.load(home)
    settings = settings or profile.client_settings()
    document = profile.secret_path.read_bytes()
    unlocking = asyncio.get_running_loop().run_in_executor(
        None, decrypt_secret, document, passphrase
    )
    # scrypt leaves the GIL free: the HTTP stack loads meanwhile, not after it.
    load_http_stack()
    secret = await unlocking
    store = new_store(profile, secret, settings)
    store.read_only_fallback = reading
    await store.open()
    transport = new_transport(profile.server, profile.user, profile.token, settings)
    return Unlocked(profile, secret, settings, store, transport)


def new_transport(server: str, user: str, token: str, settings: ClientSettings) -> Transport:
    return Transport(
        server, user, token,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        ca_file=settings.ca_file,
    )


def new_store(profile: Profile, secret: bytes, settings: ClientSettings) -> LocalStore:
    return LocalStore(
        profile.db_path, profile.blobs_dir, profile.tmp_dir,
        db_key=store_key(secret), names_key=names_key(secret), inline_max=settings.inline_max,
    )


def _remove(paths: list[Path]) -> None:
    for p in reversed(paths):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
