"""blobsync client library: a local encrypted store kept in sync with a blobsync server.

Start with ``BlobManager.init(...)`` once per device, then ``BlobManager.open(...)``.
See docs/client.md.

The names below are loaded on first use (PEP 562): ``import blobsync.client.errors``, as
the CLI does to map errors to exit codes, must not drag in the whole client stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import (
        AlreadyOnServer,
        AuthFailed,
        BlobExists,
        BlobNotFound,
        ClientError,
        ConnectionLost,
        CursorGone,
        MissingBlobs,
        NoFeed,
        NotInitialized,
        PreconditionFailed,
        QuotaExceeded,
        RemoteError,
        ServerError,
        ServerUnreachable,
        TooLarge,
        TransientError,
        WrongPassphrase,
    )
    from .incoming import IncomingConsumer, IncomingReport, IncomingStreamConsumer
    from .manager import BlobManager
    from .model import ForgottenHere, Priority, Progress, ProgressCallback, SyncReport, SyncStatus
    from .secret_transfer import SECRET_BLOB_ID, SECRET_NAMESPACE
    from .settings import ClientSettings
    from .watch import WatchEvent

__all__ = [
    "AlreadyOnServer", "AuthFailed", "BlobExists", "BlobNotFound", "ClientError",
    "ConnectionLost", "MissingBlobs", "NotInitialized", "PreconditionFailed", "QuotaExceeded",
    "RemoteError", "ServerError", "ServerUnreachable", "TooLarge", "TransientError",
    "WrongPassphrase", "IncomingConsumer", "IncomingReport", "IncomingStreamConsumer",
    "SECRET_BLOB_ID", "SECRET_NAMESPACE", "BlobManager", "Priority", "Progress",
    "ProgressCallback", "SyncReport", "SyncStatus", "ClientSettings", "ForgottenHere",
    "WatchEvent", "CursorGone", "NoFeed",
]

# Which module defines each name; errors are the rest.
_WHERE = {
    **dict.fromkeys(("IncomingConsumer", "IncomingReport", "IncomingStreamConsumer"),
                    "incoming"),
    **dict.fromkeys(("SECRET_BLOB_ID", "SECRET_NAMESPACE"), "secret_transfer"),
    "BlobManager": "manager",
    **dict.fromkeys(("Priority", "Progress", "ProgressCallback", "SyncReport", "SyncStatus",
                     "ForgottenHere"), "model"),
    "ClientSettings": "settings",
    "WatchEvent": "watch",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name, "errors" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
