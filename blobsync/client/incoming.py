"""The incoming box (SPEC 6): messages a trusted service delivered into namespace MX.

A round lists MX blobs flagged PENDING, oldest first, at most ``limit``; reserves each with
flags [PROCESSING] expect=PENDING (412: another device took it, skip); downloads it; hands
the payload to every registered consumer (process, then save); on success flags it
[PROCESSED] and deletes it, on failure flags it [FAILED] so that it is not retried every
round. Incoming blobs never enter the local store: once a consumer saved the result, the
message itself is done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from blobsync.format import InvalidBlob, Opener

from .errors import BlobNotFound, ClientError, PreconditionFailed, TransientError
from .transport import Transport

log = logging.getLogger("blobsync.client.incoming")

MX = "MX"
# A delivered message is held whole for the consumers (their API takes bytes); the server
# bounds blob sizes, and this bounds what a hostile server can make us hold.
MAX_INCOMING_SIZE = 256 << 20


@runtime_checkable
class IncomingConsumer(Protocol):
    async def process(self, blob_id: str, payload: bytes) -> object:
        """Turn the payload into a result; raise to fail the message."""
        ...

    async def save(self, blob_id: str, result: object) -> None:
        """Keep the result; raise to fail the message."""
        ...


@dataclass
class IncomingReport:
    processed: int = 0
    failed: int = 0
    skipped: int = 0  # reserved by another device first
    processed_ids: list[str] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)


async def fetch_payload(transport: Transport, secret: bytes, blob_id: str) -> tuple[bytes, bool]:
    """Download and open one MX blob: (payload, external). External payloads come raw."""
    parts: list[bytes] = []
    total = 0
    opener = Opener(secret, blob_id, parts.append)
    async with transport.get_blob(MX, blob_id) as dl:
        async for chunk in dl.chunks():
            total += len(chunk)
            if total > MAX_INCOMING_SIZE:
                raise ClientError(f"incoming message {blob_id} is over {MAX_INCOMING_SIZE} bytes")
            opener.feed(chunk)
    opened = opener.finish()
    return b"".join(parts), opened.external


async def process_incoming(
    transport: Transport,
    secret: bytes,
    consumers: list[IncomingConsumer],
    *,
    limit: int = 100,
) -> IncomingReport:
    if not consumers:
        # Without a consumer, "processed then deleted" would silently lose mail.
        raise ClientError("no incoming consumer is registered")
    report = IncomingReport()
    ids = await transport.list_blobs(MX, filter_flag="PENDING", order_by="date", limit=limit)
    for blob_id in ids:
        try:
            await transport.set_flags(MX, blob_id, ["PROCESSING"], expect="PENDING")
        except (PreconditionFailed, BlobNotFound):
            report.skipped += 1
            report.skipped_ids.append(blob_id)
            continue
        try:
            payload, _ = await fetch_payload(transport, secret, blob_id)
            for consumer in consumers:
                result = await consumer.process(blob_id, payload)
                await consumer.save(blob_id, result)
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
