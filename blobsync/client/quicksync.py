"""The sync that has nothing to do, found out cheaply (SPEC 8: one request).

``blobsync sync`` is a process of its own, and most of its time is spent loading code: the
aiohttp client alone takes longer to import (about 0.1 s here) than the request it makes.
When this namespace has no blob waiting for a transfer here and the server's change feed
has nothing after this device's cursor, there is nothing to do, and that can be known
with the standard library's HTTP client, the scrypt KDF running meanwhile in a thread.
Anything else, including any error, answers None: the caller then runs the real sync,
which does the work and reports errors in its own words. This path never writes to the
store and never decides anything the real sync would decide otherwise: it stops exactly
where a feed page with no change and the same cursor stops ``FeedSync.apply``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .model import SyncStatus
from .profile import Profile
from .secrets import decrypt_secret
from .settings import ClientSettings

if TYPE_CHECKING:
    import http.client

PENDING = (SyncStatus.PENDING_DOWNLOAD, SyncStatus.PENDING_UPLOAD, SyncStatus.PENDING_DELETE)
GIVEN_UP = (SyncStatus.FAILED_UPLOAD, SyncStatus.FAILED_DOWNLOAD)


class Unlocking:
    """The scrypt KDF of a profile's storage secret, in a thread of its own: started
    before the event loop and most of the client are loaded, which it overlaps (scrypt
    leaves the GIL free)."""

    def __init__(self, home: str | Path, passphrase: str) -> None:
        self.profile = Profile.load(home)
        self._document = self.profile.secret_path.read_bytes()
        self._passphrase = passphrase
        self._secret: bytes | None = None
        self._thread = threading.Thread(target=self._run, name="unlocking", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._secret = decrypt_secret(self._document, self._passphrase)
        except Exception:  # noqa: BLE001 - a wrong passphrase: the real sync says so
            self._secret = None

    async def secret(self) -> bytes | None:
        """The secret, or None if the passphrase did not open it."""
        await asyncio.to_thread(self._thread.join)
        return self._secret


async def unchanged(unlocking: Unlocking, namespace: str) -> list[str] | None:
    """The ids given up on earlier (FAILED_*) in ``namespace`` when a sync of it would
    have nothing to do; None when it may have something to do, or could not tell."""
    profile = unlocking.profile
    try:
        settings = profile.client_settings()
        # Loaded while scrypt runs.
        from yarl import URL

        from .enroll import new_store

        _load_http_client()
        secret = await unlocking.secret()
        if secret is None:
            return None
    except Exception:  # noqa: BLE001 - the real sync says what is wrong
        return None
    store = new_store(profile, secret, settings)
    try:
        looked = await store.peek()  # nothing written: this path decides nothing
    except Exception:  # noqa: BLE001
        looked = False
    if not looked:
        await store.close()
        return None
    try:
        if await store.next_wake(namespace, PENDING) is not None:
            return None
        server = str(URL(profile.server.rstrip("/") + "/"))  # FeedSync.server's spelling
        cursor = await store.cursor(server, namespace)
        if cursor is None:
            return None
        answer = await asyncio.to_thread(
            _feed_page, server, profile.user, profile.token, namespace, cursor, settings
        )
        if answer is None or answer.get("changes") != [] or answer.get("done") is not True:
            return None
        if answer.get("cursor") != cursor:
            return None  # other namespaces moved it: the real sync stores the new one
        return sorted(r.blob_id for r in await store.rows(namespace, GIVEN_UP))
    except Exception:  # noqa: BLE001
        return None
    finally:
        await store.close()


def _load_http_client() -> None:
    """The standard library's HTTP client, loaded while scrypt runs rather than after."""
    import http.client  # noqa: F401
    import ssl  # noqa: F401
    from urllib.parse import quote  # noqa: F401


def _feed_page(
    server: str, user: str, token: str, namespace: str, cursor: str, settings: ClientSettings
) -> dict[str, object] | None:
    """``GET /changes/{user}?since=...`` (one change at most): its JSON, or None."""
    import http.client
    import ssl
    from urllib.parse import quote, urlsplit

    url = urlsplit(server)
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=settings.ca_file)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            url.hostname or "", url.port, timeout=settings.connect_timeout, context=context
        )
    elif url.scheme == "http":
        conn = http.client.HTTPConnection(
            url.hostname or "", url.port, timeout=settings.connect_timeout
        )
    else:
        return None
    auth = "Token " + base64.b64encode(f"{user}:{token}".encode()).decode()
    path = (f"{url.path.rstrip('/')}/changes/{quote(user)}?since={quote(cursor)}"
            f"&namespace={quote(namespace)}&limit=1")
    try:
        conn.request("GET", path, headers={"Authorization": auth,
                                           "Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(1 << 16)
        if resp.status != 200:
            return None
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
