"""HTTP transport: every endpoint of SPEC 4 over one aiohttp ClientSession.

It moves sealed bytes only; it never sees a key or a plaintext. Statuses become the
errors of ``errors.py`` in one place (``_raise_for``), and aiohttp's connection errors
become ``ServerUnreachable`` (could not connect) or ``ConnectionLost`` (dropped midway),
both transient, in another (``_mapped``).

aiohttp (and yarl) are not imported with this module: importing aiohttp costs ~0.2 s (it
builds TLS contexts). ``BlobManager.open`` loads it (``load_http_stack``) while the
passphrase KDF runs in a thread, which hides most of it; a BlobManager made otherwise
loads it on its first request.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blobsync.format import TAG_SIZE, b64url_decode, encode_upstream_header

from .errors import (
    AlreadyOnServer,
    AuthFailed,
    BlobNotFound,
    ClientError,
    ConnectionLost,
    MissingBlobs,
    PreconditionFailed,
    QuotaExceeded,
    RemoteError,
    ServerError,
    ServerUnreachable,
    TooLarge,
)

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

    from .feedwire import FeedPage

log = logging.getLogger("blobsync.client.transport")

# Error bodies are short JSON; never read more of one than this.
MAX_ERROR_BODY = 64 << 10
# aiohttp's per-response read buffer: it stops reading the socket at twice this. Its 64 KiB
# default means a pause and a resume per 128 KiB of a large download.
READ_BUFFER = 1 << 20
SOCKET_READ = 1 << 20  # per socket read of a large body, not 256 KiB: aiohttp costs per read
# JSON answers (listings of ids) can be long but not unbounded.
MAX_JSON_BODY = 64 << 20


def load_http_stack() -> None:
    """Import aiohttp now (0.2 s, a third of it building SSL contexts) rather than at the
    first request: BlobManager.open does it while the passphrase KDF runs in a thread."""
    import aiohttp  # noqa: F401


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Turn aiohttp's exceptions into the client's, naming what was being done."""
    import aiohttp

    try:
        yield
    except aiohttp.ClientSSLError as exc:
        raise ServerUnreachable(f"TLS failure talking to the server: {_short(exc)}") from None
    except aiohttp.ClientConnectorError as exc:
        # aiohttp's own text names its SSL context ("ssl:default"), even for http://,
        # and asyncio's says "Connect call failed": the errno's words say why.
        err = exc.os_error
        why = os.strerror(err.errno) if err.errno else (err.strerror or _short(err))
        raise ServerUnreachable(
            f"cannot reach the server ({what}): {exc.host}:{exc.port}: {why}"
        ) from None
    except aiohttp.ConnectionTimeoutError as exc:
        raise ServerUnreachable(f"cannot reach the server ({what}): {_short(exc)}") from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise ConnectionLost(f"connection lost ({what}): {_short(exc)}") from None
    except TimeoutError:
        raise ConnectionLost(f"the server stopped answering ({what})") from None
    except aiohttp.InvalidURL:
        raise ClientError(f"invalid server URL ({what})") from None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


@dataclass
class Download:
    """An open GET of one sealed blob."""

    status: int  # 200, or 206 for a range
    offset: int  # where the body starts in the sealed blob
    total: int | None  # sealed size when the server said it
    tag: bytes | None  # the Tag header, decoded
    _resp: aiohttp.ClientResponse
    meta: str | None = None  # the Blob-Meta header (SPEC 11), as it came

    def chunks(self) -> AsyncIterator[bytes]:
        return _arrived(self._resp.content, "downloading")


