"""blobsync client library: a local encrypted store kept in sync with a blobsync server.

Start with ``BlobManager.init(...)`` once per device, then ``BlobManager.open(...)``.
See docs/client.md.
"""

from .errors import (
    AlreadyOnServer,
    AuthFailed,
    BlobExists,
    BlobNotFound,
    ClientError,
    ConnectionLost,
    MissingBlobs,
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
from .incoming import IncomingConsumer, IncomingReport
from .manager import SECRET_BLOB_ID, SECRET_NAMESPACE, BlobManager
from .model import Priority, Progress, ProgressCallback, SyncReport, SyncStatus
from .settings import ClientSettings

__all__ = [
    "AlreadyOnServer", "AuthFailed", "BlobExists", "BlobNotFound", "ClientError",
    "ConnectionLost", "MissingBlobs", "NotInitialized", "PreconditionFailed", "QuotaExceeded",
    "RemoteError", "ServerError", "ServerUnreachable", "TooLarge", "TransientError",
    "WrongPassphrase", "IncomingConsumer", "IncomingReport", "SECRET_BLOB_ID",
    "SECRET_NAMESPACE", "BlobManager", "Priority", "Progress", "ProgressCallback",
    "SyncReport", "SyncStatus", "ClientSettings",
]
