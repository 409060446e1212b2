"""BlobManager: the one object applications (and the CLI) use.

It ties the profile, the storage secret, the local store, the transport, the sync engine
and the incoming box together. Plaintext exists only in memory here and in files the
caller names; keys never leave this process, and neither reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

from blobsync.format import (
    TAG_SIZE,
    InvalidBlob,
    Sealer,
    seal,
    sealed_size,
    valid_id,
)

from .check import Checker
from .destfile import DestFile, Target, ThroughFile, release_reader
from .destfile import resolve as resolve_dest
from .enroll import Unlocked, enroll, unlock
from .errors import (
    AlreadyOnServer,
    AuthFailed,
    BlobExists,
    BlobNotFound,
    ClientError,
    ServerError,
    TransientError,
    is_no_space,
    no_space,
)
from .incoming import IncomingConsumer, IncomingReport, IncomingStreamConsumer, process_incoming
from .localstore import LocalFileWriter as FileWriter
from .localstore import LocalStore, Row, Sealed, Source, read_file
from .lock import ProfileLock
from .model import (
    HAS_PAYLOAD,
    ForgottenHere,
    Priority,
    ProgressCallback,
    SyncReport,
    SyncStatus,
    priority_rank,
)
from .profile import Profile
from .settings import ClientSettings
from .sync import PHASES, SyncEngine
from .transport import Transport
from .verified import Provisional, open_into, reread_chunks

log = logging.getLogger("blobsync.client")

# put_many keeps small files this many (or this many plaintext bytes) per transaction:
# enough to make the commit cost vanish, little enough to bound memory.
PUT_BATCH_COUNT = 500
PUT_BATCH_BYTES = 4 << 20

class BlobManager:
    def __init__(
        self,
        profile: Profile,
        secret: bytes,
        settings: ClientSettings,
        store: LocalStore,
        transport: Transport,
    ) -> None:
        self.profile = profile
        self.settings = settings
        self.store = store
        self.transport = transport
        self._secret = secret
        self.engine = SyncEngine(store, transport, secret, settings)
        # One writer per profile across processes (lock.py); readers never take it.
        self.lock = ProfileLock(profile.home, wait=settings.lock_wait)
        self.engine.lock = self.lock
        self._consumers: list[IncomingConsumer] = []
        self._sync_lock = asyncio.Lock()

    def __repr__(self) -> str:  # never show the secret
        return f"<BlobManager {self.profile.user}@{self.profile.server} home={self.profile.home}>"

    # --- life cycle ----------------------------------------------------------------------

    @classmethod
    async def init(
        cls,
        home: str | Path,
        *,
        server: str,
        user: str,
        token: str,
        passphrase: str,
        secret_file: str | Path | None = None,
        recover: bool = False,
        settings: ClientSettings | None = None,
    ) -> BlobManager:
        """Create the profile at ``home`` (see enroll.py); fails leaving nothing behind."""
        return cls._of(await enroll(
            Path(home), server=server, user=user, token=token, passphrase=passphrase,
            secret_file=secret_file, recover=recover, settings=settings,
        ))

    @classmethod
    async def open(
        cls, home: str | Path, *, passphrase: str, settings: ClientSettings | None = None,
        reading: bool = False,
    ) -> BlobManager:
        """Open the profile at ``home``. ``reading``: the caller only reads the local
        store (status, ls, check), so on a disk too full for SQLite's -shm file the store
        is opened for reading alone instead of failing (``LocalStore.reading_only``)."""
        return cls._of(
            await unlock(home, passphrase=passphrase, settings=settings, reading=reading)
        )

    @classmethod
    def _of(cls, parts: Unlocked) -> BlobManager:
        return cls(parts.profile, parts.secret, parts.settings, parts.store, parts.transport)

    async def close(self) -> None:
        await self.transport.close()
        await self.store.close()

    async def __aenter__(self) -> BlobManager:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            await self.close()
            return
        # The error in flight is the one to tell: closing after it (on the same full
        # disk, say) may fail too and must not replace it.
        with contextlib.suppress(Exception):
            await self.close()

    # --- put / get / delete --------------------------------------------------------------

    async def put(
        self,
        blob_id: str | None,
        data: bytes | str | Path,
        *,
        namespace: str = "default",
        priority: Priority = "medium",
        local_only: bool = False,
        upload: bool = True,
    ) -> str:
        """Seal ``data`` (bytes, or the path of a file, streamed) into the local store, then
        upload it unless ``local_only`` or ``upload=False`` (it then waits, PENDING_UPLOAD,
        for the next sync). A passing upload failure leaves it PENDING_UPLOAD with its retry
        scheduled; a refusal (413, 507, ...) marks it FAILED_UPLOAD and raises RemoteError.
        """
        blob_id = blob_id or uuid.uuid4().hex
        _check_ids(namespace, blob_id)
        async with self.lock.hold("put"):
            sealed = await self._put(
                blob_id, data, namespace, priority_rank(priority), local_only
            )
            if upload and not local_only:
                row = await self.store.get(namespace, blob_id)
                assert row is not None
                await self._upload_now(row, sealed)
        return blob_id

    async def _put(
        self, blob_id: str, data: bytes | str | Path, namespace: str, rank: int,
        local_only: bool,
    ) -> bytes | None:
        """Store the blob; returns its sealed bytes when they are small enough to have
        been sealed in memory (the upload sends them as they are, not read back)."""
        await self._make_room(namespace, blob_id)
        status = SyncStatus.LOCAL_ONLY if local_only else SyncStatus.PENDING_UPLOAD
        source: Source | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            data = bytes(data)
            size = len(data)
        else:
            path = Path(data)
            source = _source(path)
            size = source.size
        total = sealed_size(size)
        if total <= self.store.inline_max:
            plain = data if isinstance(data, bytes) else await asyncio.to_thread(path.read_bytes)
            if len(plain) != size:
                raise ClientError(f"{path} changed while it was read")
            sealed = seal(self._secret, blob_id, plain)
            await self.store.insert(
                namespace, blob_id, status, priority=rank, size=size, sealed_size=total,
                payload=sealed, source=source,
            )
            return sealed
        else:
            tmp = await self._seal_to_file(blob_id, data, size)
            location = await self.store.keep_file(namespace, blob_id, tmp)
            try:
                await self.store.insert(
                    namespace, blob_id, status, priority=rank, size=size, sealed_size=total,
                    location=location, source=source,
                )
            except BaseException:
                self.store.blob_path(location).unlink(missing_ok=True)
                raise
            return None

    async def stored_copies(
        self, paths: Iterable[str | Path], *, namespace: str = "default",
        local_only: bool = False,
    ) -> dict[Path, str]:
        """Blob ids, by path, of the files put into ``namespace`` before and unchanged
        since (same absolute path, size and mtime), whose blob is still here. A blob kept
        LOCAL_ONLY counts only for a ``local_only`` put: the others want theirs uploaded."""
        return await self._stored_copies(
            [(Path(p), _source(Path(p))) for p in paths], namespace, local_only
        )

    async def _stored_copies(
        self, files: list[tuple[Path, Source]], namespace: str, local_only: bool
    ) -> dict[Path, str]:
        statuses = HAS_PAYLOAD if local_only else HAS_PAYLOAD - {SyncStatus.LOCAL_ONLY}
        found = await self.store.stored_sources(namespace, [s for _, s in files], statuses)
        return {p: found[src.path] for p, src in files if src.path in found}

    async def put_many(
        self,
        paths: Iterable[str | Path],
        *,
        namespace: str = "default",
        priority: Priority = "medium",
        local_only: bool = False,
        stored: Callable[[str, Path], None] | None = None,
        upload: bool = False,
        progress: ProgressCallback | None = None,
        report: SyncReport | None = None,
        force: bool = False,
        already: Callable[[str, Path], None] | None = None,
    ) -> list[str]:
        """Seal files into the local store under new ids. Small files are read, sealed
        and kept many per transaction: one commit per blob is what made storing thousands
        of small files slow. Each batch is kept whole or not at all. ``stored(id, path)``
        is called for each file once it is kept. Returns the id of every path, in order.

        A file put into the namespace before and unchanged since (``stored_copies``) is
        not stored again: ``already(id, path)`` is called with its blob instead, in the
        order of the paths. So a put run again after it was interrupted stores only what
        is missing; a blob of such a file still pending upload goes with the next
        ``send_missing``. ``force`` stores every file anew. Each blob is recorded with the
        file it came from (absolute path, size, mtime) in the transaction that keeps it.

        Without ``upload`` the blobs wait PENDING_UPLOAD for ``send_missing`` or a sync.
        With it (and streams on), each batch of small blobs is stream-uploaded from memory
        as soon as it is kept, while the next batches are read and sealed: at most
        ``settings.concurrency`` batches in flight. What fails to go stays pending as in a
        sync; large files are never uploaded here (``send_missing`` takes them).
        ``report`` counts the uploads, ``progress`` follows them.
        """
        _check_ids(namespace)
        rank = priority_rank(priority)
        status = SyncStatus.LOCAL_ONLY if local_only else SyncStatus.PENDING_UPLOAD
        files = [(Path(p), _source(Path(p))) for p in paths]
        ids: list[str] = []
        # (path, its source, its blob when stored before): reported in path order.
        batch: list[tuple[Path, Source, str | None]] = []
        batch_bytes = 0
        run = None
        if upload and not local_only and self.settings.stream:
            run = self.engine.upload_run(namespace, report or SyncReport(), progress)
        uploads: set[asyncio.Task[None]] = set()

        def tell(blob_id: str, path: Path, new: bool) -> None:
            ids.append(blob_id)
            callback = stored if new else already
            if callback is not None:
                callback(blob_id, path)

        async def settle(at_most: int) -> None:
            while len(uploads) > at_most:
                done, _ = await asyncio.wait(uploads, return_when=asyncio.FIRST_COMPLETED)
                uploads.difference_update(done)
                for task in done:
                    task.result()  # AuthFailed and bugs stop the put

        async def flush() -> None:
            nonlocal batch, batch_bytes
            todo, batch, batch_bytes = batch, [], 0
            new = [(path, src) for path, src, known in todo if known is None]
            items: list[Sealed] = []
            if new:
                # Sealing the next batch while this one commits was tried: slower (the GIL).
                items = await asyncio.to_thread(self._seal_small, new)
                await self.store.insert_many(namespace, status, rank, items)
            fresh = iter(items)
            for path, _, known in todo:
                tell(known or next(fresh).blob_id, path, known is None)
            if run is not None and items:
                await settle(self.settings.concurrency - 1)
                sealed = {it.blob_id: it.payload for it in items}
                uploads.add(asyncio.create_task(self.engine.upload_sealed(run, sealed)))

        async with self.lock.hold("put"):
            found: dict[Path, str] = {}
            if not force and files:
                found = await self._stored_copies(files, namespace, local_only)
            try:
                for path, src in files:
                    known = found.get(path)
                    if known is not None or sealed_size(src.size) <= self.store.inline_max:
                        batch.append((path, src, known))
                        if known is None:
                            batch_bytes += src.size
                        if len(batch) >= PUT_BATCH_COUNT or batch_bytes >= PUT_BATCH_BYTES:
                            await flush()
                        continue
                    await flush()  # ids stay in the order of the paths
                    blob_id = await self.put(
                        None, path, namespace=namespace, priority=priority,
                        local_only=local_only, upload=False,
                    )
                    tell(blob_id, path, True)
                await flush()
                await settle(0)
            finally:
                # On failure: what is on its way stops; those blobs stay pending here.
                for task in uploads:
                    task.cancel()
                await asyncio.gather(*uploads, return_exceptions=True)
        return ids

    def _seal_small(self, files: list[tuple[Path, Source]]) -> list[Sealed]:
        """Read and seal small files (in a worker thread: one hop per batch)."""
        out = []
        for path, src in files:
            try:
                plain = path.read_bytes()
            except OSError as exc:
                raise ClientError(f"cannot read {path}: {exc.strerror}") from None
            if len(plain) != src.size:
                raise ClientError(f"{path} changed while it was read")
            blob_id = uuid.uuid4().hex
            out.append(Sealed(blob_id, src.size, seal(self._secret, blob_id, plain), src))
        return out

    async def _make_room(self, namespace: str, blob_id: str) -> None:
        """Refuse an id the store holds; finish a pending delete of it first."""
        row = await self.store.get(namespace, blob_id)
        if row is None:
            return
        if row.status is not SyncStatus.PENDING_DELETE:
            raise BlobExists(f"blob {blob_id} already exists in namespace {namespace}")
        # The old blob must leave the server before a new one takes its id, or the next
        # sync would delete the new one.
        try:
            await self.transport.delete_blob(namespace, blob_id)
        except BlobNotFound:
            pass
        except TransientError as exc:
            raise ClientError(
                f"blob {blob_id} is still being deleted on the server ({exc}); sync first"
            ) from None
        await self.store.remove_many(namespace, [blob_id], only_if=[SyncStatus.PENDING_DELETE])

    async def _seal_to_file(self, blob_id: str, data: bytes | Path, size: int) -> Path:
        tmp = self.store.temp_path()
        sealer = Sealer(self._secret, blob_id, size)
        writer = await FileWriter(tmp).open()
        try:
            await writer.write(sealer.start())
            if isinstance(data, bytes):
                for i in range(0, len(data), 1 << 20):
                    await writer.write(sealer.update(data[i : i + (1 << 20)]))
            else:
                async for chunk in read_file(data):
                    await writer.write(sealer.update(chunk))
            await writer.write(sealer.finish())
        except ValueError:
            await writer.close()
            tmp.unlink(missing_ok=True)
            raise ClientError(f"{data} changed size while it was read") from None
        except BaseException:
            await writer.close()
            tmp.unlink(missing_ok=True)
            raise
        await writer.close()
        return tmp

    async def _upload_now(self, row: Row, sealed: bytes | None = None) -> None:
        try:
            await self.engine.upload(row, sealed)
        except AlreadyOnServer:
            pass
        except TransientError as exc:
            log.warning("blob %s stays pending upload: %s", row.blob_id, exc)
            await self.store.schedule_retry(
                row.namespace, [row.blob_id], SyncStatus.PENDING_UPLOAD,
                delay=self.settings.retry_delay,
            )
            return
        except AuthFailed:
            raise
        except ClientError:
            await self.store.update(
                row.namespace, row.blob_id, only_if=[SyncStatus.PENDING_UPLOAD],
                status=SyncStatus.FAILED_UPLOAD,
            )
            raise
        await self.store.update(
            row.namespace, row.blob_id, only_if=[SyncStatus.PENDING_UPLOAD],
            status=SyncStatus.SYNCED, retries=0, next_attempt=0,
        )

    async def get(
        self,
        blob_id: str,
        *,
        namespace: str = "default",
        priority: Priority = "medium",
        dest: str | Path | None = None,
    ) -> bytes | None:
        """The plaintext: from the local store, else downloaded, verified and kept.

        With ``dest`` the plaintext goes to that file, which appears (or is replaced) only
        once the blob verified: until then it has no name, so a blob that does not verify,
        or a crash, leaves nothing (destfile.py). A new file follows the umask, a replaced
        one keeps its mode; a symlink is followed. A character or block device or a FIFO
        is written through, and only after the whole blob verified. None is returned.
        """
        _check_ids(namespace, blob_id)
        rank = priority_rank(priority)
        if dest is None:
            # Returned whole: held in memory, as the caller will hold it.
            async with Provisional(self.store.tmp_dir, memory_max=None) as held:
                await self._open_into(namespace, blob_id, rank, held)
                return await held.whole()
        with _writing(Path(dest)):
            target = await asyncio.to_thread(resolve_dest, Path(dest))
        if target.through:
            await self._get_through(namespace, blob_id, rank, Path(dest), target.path)
            return None
        out = await _DestOut(Path(dest), target).open()
        async with Provisional(self.store.tmp_dir, hidden=out) as held:
            await self._open_into(namespace, blob_id, rank, held)
            await held.release()  # the unnamed file becomes ``dest``
        return None

    async def _open_into(
        self, namespace: str, blob_id: str, rank: int, held: Provisional
    ) -> None:
        """The blob's plaintext into ``held``, verified: opened as it downloads, or from
        the store when it is here already. One decryption either way."""
        row = await self._ensure_local(namespace, blob_id, rank, held)
        if row is not None:  # local already, or kept by a concurrent download
            await held.reset()
            await self._open_local(row, held)

    async def _get_through(
        self, namespace: str, blob_id: str, rank: int, dest: Path, path: Path
    ) -> None:
        """get() into a device or FIFO: nothing can be taken back once written there, so
        the whole blob verifies before ``path`` is even opened (a missing blob or a server
        error fails at once instead of first waiting for a FIFO's reader, as cp checks its
        source)."""
        async with Provisional(self.store.tmp_dir) as held:
            try:
                chunks = await self._verified_chunks(namespace, blob_id, rank, held)
                first = await anext(chunks, None)  # comes once the whole blob verified
            except BaseException:
                release_reader(path)  # a reader waiting on the FIFO gets EOF, not a hang
                raise
            sink = ThroughFile(path)
            with _writing(dest):
                await sink.open()  # a FIFO waits here for its reader
            try:
                while first is not None:
                    with _writing(dest):
                        await sink.write(first)
                    first = await anext(chunks, None)
                with _writing(dest):
                    await sink.finish()
            finally:
                sink.close()

    async def _verified_chunks(
        self, namespace: str, blob_id: str, rank: int, held: Provisional
    ) -> AsyncIterator[bytes]:
        """The blob's verified plaintext, opened once as it downloads (into ``held``,
        which spills to an unnamed file), or, when local, from the store without a copy
        on disk (verified.reread_chunks)."""
        row = await self._ensure_local(namespace, blob_id, rank, held)
        if row is None:
            return held.chunks()
        return reread_chunks(self._secret, row.blob_id, lambda: self.store.read_sealed(row))

    async def _ensure_local(
        self, namespace: str, blob_id: str, rank: int, held: Provisional | None
    ) -> Row | None:
        """Download the blob unless it is local. Returns the local row when the plaintext
        still has to be read from the store; None when ``held`` got it from the download."""
        row = await self.store.get(namespace, blob_id)
        if row is not None and row.has_payload:
            return row  # a reader: no lock, no waiting
        async with self.lock.hold("get"):
            return await self._fetch(namespace, blob_id, rank, held)

    async def _fetch(
        self, namespace: str, blob_id: str, rank: int, held: Provisional | None
    ) -> Row | None:
        row = await self.store.get(namespace, blob_id)
        if row is not None and row.has_payload:
            return row  # kept by another process while this one waited for the lock
        if row is not None and row.status is SyncStatus.PENDING_DELETE:
            raise BlobNotFound(f"blob {blob_id} is deleted (namespace {namespace})")
        if row is None:
            try:
                await self.store.insert(
                    namespace, blob_id, SyncStatus.PENDING_DOWNLOAD, priority=rank
                )
            except BlobExists:
                pass
        elif rank > row.priority:
            await self.store.update(namespace, blob_id, priority=rank)
        try:
            kept = await self.engine.download(await self._row(namespace, blob_id), held)
        except InvalidBlob:
            await self.engine._verify_failed(None, namespace, blob_id)
            raise
        except BlobNotFound:
            await self.store.remove_many(
                namespace, [blob_id],
                only_if=[SyncStatus.PENDING_DOWNLOAD, SyncStatus.FAILED_DOWNLOAD],
            )
            raise BlobNotFound(f"blob {blob_id} not found (namespace {namespace})") from None
        if kept is None:
            row = await self.store.get(namespace, blob_id)
            if row is None or not row.has_payload:
                raise BlobNotFound(f"blob {blob_id} not found (namespace {namespace})")
            return row
        return None

    async def _row(self, namespace: str, blob_id: str) -> Row:
        row = await self.store.get(namespace, blob_id)
        if row is None:
            raise BlobNotFound(f"blob {blob_id} not found (namespace {namespace})")
        return row

    async def _open_local(self, row: Row, held: Provisional | None) -> None:
        """Open a local blob into ``held`` (None: verify only); InvalidBlob if it fails."""
        await open_into(self._secret, row.blob_id, self.store.read_sealed(row), held)

    async def open_stream(
        self, blob_id: str, *, namespace: str = "default"
    ) -> AsyncIterator[bytes]:
        """Verified plaintext in chunks (an async generator: ``async for c in
        m.open_stream(id)``). A blob not yet local is fetched first. Every chunk is handed
        out only after the whole blob verified (verified.py): a fresh download is opened
        once, as it arrives, into a holder that spills to an unnamed temporary file past
        1 MiB; a local blob is opened once into memory when it fits, else verified first
        and decrypted again as it is handed out (no plaintext copy on disk)."""
        _check_ids(namespace, blob_id)
        async with Provisional(self.store.tmp_dir) as held:
            async for chunk in await self._verified_chunks(namespace, blob_id, 1, held):
                yield chunk

    async def delete(
        self, blob_id: str, *, namespace: str = "default"
    ) -> TransientError | ForgottenHere | None:
        """Delete locally and on the server. If the server cannot be reached the blob stays
        PENDING_DELETE and the next sync finishes the job: then the passing error that
        postponed the DELETE is returned (not raised: the local part is done). None when
        nothing is left to do, or an upload in flight here sends the DELETE once landed.

        A blob this device never got onto the server (FAILED_UPLOAD, or PENDING_UPLOAD
        while the server holds another blob or none under its id) is forgotten here only,
        and ForgottenHere says why: a DELETE would remove another device's blob (SPEC 7)."""
        _check_ids(namespace, blob_id)
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

    async def status(self, blob_id: str, *, namespace: str = "default") -> SyncStatus | None:
        """The local sync status of one blob; None when the store does not know it."""
        row = await self.store.get(namespace, blob_id)
        return row.status if row else None

    # --- listing and flags ---------------------------------------------------------------

    async def local_list(
        self, namespace: str = "default", *, status: SyncStatus | None = None
    ) -> list[str]:
        """Ids in the local store, oldest first: with ``status`` those in it; without, the
        blobs whose payload is here (SYNCED, PENDING_UPLOAD, FAILED_UPLOAD, LOCAL_ONLY)."""
        rows = await self.store.rows(namespace, [status] if status else HAS_PAYLOAD)
        return [r.blob_id for r in rows]

    async def remote_list(
        self,
        namespace: str = "default",
        *,
        filter_flag: str | None = None,
        order_by: str | None = None,
        deleted: bool = False,
    ) -> list[str]:
        return await self.transport.list_blobs(
            namespace, filter_flag=filter_flag, order_by=order_by, deleted=deleted
        )

    async def remote_count(
        self, namespace: str = "default", *, filter_flag: str | None = None
    ) -> int:
        return await self.transport.count_blobs(namespace, filter_flag=filter_flag)

    async def get_flags(self, blob_id: str, *, namespace: str = "default") -> list[str]:
        return await self.transport.get_flags(namespace, blob_id)

    async def set_flags(
        self,
        blob_id: str,
        flags: list[str],
        *,
        namespace: str = "default",
        expect: str | None = None,
    ) -> None:
        await self.transport.set_flags(namespace, blob_id, list(flags), expect=expect)

    # --- sync ----------------------------------------------------------------------------

    async def sync(
        self, namespace: str = "default", *, progress: ProgressCallback | None = None
    ) -> SyncReport:
        return await self._reconcile_and_run(namespace, PHASES, progress)

    async def send_missing(
        self,
        namespace: str = "default",
        *,
        progress: ProgressCallback | None = None,
        report: SyncReport | None = None,
    ) -> int:
        """Upload what is pending; returns how many went. ``report`` (when given) also
        gets the failures, ``taken`` among them."""
        return (await self._reconcile_and_run(namespace, ["upload"], progress, report)).uploaded

    async def fetch_missing(
        self, namespace: str = "default", *, progress: ProgressCallback | None = None
    ) -> int:
        return (await self._reconcile_and_run(namespace, ["download"], progress)).downloaded

    async def _reconcile_and_run(
        self,
        namespace: str,
        phases: Iterable[str],
        progress: ProgressCallback | None,
        report: SyncReport | None = None,
    ) -> SyncReport:
        _check_ids(namespace)
        async with self._sync_lock:
            report = report if report is not None else SyncReport()
            waited = await self._reconcile(namespace, report)
            return await self.engine.run(
                namespace, phases, progress=progress, report=report, waited=waited
            )

    async def learn_remote_changes(self, namespace: str = "default") -> None:
        """Apply what the server's listing says (deletions from other devices above all)
        without transferring anything: a put asks this before it trusts that a file it
        stored before is still stored."""
        _check_ids(namespace)
        async with self._sync_lock:
            await self._reconcile(namespace, SyncReport())

    async def _reconcile(self, namespace: str, report: SyncReport) -> float:
        """The listing and what follows from it. A server that answers with a 5xx is
        retried on the transfers' schedule, within ``max_sync_wait`` (never without one: a
        library call must not wait forever); returns the seconds waited, which the run
        counts against the same budget. A server that cannot be reached at all fails at
        once: offline is no passing state of the server, and the caller says so."""
        budget = self.settings.max_sync_wait
        waited = 0.0
        attempt = 0
        while True:
            try:
                # The lock per step, not for the whole run: engine.run takes it per round
                # and lets go while it waits for a retry.
                async with self.lock.hold("sync"):
                    await self.engine.reconcile(namespace, report)
                return waited
            except ServerError as exc:
                attempt += 1
                pause = self.settings.retry_delay(attempt)
                if budget is None or waited + pause > budget:
                    raise
                log.info("listing failed (%s): retrying in %.1f s", exc, pause)
                waited += pause
                await asyncio.sleep(pause)

    async def sync_progress(self, namespace: str | None = None) -> dict[SyncStatus, int]:
        return await self.store.counts(namespace)

    async def retry_failed(
        self, namespace: str | None = None, *, blob_ids: Iterable[str] | None = None
    ) -> int:
        """Give FAILED_* blobs another chance and make every pending blob due now; only
        those of ``blob_ids`` when given (a ``put`` run again for files it stored)."""
        moves = {
            SyncStatus.FAILED_DOWNLOAD: SyncStatus.PENDING_DOWNLOAD,
            SyncStatus.FAILED_UPLOAD: SyncStatus.PENDING_UPLOAD,
        }
        wanted = None if blob_ids is None else set(blob_ids)
        n = 0
        async with self.lock.hold("sync"):
            for row in await self.store.rows(namespace, [*moves, *PENDING]):
                if wanted is not None and row.blob_id not in wanted:
                    continue
                await self.store.update(
                    row.namespace, row.blob_id, only_if=[row.status],
                    status=moves.get(row.status, row.status), retries=0, next_attempt=0,
                    verify_failures=0,
                )
                n += row.status in moves
        return n

    async def check(self, *, remote: bool = False, repair: bool = False) -> list[str]:
        """Problems, one line each: database integrity, local copies that do not verify,
        missing or stray files, blobs given up, and with ``remote`` disagreements with
        the server (a listing, and for every blob verified here a ranged GET of the
        server's tag: another blob under the same id shows there).

        With ``repair`` every SYNCED blob whose local bytes are missing or damaged goes
        back to PENDING_DOWNLOAD, for the next sync to fetch; its line says so, and is a
        ``CheckProblem`` whose ``repaired`` is true. A blob never uploaded has no other
        copy: its line says it is lost."""
        checker = Checker(
            self.store, self.transport, self._secret, self.profile.home, self.lock,
            lambda row: self._open_local(row, None),
        )
        return await checker.run(remote=remote, repair=repair)

    # --- incoming box --------------------------------------------------------------------

    def register_consumer(self, consumer: IncomingConsumer | IncomingStreamConsumer) -> None:
        self._consumers.append(consumer)

    async def process_incoming(self, *, limit: int = 100) -> IncomingReport:
        return await process_incoming(
            self.transport, self._secret, list(self._consumers), limit=limit,
            tmp_dir=self.store.tmp_dir,
        )


