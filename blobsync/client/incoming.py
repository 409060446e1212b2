"""The incoming box (SPEC 6): messages a trusted service delivered into namespace MX.

A round lists MX blobs flagged PENDING, oldest first, at most ``limit``; reserves each with
flags [PROCESSING] expect=PENDING (412: another device took it, skip); downloads it; hands
the payload to every registered consumer (process, then save); on success flags it
[PROCESSED] and deletes it, on failure flags it [FAILED] so that it is not retried every
round. Incoming blobs never enter the local store: once a consumer saved the result, the
message itself is done.

A message is downloaded and opened into a ``Provisional`` holder (verified.py: in memory
up to 1 MiB, beyond in an unnamed temporary file, so nothing is left behind by a crash),
which releases nothing before the tag verified, and is never held twice. Consumers with a
``process_stream`` method read it from there in chunks, whatever its size; the others
get it whole as ``bytes``, one copy in memory, and so only up to MAX_INCOMING_SIZE: a
larger message is flagged FAILED rather than blowing the memory bound (another device, or
a streaming consumer, may take it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from blobsync.format import SEAL_OVERHEAD, InvalidBlob

from .errors import BlobNotFound, ClientError, PreconditionFailed, TransientError
from .transport import Transport
from .verified import Provisional, open_into

log = logging.getLogger("blobsync.client.incoming")

MX = "MX"
# Largest message handed whole (bytes) to a consumer: with the process's own ~60 MB this
# keeps within the 100 MB bound. Streaming consumers have no such limit.
MAX_INCOMING_SIZE = 64 << 20


@runtime_checkable
class IncomingConsumer(Protocol):
    async def process(self, blob_id: str, payload: bytes) -> object:
        """Turn the payload into a result; raise to fail the message."""
        ...

    async def save(self, blob_id: str, result: object) -> None:
        """Keep the result; raise to fail the message."""
        ...


@runtime_checkable
class IncomingStreamConsumer(Protocol):
    """A consumer that takes the payload in chunks: messages of any size, little memory."""

    async def process_stream(
        self, blob_id: str, chunks: AsyncIterator[bytes], size: int
    ) -> object:
        """Read ``chunks`` (``size`` bytes in all) into a result; raise to fail."""
        ...

    async def save(self, blob_id: str, result: object) -> None:
        ...


Consumer = IncomingConsumer | IncomingStreamConsumer


def _streams(consumer: object) -> bool:
    return callable(getattr(consumer, "process_stream", None))


@dataclass
class IncomingReport:
    processed: int = 0
    failed: int = 0
    skipped: int = 0  # reserved by another device first
    processed_ids: list[str] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)


class TooLargeToHold(ClientError):
    """A message over MAX_INCOMING_SIZE for a consumer that wants it whole."""


async def fetch_payload(
    transport: Transport,
    secret: bytes,
    blob_id: str,
    tmp_dir: Path | None,
    *,
    max_size: int | None = None,
) -> Provisional:
    """Download and open one MX blob into a holder that releases it only once verified
    (in memory up to 1 MiB, beyond in an unnamed temporary file; the caller closes it).
    External payloads come raw. ``max_size`` refuses a larger payload early."""
    held = Provisional(tmp_dir)
    try:
        limit = None if max_size is None else max_size + SEAL_OVERHEAD
        async with transport.get_blob(MX, blob_id) as dl:
            if limit is not None and dl.total is not None and dl.total > limit:
                raise TooLargeToHold(f"incoming message {blob_id} is over {max_size} bytes")
            await open_into(secret, blob_id, _limited(dl.chunks(), limit, blob_id, max_size),
                            held)
        return held
    except BaseException:
        await held.close()
        raise


async def _limited(
    chunks: AsyncIterable[bytes], limit: int | None, blob_id: str, max_size: int | None
) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if limit is not None and received > limit:
            raise TooLargeToHold(f"incoming message {blob_id} is over {max_size} bytes")
        yield chunk


async def _deliver(consumers: list[Consumer], blob_id: str, held: Provisional) -> None:
    """Hand one verified message to every consumer: process, then save."""
    payload: bytes | None = None
    size = held.opened.size
    for consumer in consumers:
        if _streams(consumer):
            result = await consumer.process_stream(  # type: ignore[union-attr]
                blob_id, held.chunks(), size
            )
        else:
            if payload is None:  # read once, shared by every consumer that wants bytes
                payload = await held.whole()
            result = await consumer.process(blob_id, payload)  # type: ignore[union-attr]
        await consumer.save(blob_id, result)


async def process_incoming(
    transport: Transport,
    secret: bytes,
    consumers: list[Consumer],
    *,
    limit: int = 100,
    tmp_dir: Path | None = None,
) -> IncomingReport:
    if not consumers:
        # Without a consumer, "processed then deleted" would silently lose mail.
        raise ClientError("no incoming consumer is registered")
    report = IncomingReport()
    # Consumers that want bytes bound what may be downloaded at all.
    max_size = None if all(_streams(c) for c in consumers) else MAX_INCOMING_SIZE
    ids = await transport.list_blobs(MX, filter_flag="PENDING", order_by="date", limit=limit)
    for blob_id in ids:
        try:
            await transport.set_flags(MX, blob_id, ["PROCESSING"], expect="PENDING")
        except (PreconditionFailed, BlobNotFound):
            report.skipped += 1
            report.skipped_ids.append(blob_id)
            continue
        try:
            held = await fetch_payload(
                transport, secret, blob_id, tmp_dir, max_size=max_size
            )
            async with held:
                await _deliver(consumers, blob_id, held)
        except TransientError:
            # Not the message's fault: give it back so that a later round (or another
            # device) takes it, and stop this round, the server is not answering well.
            try:
                await transport.set_flags(MX, blob_id, ["PENDING"], expect="PROCESSING")
            except ClientError:
                log.warning("incoming %s stays PROCESSING: could not give it back", blob_id)
            raise
        except (Exception, InvalidBlob) as exc:  # noqa: BLE001 - a consumer may raise anything
            log.warning("incoming %s failed: %s", blob_id, type(exc).__name__)
            await transport.set_flags(MX, blob_id, ["FAILED"])
            report.failed += 1
            report.failed_ids.append(blob_id)
            continue
        await transport.set_flags(MX, blob_id, ["PROCESSED"])
        try:
            await transport.delete_blob(MX, blob_id)
        except BlobNotFound:
            pass
        report.processed += 1
        report.processed_ids.append(blob_id)
    return report
