"""How a client command of ``blobsync`` runs: the profile's home, the settings a
command overrides, the opened BlobManager, and the wrapper that turns an async handler
into the ``func(args) -> int`` that cli.main dispatches (one stderr line on failure).

Heavy imports (the client library) happen inside the functions so that ``blobsync --help``
stays quick.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .failures import DEBUG_ENV, UsageError, guarded
from .output import Output, detail, verbosity
from .passphrase import read_passphrase

HOME_ENV = "BLOBSYNC_HOME"
DEFAULT_HOME = "~/.blobsync"
# Multiplies the library's 10..60 s retry schedule; tests set it small so they never wait.
RETRY_SCALE_ENV = "BLOBSYNC_RETRY_SCALE"
# Seconds a command that changes the profile waits for another process holding it.
LOCK_WAIT_ENV = "BLOBSYNC_LOCK_WAIT"
# Seconds put and sync keep retrying passing failures before leaving blobs pending.
DEFAULT_MAX_WAIT = 60.0

Handler = Callable[[argparse.Namespace, Output], Awaitable[int]]


def default_home() -> str:
    return os.environ.get(HOME_ENV) or DEFAULT_HOME


def resolve_home(args: argparse.Namespace) -> Path:
    home = getattr(args, "home", None) or default_home()
    return Path(home).expanduser()


def _quiet_library_logs() -> None:
    """The library logs warnings (a retry, a blob that did not verify); without a handler
    Python would print them on stderr, breaking the one-line error contract. Seen with
    BLOBSYNC_DEBUG=1."""
    import logging

    client_log = logging.getLogger("blobsync.client")
    if os.environ.get(DEBUG_ENV):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    elif verbosity() >= 1 and not client_log.handlers:
        # -v: what the library says of retries and skipped blobs; -vv: all it logs.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("blobsync: %(message)s"))
        client_log.addHandler(handler)
        client_log.setLevel(logging.INFO if verbosity() == 1 else logging.DEBUG)
        client_log.propagate = False
    elif not client_log.handlers:
        client_log.addHandler(logging.NullHandler())
        client_log.propagate = False


def as_command(
    handler: Handler, prelude: Callable[[argparse.Namespace], None] | None = None
) -> Callable[[argparse.Namespace], int]:
    """Wrap an async handler into the ``func(args) -> int`` that main dispatches.
    ``prelude(args)`` runs first, before the event loop and most of the client are loaded
    (sync starts its passphrase KDF there, so that loading overlaps it)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        out = Output(bool(getattr(args, "json", False)))

        def body() -> int:
            if prelude is not None:
                prelude(args)
            import asyncio

            from blobsync.client.lock import describe_process

            _quiet_library_logs()
            # Who holds the profile, as a waiting process will read it: the command, never
            # its arguments (put's are file paths, which stay in the encrypted store).
            name = f"blobsync {handler.__name__.removeprefix('cmd_').replace('_', ' ')}"
            describe_process(name)
            started = time.monotonic()
            try:
                return asyncio.run(handler(args, out))
            finally:
                out.flush_lines()  # lines the loop did not get to write
                detail(f"{name} took {time.monotonic() - started:.2f} s")

        return guarded(body, out.error)

    return run


def _settings(settings: Any, *, stream: bool = True, max_wait: float | None = None) -> Any:
    """The profile's ``settings`` with this command's overrides."""
    import dataclasses

    changes: dict[str, Any] = {}
    if not stream:
        changes["stream"] = False
    for env, field in ((RETRY_SCALE_ENV, "retry_scale"), (LOCK_WAIT_ENV, "lock_wait")):
        value = os.environ.get(env)
        if value:
            try:
                changes[field] = float(value)
            except ValueError:
                raise UsageError(f"{env} must be a number, not {value!r}") from None
    # A person at a terminal should not wait forever on a server that is down: retries
    # stop after max_wait seconds and what is left stays pending for the next sync.
    if max_wait is not None:
        changes["max_sync_wait"] = max_wait
    elif settings.max_sync_wait is None:
        changes["max_sync_wait"] = DEFAULT_MAX_WAIT
    try:
        return dataclasses.replace(settings, **changes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@asynccontextmanager
async def open_manager(
    args: argparse.Namespace, *, stream: bool = True, reading: bool = False,
    passphrase: str | None = None,
) -> AsyncIterator[Any]:
    """The opened BlobManager of the profile at --home, closed however the command ends.
    ``reading``: the command only reads the local store, which then opens on a full disk.
    ``passphrase``: read already (else it is read here)."""
    from blobsync.client import BlobManager
    from blobsync.client.profile import Profile

    home = resolve_home(args)
    # NotInitialized now, before asking for a passphrase that could not help anyway.
    profile = Profile.load(home)
    settings = _settings(profile.client_settings(), stream=stream,
                         max_wait=getattr(args, "max_wait", None))
    if passphrase is None:
        passphrase = read_passphrase(args)
    manager = await BlobManager.open(home, passphrase=passphrase, settings=settings,
                                     reading=reading)
    detail(f"profile {home}: user {profile.user} on {profile.server}")
    try:
        yield manager
    except BaseException:
        # The command's own error is the one to tell: closing after it may fail too (on
        # the same full disk, say) and must not replace it.
        with contextlib.suppress(Exception):
            await manager.close()
        raise
    await manager.close()


def check_id(value: str, what: str) -> str:
    from blobsync.format.limits import valid_id

    if not valid_id(value):
        raise UsageError(f"invalid {what} {value!r}: use 1-254 of A-Z a-z 0-9 _ -")
    return value


def count_of(value: Any) -> int:
    """Report fields may be counts or lists of ids; scripts get counts either way."""
    if isinstance(value, int):
        return value
    try:
        return len(value)
    except TypeError:
        return 0


def ids_of(value: Any) -> list[str]:
    if isinstance(value, int):
        return []
    return [str(v) for v in value or []]