PENDING = (SyncStatus.PENDING_DOWNLOAD, SyncStatus.PENDING_UPLOAD, SyncStatus.PENDING_DELETE)


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """OSErrors of writing get()'s ``dest`` as one line naming it; a full disk as NoSpace."""
    try:
        yield
    except OSError as exc:
        what = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None and str(exc.filename) != str(dest):
            what = f"{what}: {exc.filename}"
        if is_no_space(exc):
            raise no_space(exc, f"writing {dest}") from None
        raise ClientError(f"cannot write {dest}: {what}") from None


class _DestOut:
    """The file get() writes for ``dest``: unnamed until ``commit`` (see destfile.py), a
    ``Hidden`` target of a Provisional holder. ``target`` says where the file goes (a
    symlink's target) and its mode. OSErrors come out as one line naming ``dest``."""

    def __init__(self, dest: Path, target: Target) -> None:
        self.dest = dest
        self.target = target
        self._file: DestFile | None = None

    async def open(self) -> _DestOut:
        target = self.target
        with _writing(self.dest):
            self._file = await asyncio.to_thread(
                DestFile(target.path, target.mode, target.owner).open
            )
        return self

    async def write(self, data: bytes) -> None:
        assert self._file is not None
        with _writing(self.dest):
            await self._file.write(data)

    async def reset(self) -> None:
        assert self._file is not None
        with _writing(self.dest):
            await asyncio.to_thread(self._file.reset)

    async def commit(self) -> None:
        assert self._file is not None
        with _writing(self.dest):
            await asyncio.to_thread(self._file.commit)
        self._file = None

    async def abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.abort)


def _source(path: Path) -> Source:
    """What identifies the content of a file for a put run again: where it is (absolute,
    links not resolved: the name the user gave), its size and its mtime."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    return Source(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _check_ids(*ids: str) -> None:
    for i in ids:
        if not isinstance(i, str) or not valid_id(i):
            raise ClientError(f"invalid id {i!r}: 1-254 of letters, digits, _ and -")
