"""Who holds a lock file: the small JSON note that the profile lock (client/lock.py) and
the data-dir lock (server/datalock.py) both write beside their flock.

The note is read by another process that wants the lock, to name the holder in its
error. It may be missing, garbled or written by an older version, so every field is
optional. Never the command line itself: a put's arguments are file paths.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class LockHolder:
    pid: int | None
    host: str
    command: str
    since: float | None

    @staticmethod
    def note(command: str, **extra: str) -> bytes:
        """This process's note, to write beside a lock it holds."""
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
               **extra, "since": time.time()}
        return json.dumps(doc).encode() + b"\n"

    @classmethod
    def parse(cls, text: bytes) -> Self | None:
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        pid, since = doc.get("pid"), doc.get("since")
        return cls(
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            host=str(doc.get("host") or ""),
            command=str(doc.get("command") or ""),
            since=float(since) if isinstance(since, int | float) else None,
        )

    @property
    def who(self) -> str:
        return f"pid {self.pid}" if self.pid is not None else "an unknown process"

    @property
    def where(self) -> str:
        return self.host or "an unknown host"

    @property
    def when(self) -> str:
        if not self.since:
            return "an unknown time"
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))

    def gone(self) -> bool:
        """Whether the named holder is a process of this host that no longer exists."""
        if self.pid is None or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # EPERM: it exists, as another user
        return False
