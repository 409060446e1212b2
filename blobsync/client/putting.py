"""The put path: files and bytes sealed into the local store, and uploaded when asked.

``BlobManager.put``, ``put_many`` and ``stored_copies`` delegate here; the manager checks
the ids and the priority first. A ``Putter`` is handed what it uses (the store, the
transport, the sync engine, the storage secret, the writer lock, the settings), nothing of
the manager's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from blobsync.format import LimitExceeded, Meta, Sealer, seal, seal_meta, sealed_size

from .errors import (
    AlreadyOnServer,
    AuthFailed,
    BlobExists,
    BlobNotFound,
    ClientError,
    TransientError,
)
from .localstore import LocalFileWriter, Row, Sealed, Source, read_file
from .model import HAS_PAYLOAD, ProgressCallback, SyncReport, SyncStatus
from .parts import UsesParts
from .tracking import Flow, Tracker

log = logging.getLogger("blobsync.client")

# put_many keeps small files this many (or this many plaintext bytes) per transaction:
# enough to make the commit cost vanish, little enough to bound memory.
PUT_BATCH_COUNT = 500
PUT_BATCH_BYTES = 4 << 20


class Putter(UsesParts):
    async def put(
        self, blob_id: str, data: bytes | str | Path, namespace: str, rank: int,
        local_only: bool, upload: bool, naming: Naming | None = None,
        progress: ProgressCallback | None = None, sealing: Tracker | None = None,
        key: str | None = None,
    ) -> None:
        """BlobManager.put with its ids checked: store the blob, then upload it unless
        ``local_only`` or not ``upload``. ``naming``: what its meta is to say. A large
        blob's sealing is reported to ``progress`` (phase "seal"), or counted in
        ``sealing`` under ``key`` (put_many's, for all its files)."""
        if sealing is None and progress is not None:
            sealing = Tracker("seal", progress)
        async with self.lock.hold("put"):
            sealed = await self._put(blob_id, data, namespace, rank, local_only, naming,
                                     sealing, key)
            if upload and not local_only:
                row = await self.store.get(namespace, blob_id)
                assert row is not None
                await self.upload_now(row, sealed)

    async def _put(
        self, blob_id: str, data: bytes | str | Path, namespace: str, rank: int,
        local_only: bool, naming: Naming | None = None, sealing: Tracker | None = None,
        key: str | None = None,
    ) -> bytes | None:
        """Store the blob; returns its sealed bytes when they are small enough to have
        been sealed in memory (the upload sends them as they are, not read back). A large
        one's plaintext bytes are counted in ``sealing`` (under ``key``, else its id) as
        they are sealed."""
        await self._make_room(namespace, blob_id)
        status = SyncStatus.LOCAL_ONLY if local_only else SyncStatus.PENDING_UPLOAD
        source: Source | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            data = bytes(data)
            size = len(data)
        else:
            path = Path(data)
            source = file_source(path)
            size = source.size
        meta = None if naming is None else naming.meta(size, source)
        meta_text = None if meta is None else _seal_meta(self._secret, blob_id, meta)
        total = sealed_size(size)
        if total <= self.store.inline_max:
            plain = data if isinstance(data, bytes) else await asyncio.to_thread(path.read_bytes)
            if len(plain) != size:
                raise ClientError(f"{path} changed while it was read")
            sealed = seal(self._secret, blob_id, plain)
            await self.store.insert(
                namespace, blob_id, status, priority=rank, size=size, sealed_size=total,
                payload=sealed, source=source, meta=meta, meta_text=meta_text,
            )
            return sealed
        else:
            flow = None
            key = key or blob_id
            if sealing is not None:
                if key not in sealing.seen:
                    sealing.expect(key, size)
                flow = sealing.flow(key)
            tmp = await self._seal_to_file(blob_id, data, size, flow)
            location = await self.store.keep_file(namespace, blob_id, tmp)
            try:
                await self.store.insert(
                    namespace, blob_id, status, priority=rank, size=size, sealed_size=total,
                    location=location, source=source, meta=meta, meta_text=meta_text,
                )
            except BaseException:
                self.store.blob_path(location).unlink(missing_ok=True)
                raise
            if sealing is not None:
                sealing.finished(key, size)
            return None

    async def stored_copies(
        self, files: list[tuple[Path, Source]], namespace: str, local_only: bool,
        names: dict[Path, str] | None = None,
    ) -> dict[Path, str]:
        """BlobManager.stored_copies, for files whose sources are taken already."""
        statuses = HAS_PAYLOAD if local_only else HAS_PAYLOAD - {SyncStatus.LOCAL_ONLY}
        found = await self.store.stored_sources(namespace, [s for _, s in files], statuses)
        out = {p: found[src.path] for p, src in files if src.path in found}
        if names and await self.store.has_names(namespace):
            # SPEC 11: a blob whose meta has the file's name, size and mtime holds it,
            # whichever device put it; one only known here from the server (a sync not
            # yet downloaded it) is as good. It comes before the blob last put from the
            # same path, which may carry another name (`put dir` after `put dir/sub`).
            # Not looked up in a namespace without names (a first put): 10,000 index
            # lookups there found nothing, twice per put.
            by_name = await self.store.named_copies(
                namespace, [(names[p], src.size, src.mtime_ns / 1e9) for p, src in files],
                statuses if local_only else statuses | {SyncStatus.PENDING_DOWNLOAD})
            for p, _ in files:
                blob_id = by_name.get(names[p])
                if blob_id is not None:
                    out[p] = blob_id
        return out

    async def put_many(
        self,
        files: list[tuple[Path, Source]],
        namespace: str,
        rank: int,
        local_only: bool,
        stored: Callable[[str, Path], None] | None,
        upload: bool,
        progress: ProgressCallback | None,
        report: SyncReport | None,
        force: bool,
        already: Callable[[str, Path], None] | None,
        names: dict[Path, str] | None = None,
    ) -> list[str]:
        """BlobManager.put_many (its docstring says what) with the namespace checked and
        every file's source taken; ``names``: the name of each file's meta, if any."""
        status = SyncStatus.LOCAL_ONLY if local_only else SyncStatus.PENDING_UPLOAD
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
                items = await asyncio.to_thread(self._seal_small, new, names)
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
                found = await self.stored_copies(files, namespace, local_only, names)
            sealing = None
            if progress is not None:
                # The large files to seal, known before the first: one bar over them all.
                sealing = Tracker("seal", progress)
                for path, src in files:
                    if path not in found and sealed_size(src.size) > self.store.inline_max:
                        sealing.expect(src.path, src.size)
                if sealing.seen:
                    sealing.report()
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
                    blob_id = uuid.uuid4().hex
                    naming = None if names is None else Naming(names[path])
                    await self.put(blob_id, path, namespace, rank, local_only, upload=False,
                                   naming=naming, sealing=sealing, key=src.path)
                    tell(blob_id, path, True)
                await flush()
                await settle(0)
            finally:
                # On failure: what is on its way stops; those blobs stay pending here.
                for task in uploads:
                    task.cancel()
                await asyncio.gather(*uploads, return_exceptions=True)
        return ids

    def _seal_small(
        self, files: list[tuple[Path, Source]], names: dict[Path, str] | None = None
    ) -> list[Sealed]:
        """Read and seal small files (in a worker thread: one hop per batch), and their
        metas when ``names`` has them. Read with os calls on the source's path, a string:
        a file object and a Path per file cost more than the read itself for 10 KB."""
        out = []
        secret = self._secret
        new_id = _new_id
        for path, src in files:
            try:
                plain = read_small(src.path, src.size)
            except OSError as exc:
                raise ClientError(f"cannot read {path}: {exc.strerror}") from None
            if plain is None:
                raise ClientError(f"{path} changed while it was read")
            blob_id = new_id()
            if names is None:
                out.append(Sealed(blob_id, src.size, seal(secret, blob_id, plain), src))
                continue
            meta = _file_meta(names[path], src)
            out.append(Sealed(blob_id, src.size, seal(secret, blob_id, plain), src, meta,
                              _seal_meta(secret, blob_id, meta)))
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

    async def _seal_to_file(
        self, blob_id: str, data: bytes | Path, size: int, flow: Flow | None = None
    ) -> Path:
        tmp = self.store.temp_path()
        sealer = Sealer(self._secret, blob_id, size)
        writer = await LocalFileWriter(tmp).open()
        try:
            await writer.write(sealer.start())
            if isinstance(data, bytes):
                for i in range(0, len(data), 1 << 20):
                    await writer.write(sealer.update(data[i : i + (1 << 20)]))
                    if flow is not None:
                        flow.add(min(1 << 20, len(data) - i))
            else:
                async for chunk in read_file(data):
                    await writer.write(sealer.update(chunk))
                    if flow is not None:
                        flow.add(len(chunk))
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

    async def upload_now(self, row: Row, sealed: bytes | None = None) -> None:
        """Upload one stored blob at once (put's ``upload``): SYNCED when it went, still
        pending with its retry scheduled on a passing failure, FAILED_UPLOAD (raised) on a
        refusal."""
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


@dataclass(frozen=True)
class Naming:
    """What a blob's meta is to say besides its size (SPEC 11): its name, and its mtime
    and mode when no file gives them (a file's are taken from the file)."""

    name: str
    mtime: float | None = None
    mode: int | None = None
    media_type: str | None = None

    def meta(self, size: int, source: Source | None) -> Meta:
        mtime = self.mtime
        if mtime is None:
            mtime = source.mtime_ns / 1e9 if source is not None else time.time()
        mode = self.mode
        if mode is None and source is not None and source.mode is not None:
            mode = source.mode
        try:
            return Meta(self.name, size, mtime, mode, self.media_type)
        except ValueError as exc:
            raise ClientError(f"cannot name a blob {self.name!r}: {exc}") from None


def names_by_path(
    files: list[tuple[Path, Source]], names: Sequence[str] | None
) -> dict[Path, str] | None:
    """put_many's ``names``, one per file in order, keyed by the file's path."""
    if names is None:
        return None
    return dict(zip((p for p, _ in files), names, strict=True))


def _file_meta(name: str, src: Source) -> Meta:
    """Naming(name).meta for a file, without the Naming: a few microseconds a file."""
    try:
        return Meta(name, src.size, src.mtime_ns / 1e9, src.mode)
    except ValueError as exc:
        raise ClientError(f"cannot name a blob {name!r}: {exc}") from None


def _seal_meta(secret: bytes, blob_id: str, meta: Meta) -> str:
    try:
        return seal_meta(secret, blob_id, meta)
    except LimitExceeded as exc:
        raise ClientError(f"cannot name a blob {meta.name[:40]!r}...: {exc}") from None


def _new_id() -> str:
    """A random id as uuid4().hex makes it (version and variant bits set), without the
    UUID object."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    return b.hex()


def read_small(path: str, size: int) -> bytes | None:
    """The whole file at ``path``, which should hold ``size`` bytes: None when it holds
    another number of bytes now (it changed since it was looked at). Up to one byte past
    ``size`` is asked for, so a file that grew shows without reading all of it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        first = os.read(fd, size + 1)
        if len(first) == size:
            # A regular file reads short only at its end: no second read to see the end
            # (for 10,000 small files, 10,000 system calls fewer).
            return first
        parts = [first]
        n = len(first)
        chunk = first
        while chunk and n <= size:
            chunk = os.read(fd, size + 1 - n)
            parts.append(chunk)
            n += len(chunk)
    finally:
        os.close(fd)
    if n != size:
        return None
    return b"".join(parts)


def file_source(path: Path) -> Source:
    """What identifies the content of a file for a put run again: where it is (absolute,
    links not resolved: the name the user gave), its size and its mtime."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    return Source(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)
