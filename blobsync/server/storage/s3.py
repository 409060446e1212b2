"""Payloads in an S3 bucket, for several server processes sharing one object store.

Every write goes to a key of its own, ``{prefix}{user}/{ns}/{id[0]}/{id[:3]}/{id[:6]}/{id}/``
followed by a random uuid4 hex: the object store is not trusted to arbitrate between writers
(conditional writes are not universal: ``rclone serve s3`` ignores them), so the index
decides which write of an id wins and the loser deletes its own object.

A writer holds at most one part in memory: below ``part_size`` in total a blob goes up in
one PutObject, above it as a multipart upload whose parts leave as soon as they fill. Before
commit returns, HeadObject must report exactly the bytes written. Reads stream the body in
``CHUNK_SIZE`` pieces with a Range header for partial reads.

Endpoint, credentials and region come from the standard AWS_* variables and files
(AWS_ENDPOINT_URL included), unless given explicitly; the region defaults to us-east-1.

Every request a client of this module sends (each attempt, retries included) is counted by
operation in ``REQUESTS`` and told to the ``request_listeners`` (the server's metrics,
``blobsync_s3_requests_total``): a botocore ``before-send`` hook, so nothing that goes out is
missed, whichever path sent it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
from aiobotocore.session import AioSession, get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from blobsync.format.errors import LimitExceeded
from blobsync.format.limits import CHUNK_SIZE, valid_id

from .base import BlobNotFound, PayloadStore, PayloadWriter, StorageError

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_PART_SIZE = 8 * MiB
# AWS refuses smaller parts except the last; other stores (rclone) accept any size.
S3_MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000  # S3's limit on parts per upload
DEFAULT_REGION = "us-east-1"


class PayloadUnavailable(StorageError):
    """The object store cannot be reached or refused a request; it may be retried."""

    status_hint = 503


class PayloadMismatch(StorageError):
    """The object store kept a different number of bytes than were written."""


_loader: Any = None

# Every S3 request this process has sent, by operation name (PutObject, GetObject, ...).
# Process-wide, because a server process holds one store: the server's metrics show these.
REQUESTS: collections.Counter[str] = collections.Counter()
# Bound methods called with the operation name of each request, held weakly so that the
# metrics of a stopped server (tests run many in one process) drop out by themselves.
_listeners: list[weakref.WeakMethod[Callable[[str], None]]] = []


def add_request_listener(method: Callable[[str], None]) -> None:
    """Call the bound ``method`` with the operation name of every S3 request from now on."""
    _listeners.append(weakref.WeakMethod(method))  # type: ignore[arg-type]


def _count_request(event_name: str, **_: Any) -> None:
    """botocore's ``before-send`` hook: one call per HTTP request, retries included. It must
    return None, or botocore would take the value as the response."""
    op = event_name.rsplit(".", 1)[-1]
    REQUESTS[op] += 1
    alive = []
    for ref in _listeners:
        listener = ref()
        if listener is not None:
            listener(op)
            alive.append(ref)
    _listeners[:] = alive


def new_session() -> AioSession:
    """A session that shares botocore's parsed service models with the ones before it.

    Parsing the S3 model costs ~0.1 s per session; credentials and settings stay per
    session, read from the environment when the client is made.
    """
    global _loader
    session = get_session()
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


def normalize_prefix(prefix: str) -> str:
    """``""`` or ``"a/b/"``: S3 servers that map keys to files refuse empty segments."""
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"bad S3 prefix {prefix!r}")
    return "".join(f"{p}/" for p in parts)


def key_base(user: str, namespace: str, blob_id: str) -> str:
    """Soledad's sharded layout, as a key path; the unique suffix goes below it."""
    return f"{user}/{namespace}/{blob_id[0]}/{blob_id[:3]}/{blob_id[:6]}/{blob_id}/"


