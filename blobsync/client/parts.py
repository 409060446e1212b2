"""The parts of one opened profile that the manager's paths work with.

``BlobManager`` builds them once; ``putting``, ``getting``, ``deleting`` and ``check``
each take them whole (``Parts``) and keep what they use under the same names, so that no
path reaches into the manager and none lists the parts again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .localstore import LocalStore
from .lock import ProfileLock
from .settings import ClientSettings
from .sync import SyncEngine
from .transport import Transport


@dataclass(frozen=True)
class Parts:
    home: Path
    store: LocalStore
    transport: Transport
    engine: SyncEngine
    lock: ProfileLock
    settings: ClientSettings
    secret: bytes = field(repr=False)


class UsesParts:
    """A path of the manager: the parts as attributes (the secret as ``_secret``)."""

    def __init__(self, parts: Parts) -> None:
        self.home = parts.home
        self.store = parts.store
        self.transport = parts.transport
        self.engine = parts.engine
        self.lock = parts.lock
        self.settings = parts.settings
        self._secret = parts.secret

    def __repr__(self) -> str:  # never show the secret
        return f"<{type(self).__name__} home={self.home}>"
