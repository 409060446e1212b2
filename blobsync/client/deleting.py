"""The delete path: a blob removed here and on the server, or forgotten here only when
the server never held this device's blob (SPEC 7).

``BlobManager.delete`` checks the ids and delegates here. A ``Deleter`` is handed what it
uses (the store, the transport, the sync engine, the writer lock, the settings), nothing
of the manager's.
"""

from __future__ import annotations

import logging

from blobsync.format import TAG_SIZE

from .errors import BlobNotFound, ClientError, TransientError
from .model import ForgottenHere, SyncStatus
from .parts import UsesParts

log = logging.getLogger("blobsync.client")


class Deleter(UsesParts):
    async def delete(
        self, namespace: str, blob_id: str
    ) -> TransientError | ForgottenHere | None:
        """BlobManager.delete (its docstring says what) with the ids checked."""
        # Under the writer lock: an upload of this blob by another process (which holds
        # it for the whole upload) lands first, and the DELETE comes after it.
        async with self.lock.hold("rm"):
            return await self._delete(namespace, blob_id)

    async def _delete(
        self, namespace: str, blob_id: str
    ) -> TransientError | ForgottenHere | None:
        row = await self.store.get(namespace, blob_id)
        if row is not None and row.status is SyncStatus.LOCAL_ONLY:
            await self.store.remove(namespace, blob_id)
            return None
        if row is not None and row.status is SyncStatus.FAILED_UPLOAD:
            # Given up on: the server never held this device's blob, and what it may hold
            # under the id (an id conflict) is another device's.
            await self.store.remove(namespace, blob_id)
            return ForgottenHere("it never reached the server")
        expect_tag: bytes | None = None
        if row is not None and row.status is SyncStatus.PENDING_UPLOAD:
            try:
                expect_tag = await self.store.tail(row, TAG_SIZE)
            except ClientError:  # no readable local copy: nothing to tell ours by
                await self.store.remove(namespace, blob_id)
                return ForgottenHere("its local copy is unreadable")
            if not self.engine.uploading(namespace, blob_id):
                try:
                    theirs = await self.transport.blob_tail(namespace, blob_id)
                except TransientError as exc:
                    # Queued with the tag: the sync deletes only this very blob.
                    return await self._postpone_delete(namespace, blob_id, expect_tag, exc)
                if theirs is None:
                    await self.store.remove(namespace, blob_id)
                    return ForgottenHere("it never reached the server")
                if theirs != expect_tag:
                    await self.store.remove(namespace, blob_id)
                    return ForgottenHere("the server holds another blob under that id")
                expect_tag = None  # the very blob is there: ours to delete
        if row is None:
            try:
                await self.transport.delete_blob(namespace, blob_id)
            except BlobNotFound:
                raise BlobNotFound(f"blob {blob_id} not found (namespace {namespace})") from None
            except TransientError as exc:
                await self.store.insert(namespace, blob_id, SyncStatus.PENDING_DELETE)
                return exc
            return None
        old = await self.store.drop_payload(
            namespace, blob_id, SyncStatus.PENDING_DELETE, expect_tag=expect_tag
        )
        if old is not None:
            await self.store.discard_files(old)
        if self.engine.uploading(namespace, blob_id):
            # A DELETE now could come before that upload lands, and the blob would be
            # back. The upload sends the DELETE once done (else the next sync does).
            return None
        try:
            await self.transport.delete_blob(namespace, blob_id)
        except BlobNotFound:
            pass
        except TransientError as exc:
            log.warning("delete of %s on the server postponed: %s", blob_id, exc)
            await self.store.schedule_retry(
                namespace, [blob_id], SyncStatus.PENDING_DELETE, delay=self.settings.retry_delay
            )
            return exc
        await self.store.remove_many(namespace, [blob_id], only_if=[SyncStatus.PENDING_DELETE])
        return None

    async def _postpone_delete(
        self, namespace: str, blob_id: str, expect_tag: bytes, exc: TransientError
    ) -> TransientError:
        log.warning("delete of %s on the server postponed: %s", blob_id, exc)
        old = await self.store.drop_payload(
            namespace, blob_id, SyncStatus.PENDING_DELETE, expect_tag=expect_tag
        )
        if old is not None:
            await self.store.discard_files(old)
        await self.store.schedule_retry(
            namespace, [blob_id], SyncStatus.PENDING_DELETE, delay=self.settings.retry_delay
        )
        return exc