class Transport:
    def __init__(
        self,
        server: str,
        user: str,
        token: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        ca_file: str | None = None,
    ) -> None:
        self._server = server.rstrip("/") + "/"
        self._base: URL | None = None
        self.user = user
        self._auth = "Token " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    # --- session -------------------------------------------------------------------------

    @property
    def base(self) -> URL:
        if self._base is None:
            from yarl import URL

            self._base = URL(self._server)
        return self._base

    @base.setter
    def base(self, url: URL) -> None:
        self._base = url

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import ssl

            import aiohttp

            tls: ssl.SSLContext | bool = True
            if self._ca_file:
                tls = ssl.create_default_context(cafile=self._ca_file)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout, sock_read=self._read_timeout
                ),
                auto_decompress=False,  # sealed bytes are what they are
                read_bufsize=READ_BUFFER,
                headers={"Authorization": self._auth},
                connector=aiohttp.TCPConnector(ssl=tls, limit=32),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, *parts: str, **query: str | None) -> URL:
        url = self.base.joinpath(*parts)
        q = {k: v for k, v in query.items() if v is not None}
        return url.with_query(q) if q else url

    def _blobs(self, *parts: str, **query: str | None) -> URL:
        return self._url("blobs", self.user, *parts, **query)

    # --- errors --------------------------------------------------------------------------

    async def _raise_for(self, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status < 400:
            return
        doc: Any = None
        try:
            with _mapped(what):
                body = await _read_capped(resp, MAX_ERROR_BODY)
            if body is not None:
                doc = json.loads(body)
        except (ValueError, ClientError):
            pass
        message = doc.get("error") if isinstance(doc, dict) else None
        message = str(message) if message else resp.reason or "error"
        text = f"{what}: {message} (HTTP {resp.status})"
        status = resp.status
        if status in (401, 403):
            raise AuthFailed(
                f"the server refused the credentials of user {self.user} ({message})", status
            )
        if status == 404:
            missing = doc.get("missing") if isinstance(doc, dict) else None
            if isinstance(missing, list):
                raise MissingBlobs(text, [str(m) for m in missing])
            raise BlobNotFound(text)
        cls = {
            409: AlreadyOnServer,
            412: PreconditionFailed,
            413: TooLarge,
            507: QuotaExceeded,
        }.get(status)
        if cls is None:
            cls = ServerError if status >= 500 else RemoteError
        raise cls(text, status, doc if isinstance(doc, dict) else None)

    async def _json(self, resp: aiohttp.ClientResponse, what: str) -> Any:
        with _mapped(what):
            body = await _read_capped(resp, MAX_JSON_BODY)
        if body is None:
            raise RemoteError(f"{what}: answer too long", resp.status)
        try:
            return json.loads(body)
        except ValueError:
            raise ServerError(f"{what}: the server answered with malformed JSON", 502) from None

    async def _call_json(
        self, method: str, url: URL, what: str, *, data: bytes | None = None
    ) -> Any:
        with _mapped(what):
            async with self.session.request(method, url, data=data) as resp:
                await self._raise_for(resp, what)
                return await self._json(resp, what)

    async def _call(self, method: str, url: URL, what: str, *, data: bytes | None = None) -> None:
        with _mapped(what):
            async with self.session.request(method, url, data=data) as resp:
                await self._raise_for(resp, what)

    # --- server --------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """GET /: the server's version, services and limits (no credentials needed)."""
        doc = await self._call_json("GET", self._url(), "server information")
        if not isinstance(doc, dict):
            raise ServerError("server information: not a JSON object", 502)
        return doc

    async def check_auth(self) -> None:
        """An authenticated request that touches nothing: AuthFailed on a bad token."""
        await self.count_blobs("default")

    # --- listing and flags ---------------------------------------------------------------

    async def list_blobs(
        self,
        namespace: str,
        *,
        filter_flag: str | None = None,
        order_by: str | None = None,
        deleted: bool = False,
        limit: int | None = None,
    ) -> list[str]:
        url = self._blobs(
            namespace=namespace,
            filter_flag=filter_flag,
            order_by=order_by,
            deleted="true" if deleted else None,
            limit=str(limit) if limit else None,  # an extension of this server; sliced too
        )
        doc, _ = await self._listed(url, f"listing namespace {namespace}")
        return doc[:limit] if limit else doc

    async def listing(
        self, namespace: str, *, filter_flag: str | None = None, deleted: bool = False
    ) -> tuple[list[str], str | None]:
        """The ids, and the listing's ``Changes-Cursor`` (SPEC 8; None: the server has no feed)."""
        url = self._blobs(namespace=namespace, filter_flag=filter_flag,
                          deleted="true" if deleted else None)
        return await self._listed(url, f"listing namespace {namespace}")

    async def _listed(self, url: URL, what: str) -> tuple[list[str], str | None]:
        with _mapped(what):
            async with self.session.get(url) as resp:
                await self._raise_for(resp, what)
                doc = await self._json(resp, what)
                cursor = resp.headers.get("Changes-Cursor")
        if not isinstance(doc, list) or not all(isinstance(i, str) for i in doc):
            raise ServerError("listing: not a JSON list of ids", 502)
        return doc, cursor

    async def changes(
        self, namespace: str, since: str | None, *, limit: int | None = None,
        timeout: float = 0.0,
    ) -> FeedPage:
        """A page of the feed of ``namespace`` after ``since`` (SPEC 8), a long poll with
        ``timeout``: feedwire.read_changes (NoFeed on 404, CursorGone on 410)."""
        from .feedwire import read_changes

        return await read_changes(self, namespace, since, limit=limit, timeout=timeout)

    async def count_blobs(self, namespace: str, *, filter_flag: str | None = None) -> int:
        url = self._blobs(namespace=namespace, filter_flag=filter_flag, only_count="true")
        doc = await self._call_json("GET", url, f"counting namespace {namespace}")
        if not isinstance(doc, dict) or not isinstance(doc.get("count"), int):
            raise ServerError("count: not {\"count\": n}", 502)
        return doc["count"]

    async def get_flags(self, namespace: str, blob_id: str) -> list[str]:
        url = self._blobs(blob_id, namespace=namespace, only_flags="true")
        doc = await self._call_json("GET", url, f"flags of {blob_id}")
        if not isinstance(doc, list):
            raise ServerError("flags: not a JSON list", 502)
        return [str(f) for f in doc]

    async def set_flags(
        self, namespace: str, blob_id: str, flags: list[str], *, expect: str | None = None
    ) -> None:
        url = self._blobs(blob_id, namespace=namespace, expect=expect)
        body = json.dumps(flags).encode()
        await self._call("POST", url, f"setting flags of {blob_id}", data=body)

    async def delete_blob(self, namespace: str, blob_id: str) -> None:
        await self._call("DELETE", self._blobs(blob_id, namespace=namespace), f"deleting {blob_id}")

    # --- one blob ------------------------------------------------------------------------

    async def put_blob(self, namespace: str, blob_id: str, body: bytes | AsyncIterable[bytes],
                       size: int, meta: str | None = None) -> None:
        """PUT a sealed blob, and its sealed meta (SPEC 11); AlreadyOnServer on 409."""
        what = f"uploading {blob_id}"
        # A stated length lets the server refuse (413, 507) before reading the body, and
        # saves chunked framing.
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        headers.update({"Blob-Meta": meta} if meta is not None else {})
        url = self._blobs(blob_id, namespace=namespace)
        with _mapped(what):
            async with self.session.put(url, data=body, headers=headers) as resp:
                await self._raise_for(resp, what)

    @asynccontextmanager
    async def get_blob(
        self, namespace: str, blob_id: str, *, offset: int = 0
    ) -> AsyncIterator[Download]:
        """GET a sealed blob, from ``offset`` with a Range when it is not 0."""
        what = f"downloading {blob_id}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = self._blobs(blob_id, namespace=namespace)
        with _mapped(what):
            async with self.session.get(url, headers=headers) as resp:
                if resp.status == 416:
                    raise RemoteError(f"{what}: range not satisfiable", 416)
                await self._raise_for(resp, what)
                tag = _decode_tag(resp.headers.get("Tag"))
                start, total = 0, resp.content_length
                if resp.status == 206:
                    start, total = _content_range(resp.headers.get("Content-Range"), what)
                if (resp.content_length or 0) > READ_BUFFER and resp.connection:
                    resp.connection.transport.max_size = SOCKET_READ  # type: ignore[union-attr]
                yield Download(resp.status, start, total, tag, resp, resp.headers.get("Blob-Meta"))

    async def blob_tail(self, namespace: str, blob_id: str, n: int = TAG_SIZE) -> bytes | None:
        """The last ``n`` bytes of the sealed blob as the server stores it (a suffix
        Range): its tag, for telling whether two sealed blobs are the same without moving
        either. None when the server does not hold the blob."""
        what = f"reading the tag of {blob_id}"
        url = self._blobs(blob_id, namespace=namespace)
        with _mapped(what):
            async with self.session.get(url, headers={"Range": f"bytes=-{n}"}) as resp:
                if resp.status == 404:
                    return None
                await self._raise_for(resp, what)
                body = await _read_capped(resp, n)
        if resp.status != 206 or body is None:
            raise ServerError(f"{what}: the server ignored the byte range", 502)
        return body

    # --- streams -------------------------------------------------------------------------

    @asynccontextmanager
    async def stream_download(
        self, namespace: str, blob_ids: list[str]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """POST /stream direction=download; yields the body in chunks. MissingBlobs on 404."""
        what = f"stream download of {len(blob_ids)} blobs"
        url = self._url("stream", self.user, direction="download", namespace=namespace)
        with _mapped(what):
            async with self.session.post(
                url, data=json.dumps(blob_ids).encode(),
                headers={"Content-Type": "application/json"},
            ) as resp:
                await self._raise_for(resp, what)
                yield _arrived(resp.content, what)

    async def stream_upload(
        self,
        namespace: str,
        items: Sequence[tuple[str, int] | tuple[str, int, str]],
        payloads: AsyncIterable[bytes],
    ) -> tuple[list[str], list[str]]:
        """POST /stream direction=upload: the header line (an item's third element is its
        meta), then ``payloads``, the sealed blobs concatenated. Returns (stored, existing)."""
        what = f"stream upload of {len(items)} blobs"
        header = encode_upstream_header(items)
        length = len(header) + sum(item[1] for item in items)

        async def body() -> AsyncIterator[bytes]:
            yield header
            async for chunk in payloads:
                yield chunk

        url = self._url("stream", self.user, direction="upload", namespace=namespace)
        headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream"}
        with _mapped(what):
            async with self.session.post(url, data=body(), headers=headers) as resp:
                await self._raise_for(resp, what)
                doc = await self._json(resp, what)
        if not isinstance(doc, dict):
            raise ServerError(f"{what}: answer is not a JSON object", 502)
        stored = doc.get("stored") or []
        existing = doc.get("existing") or []
        if not isinstance(stored, list) or not isinstance(existing, list):
            raise ServerError(f"{what}: answer lacks stored/existing lists", 502)
        return [str(s) for s in stored], [str(e) for e in existing]


async def _arrived(content: aiohttp.StreamReader, what: str) -> AsyncIterator[bytes]:
    """A body as it arrives: whatever is there, as it came (no splitting or joining into
    fixed sizes; the read buffer bounds a piece), up to a dropped connection included.

    aiohttp's readers (``readany``, ``read``, ``read_nowait``...) raise a connection error
    as soon as it is recorded, before the bytes that arrived ahead of it and still sit in
    the read buffer (up to twice READ_BUFFER). Those were received: a download cut short
    must keep them (a resume would fetch them again, a stream would lose whole frames), so
    they are handed over first, then the error.
    """
    import aiohttp

    # One generator with the error mapping inside: this runs once per piece of a 1 GiB
    # download, and every generator layer costs there.
    with _mapped(what):
        try:
            async for chunk in content.iter_any():
                yield chunk
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            rest = _buffered(content)
            if rest:
                yield rest
            raise


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """What ``content`` holds already, past a recorded error. aiohttp has no public call
    for it: this uses its private buffer, and gives nothing if that ever changes."""
    read = getattr(content, "_read_nowait", None)
    if read is None or not getattr(content, "_buffer", None):
        return b""
    try:
        return bytes(read(-1))
    except Exception:
        return b""


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The whole body, or None when it is longer than ``cap`` (then read no further).

    A single ``content.read(n)`` returns only what has arrived so far: an answer that
    comes in several TCP segments would be cut. So read chunk by chunk to the end.
    """
    if resp.content_length is not None and resp.content_length > cap:
        return None
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


def _decode_tag(value: str | None) -> bytes | None:
    try:
        return b64url_decode(value.encode()) if value else None
    except (ValueError, TypeError):
        return None


def _content_range(value: str | None, what: str) -> tuple[int, int | None]:
    """``bytes a-b/size`` -> (a, size); anything else is the server's fault (502)."""
    malformed = ServerError(f"{what}: malformed Content-Range {value!r}", 502)
    if value is None:
        raise malformed
    unit, _, rest = value.partition(" ")
    span, _, size = rest.partition("/")
    if unit != "bytes":
        raise malformed
    try:
        return int(span.split("-")[0]), None if size == "*" else int(size)
    except ValueError:
        raise malformed from None