def _is_location(rest: str) -> bool:
    """True for a key (less the prefix) that one of our writers made, and nothing else.

    gc deletes what ``locations`` yields and no row names, so foreign objects under the
    prefix must never be yielded.
    """
    parts = rest.split("/")
    if len(parts) != 7:
        return False
    user, namespace, s1, s3, s6, blob_id, suffix = parts
    return (
        valid_id(user)
        and valid_id(namespace)
        and valid_id(blob_id)
        and (s1, s3, s6) == (blob_id[0], blob_id[:3], blob_id[:6])
        and len(suffix) == 32
        and all(c in "0123456789abcdef" for c in suffix)
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Turn the object store's failures into PayloadUnavailable (503), with the S3 code."""
    try:
        yield
    except ClientError as exc:
        log.warning("S3 %s failed: %s", what, exc)
        raise PayloadUnavailable(f"object store refused {what} ({_error_code(exc)})") from exc
    except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
        log.warning("S3 %s failed: %r", what, exc)
        raise PayloadUnavailable(
            f"object store unreachable during {what} ({type(exc).__name__})"
        ) from exc


class _S3Writer(PayloadWriter):
    def __init__(self, store: S3Payloads, key: str) -> None:
        self._store = store
        self._key = key
        self._buf = bytearray()
        self._written = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._object_may_exist = False  # a put or completion was sent, maybe applied
        self._done = False  # committed or aborted

    async def write(self, chunk: bytes) -> None:
        if self._done:
            raise RuntimeError("write after commit or abort")
        if not chunk:
            return
        self._buf += chunk
        self._written += len(chunk)
        if len(self._buf) >= self._store.part_size:
            await self._send_part()

    async def _send_part(self) -> None:
        """Upload the buffer as the next part; the buffer is dropped, not copied."""
        s = self._store
        if len(self._parts) >= MAX_PARTS:
            raise LimitExceeded(
                f"blob is larger than {MAX_PARTS} parts of {s.part_size} bytes can hold"
            )
        if self._upload_id is None:
            with _store_errors("CreateMultipartUpload"):
                created = await s.client.create_multipart_upload(Bucket=s.bucket, Key=self._key)
            self._upload_id = str(created["UploadId"])
        body, self._buf = self._buf, bytearray()
        number = len(self._parts) + 1
        with _store_errors("UploadPart"):
            sent = await s.client.upload_part(
                Bucket=s.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    async def commit(self) -> str:
        if self._done:
            raise RuntimeError("commit after commit or abort")
        s = self._store
        if self._upload_id is None:
            self._object_may_exist = True
            with _store_errors("PutObject"):
                await s.client.put_object(Bucket=s.bucket, Key=self._key, Body=self._buf)
        else:
            if self._buf:
                await self._send_part()
            self._object_may_exist = True
            with _store_errors("CompleteMultipartUpload"):
                await s.client.complete_multipart_upload(
                    Bucket=s.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            self._upload_id = None  # completed: nothing left to abort
        self._buf = bytearray()
        # Trust but verify: what the store kept must be what we sent, or no row may name it.
        with _store_errors("HeadObject"):
            head = await s.client.head_object(Bucket=s.bucket, Key=self._key)
        if int(head["ContentLength"]) != self._written:
            raise PayloadMismatch(
                f"object store kept {head['ContentLength']} bytes of {self._written} written"
            )
        self._done = True
        return self._key

    async def abort(self) -> None:
        # After a commit the location belongs to the caller, who deletes it if needed.
        if self._done:
            return
        self._done = True
        self._buf = bytearray()
        # Shielded: abort usually runs because the request was cancelled, and the cleanup
        # must still reach the store.
        await asyncio.shield(self._cleanup())

    async def _cleanup(self) -> None:
        s = self._store
        try:
            if self._upload_id is not None:
                with contextlib.suppress(ClientError):  # NoSuchUpload: already gone
                    await s.client.abort_multipart_upload(
                        Bucket=s.bucket, Key=self._key, UploadId=self._upload_id
                    )
            if self._object_may_exist:
                await s.client.delete_object(Bucket=s.bucket, Key=self._key)
        except Exception as exc:  # best effort: gc collects whatever is left
            log.warning("could not clean up aborted S3 write %s: %r", self._key, exc)


class S3Payloads(PayloadStore):
    list_page_size = 1000  # keys per ListObjectsV2 call; S3's own maximum

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        max_connections: int = 32,
    ) -> None:
        if part_size < 1:
            raise ValueError("part_size must be positive")
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.part_size = part_size
        self._endpoint_url = endpoint_url
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._max_connections = max_connections
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise PayloadUnavailable("the payload store is not open")
        return self._client

    async def open(self) -> None:
        session = new_session()
        region = self._region or session.get_config_variable("region") or DEFAULT_REGION
        config = Config(
            # Checksums only where S3 demands them: not every S3 server speaks the new ones.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
            s3={"addressing_style": "path"},
            max_pool_connections=self._max_connections,
            connect_timeout=10,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
        )
        stack = contextlib.AsyncExitStack()
        # None lets botocore read AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... itself.
        self._client = await stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=region,
                endpoint_url=self._endpoint_url,
                aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret_key,
                config=config,
            )
        )
        self._client.meta.events.register("before-send.s3", _count_request)
        self._stack = stack
        try:
            await self._ensure_bucket(region)
        except BaseException:
            await self.close()
            raise

    async def _ensure_bucket(self, region: str) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _http_status(exc) != 404:
                raise PayloadUnavailable(
                    f"cannot use bucket {self.bucket!r} ({_error_code(exc) or _http_status(exc)})"
                ) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise PayloadUnavailable(f"object store unreachable: {exc}") from exc
        params: dict[str, Any] = {"Bucket": self.bucket}
        if region != DEFAULT_REGION:
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self.client.create_bucket(**params)
            log.info("created bucket %s", self.bucket)
        except ClientError as exc:
            # Another process created it between our HEAD and this call.
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise PayloadUnavailable(
                    f"cannot create bucket {self.bucket!r} ({_error_code(exc)})"
                ) from exc
            with _store_errors(f"HeadBucket {self.bucket}"):
                await self.client.head_bucket(Bucket=self.bucket)

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def writer(self, user: str, namespace: str, blob_id: str) -> PayloadWriter:
        key = f"{self.prefix}{key_base(user, namespace, blob_id)}{uuid.uuid4().hex}"
        return _S3Writer(self, key)

    async def read(
        self, location: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": location}
        if length is not None and length <= 0:
            with _store_errors("HeadObject"):
                try:
                    await self.client.head_object(**params)
                except ClientError as exc:
                    if _http_status(exc) == 404:
                        raise BlobNotFound(f"no payload at {location}") from None
                    raise
            return
        if offset > 0 or length is not None:
            end = "" if length is None else str(offset + length - 1)
            params["Range"] = f"bytes={offset}-{end}"
        with _store_errors("GetObject"):
            try:
                response = await self.client.get_object(**params)
            except ClientError as exc:
                if _http_status(exc) == 404:
                    raise BlobNotFound(f"no payload at {location}") from None
                if _http_status(exc) == 416:
                    return  # the offset is at or past the end: nothing to yield
                raise
        body = response["Body"]
        try:
            while True:
                with _store_errors("GetObject body"):
                    chunk = await body.read(CHUNK_SIZE)
                if not chunk:
                    return
                yield chunk
        finally:
            # Also when the consumer stops early: the connection must not stay half-read.
            body.close()

    async def delete(self, location: str) -> None:
        with _store_errors("DeleteObject"):
            try:
                await self.client.delete_object(Bucket=self.bucket, Key=location)
            except ClientError as exc:
                if _http_status(exc) != 404:
                    raise

    async def locations(self) -> AsyncIterator[tuple[str, float]]:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix,
            "MaxKeys": self.list_page_size,
        }
        while True:
            with _store_errors("ListObjectsV2"):
                page = await self.client.list_objects_v2(**params)
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                if _is_location(key[len(self.prefix) :]):
                    yield key, obj["LastModified"].timestamp()
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token
