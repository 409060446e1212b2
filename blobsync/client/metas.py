"""Encrypted metas (SPEC 11) between this device and the server.

Up: the sealed meta a put kept on the row goes with the blob (a ``Blob-Meta`` header, or
the third element of its pair in a stream), only when the row has one, so a pair stays
``[blob_id, size]`` otherwise, and only to a server whose ``GET /`` lists "meta": to one
without, nothing is sent, the names stay on this device, and the profile says so once per
server (a warning, remembered in the local store).

Down: a full listing asks ``with_meta=true`` (a server without the extension ignores it
and answers ids: no request is spent asking first), the feed's put changes carry their
meta, and a GET its ``Blob-Meta``. Each meta is opened with the user's secret and what it
says fills the PENDING_DOWNLOAD row's name columns, so that a listing by name
(``BlobManager.entries``) shows the blob on every device. A meta that does not open is
ignored (a debug line): never an error of the sync.

``MetaSync`` is a part of ``SyncEngine`` (sync.py), as ``Uploads`` and ``Downloads`` are.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from blobsync.format import InvalidMeta, Meta, open_meta

from .errors import AuthFailed, ClientError, ServerError, TransientError
from .localstore.rows import names_columns

if TYPE_CHECKING:
    from .localstore import LocalStore
    from .transport import Transport

log = logging.getLogger("blobsync.client.sync")

# The local store's key, per server, of "this profile said the server keeps no metas".
WARNED_KEY = "no-meta-warned:"


async def listing_meta(
    transport: Transport, namespace: str
) -> tuple[list[str], dict[str, str], str | None]:
    """A full listing with ``with_meta=true``: the ids, the metas of those that have one,
    and the ``Changes-Cursor`` (None: the server has no feed). A plain list of ids (a
    server without SPEC 11) is a listing without metas."""
    what = f"listing namespace {namespace}"
    from .transport import _mapped

    url = transport._blobs(namespace=namespace, with_meta="true")
    with _mapped(what):
        async with transport.session.get(url) as resp:
            await transport._raise_for(resp, what)
            doc = await transport._json(resp, what)
            cursor = resp.headers.get("Changes-Cursor")
    if not isinstance(doc, list):
        raise ServerError("listing: not a JSON list", 502)
    if all(isinstance(e, str) for e in doc):
        return doc, {}, cursor
    if not all(isinstance(e, dict) and isinstance(e.get("blob_id"), str) for e in doc):
        raise ServerError("listing: not a JSON list of blobs", 502)
    metas = {e["blob_id"]: e["meta"] for e in doc if isinstance(e.get("meta"), str)}
    return [e["blob_id"] for e in doc], metas, cursor


class MetaSync:
    """The meta half of ``SyncEngine`` (a mixin: the engine holds the state)."""

    store: LocalStore
    transport: Transport
    _secret: bytes
    # Per engine (one session): whether the server keeps metas, asked once when needed.
    _server_metas: bool | None = None

    async def server_keeps_metas(self) -> bool:
        """Whether the server's ``GET /`` lists "meta" (SPEC 11). Asked once per session,
        and only when a meta is to be sent; said once per profile and server when not."""
        if self._server_metas is None:
            try:
                extensions = (await self.transport.info()).get("extensions")
            except (TransientError, AuthFailed):
                raise
            except ClientError as exc:  # an old server may not answer GET / at all
                log.debug("server information unavailable (%s): no metas sent", exc)
                extensions = None
            self._server_metas = isinstance(extensions, list) and "meta" in extensions
            if not self._server_metas:
                await self._say_no_metas()
        return self._server_metas

    async def _say_no_metas(self) -> None:
        server = str(self.transport.base)
        key = WARNED_KEY + server
        if await self.store.remembered(key) is None:
            log.warning("the server at %s does not keep names (SPEC 11): names, sizes and "
                        "times of blobs stay on this device only", server)
            await self.store.remember(key, "1")

    async def metas_to_send(self, namespace: str, blob_ids: list[str]) -> dict[str, str]:
        """The sealed metas of those of ``blob_ids`` that have one, if the server keeps
        them; {} otherwise (without asking the server when no row has a meta)."""
        metas = await self.store.metas(namespace, blob_ids)
        if metas and not await self.server_keeps_metas():
            return {}
        return metas

    def open_metas(self, metas: dict[str, str]) -> list[tuple[str, Meta, str]]:
        """The server's ``metas`` (blob_id -> sealed text) opened, (blob_id, what it says,
        the text) each; one that does not open is left out, with a debug line."""
        opened: list[tuple[str, Meta, str]] = []
        secret = self._secret
        for blob_id, text in metas.items():
            try:
                opened.append((blob_id, open_meta(secret, blob_id, text), text))
            except InvalidMeta as exc:  # its reason only: never the meta itself
                log.debug("the meta of blob %s is ignored: %s", blob_id, exc)
        return opened

    async def add_named_downloads(
        self, namespace: str, blob_ids: list[str], metas: dict[str, str]
    ) -> None:
        """Rows PENDING_DOWNLOAD for ``blob_ids``, each with what its meta says if it has
        one: written with the row, not added to it after."""
        wanted = {b: metas[b] for b in blob_ids if b in metas}
        names = {b: names_columns(meta, text) for b, meta, text in self.open_metas(wanted)}
        await self.store.add_pending_downloads(namespace, blob_ids, names)

    async def learn_metas(self, namespace: str, metas: dict[str, str]) -> int:
        """Open the server's ``metas`` (blob_id -> sealed text) and keep what they say on
        the blobs' PENDING_DOWNLOAD rows; returns how many rows took one."""
        opened = self.open_metas(metas)
        return await self.store.learn_metas(namespace, opened) if opened else 0
