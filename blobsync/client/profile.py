"""The home directory of one device: where config, secret and local store live.

Layout::

    home/               mode 0700
      config.json       server, user, token, settings (mode 0600: the token is a credential)
      secret.enc        the storage secret under the passphrase (mode 0600)
      local.db          SQLCipher database: blob state (namespaces, ids, statuses)
      payloads.db       plain SQLite: small sealed payloads (sealed already, like blobs/)
      blobs/ab/<name>   large sealed payloads; names are keyed HMACs, never blob ids
      tmp/              partial downloads (kept for Range resume) and files being written
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blobsync.format.limits import valid_id

from .errors import ClientError, NotInitialized
from .settings import ClientSettings

CONFIG_NAME = "config.json"
SECRET_NAME = "secret.enc"
DB_NAME = "local.db"
BLOBS_DIR = "blobs"
TMP_DIR = "tmp"
PROFILE_VERSION = 1


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically into a file only the owner can read."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # the umask may have narrowed it; never widened
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Profile:
    home: Path
    server: str
    user: str
    token: str = field(repr=False)  # a credential: never in tracebacks or debug output
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def secret_path(self) -> Path:
        return self.home / SECRET_NAME

    @property
    def db_path(self) -> Path:
        return self.home / DB_NAME

    @property
    def blobs_dir(self) -> Path:
        return self.home / BLOBS_DIR

    @property
    def tmp_dir(self) -> Path:
        return self.home / TMP_DIR

    @staticmethod
    def exists(home: str | Path) -> bool:
        return (Path(home) / CONFIG_NAME).exists() or (Path(home) / SECRET_NAME).exists()

    @classmethod
    def load(cls, home: str | Path) -> Profile:
        home = Path(home)
        path = home / CONFIG_NAME
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotInitialized(f"no blobsync profile at {home} (run init first)") from None
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read {path}: {exc}") from None
        try:
            profile = cls(
                home=home,
                server=str(doc["server"]),
                user=str(doc["user"]),
                token=str(doc["token"]),
                settings=dict(doc.get("settings") or {}),
            )
        except (KeyError, TypeError, ValueError):
            raise ClientError(f"{path} is missing server, user or token") from None
        if not (home / SECRET_NAME).exists():
            raise NotInitialized(f"{home} has no {SECRET_NAME} (run init first)")
        return profile

    def client_settings(self) -> ClientSettings:
        return ClientSettings.from_dict(self.settings)

    def create_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.home, 0o700)
        for d in (self.blobs_dir, self.tmp_dir):
            d.mkdir(exist_ok=True, mode=0o700)

    def save(self) -> None:
        doc = {
            "version": PROFILE_VERSION,
            "server": self.server,
            "user": self.user,
            "token": self.token,
            "settings": self.settings,
        }
        write_private(self.config_path, json.dumps(doc, indent=2).encode() + b"\n")


def check_profile_args(server: str, user: str, token: str) -> None:
    if not server.startswith(("http://", "https://")):
        raise ClientError(f"server must be an http:// or https:// URL, got {server!r}")
    if not valid_id(user):
        raise ClientError(f"user {user!r} is not a valid uuid (letters, digits, _ and -)")
    if not token or any(c.isspace() for c in token):
        raise ClientError("token must be a non-empty string without spaces")
