"""The change feed as the client reads it (SPEC 8): a page of changes and how one is read
from the server's JSON, plain data; and ``read_changes``, the request behind the transport's
``changes`` (here to keep transport.py within its size budget)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CursorGone, NoFeed, ServerError

if TYPE_CHECKING:
    from .transport import Transport


@dataclass(frozen=True)
class FeedChange:
    """One change of the feed (SPEC 8): ``op`` is put, delete or flags; ``tag`` (the
    sealed blob's last 16 bytes) and ``size`` only for a put."""

    namespace: str
    blob_id: str
    op: str
    tag: bytes | None = None
    size: int | None = None
    flags: tuple[str, ...] = ()
    meta: str | None = field(default=None, repr=False)  # a put's sealed meta (SPEC 11)


@dataclass(frozen=True)
class FeedPage:
    changes: list[FeedChange]
    cursor: str
    done: bool


def parse_page(doc: Any, what: str) -> FeedPage:
    """A feed page from its JSON; a malformed one is the server's fault (502)."""
    bad = ServerError(f"{what}: malformed answer", 502)
    if not isinstance(doc, dict) or not isinstance(doc.get("cursor"), str):
        raise bad
    raw = doc.get("changes")
    if not isinstance(raw, list):
        raise bad
    out: list[FeedChange] = []
    for c in raw:
        if not isinstance(c, dict) or not isinstance(c.get("blob_id"), str):
            raise bad
        flags = c.get("flags") or []
        size = c.get("size")
        out.append(FeedChange(
            namespace=str(c.get("namespace", "")), blob_id=c["blob_id"], op=str(c.get("op")),
            tag=_tag(c.get("tag")) if c.get("op") == "put" else None,
            size=size if isinstance(size, int) else None,
            flags=tuple(str(f) for f in flags) if isinstance(flags, list) else (),
            meta=c["meta"] if isinstance(c.get("meta"), str) else None,
        ))
    return FeedPage(out, doc["cursor"], bool(doc.get("done", True)))


def _tag(value: object) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return None


async def read_changes(
    transport: Transport, namespace: str, since: str | None, *, limit: int | None = None,
    timeout: float = 0.0,
) -> FeedPage:
    """One page of the change feed of ``namespace`` after ``since`` (SPEC 8); with
    ``timeout`` a long poll. NoFeed on 404 (a server without the feed), CursorGone on
    410 (list in full)."""
    what = f"reading the changes of namespace {namespace}"
    url = transport._url(
        "changes", transport.user, namespace=namespace, since=since,
        limit=str(limit) if limit else None, timeout=f"{timeout:g}" if timeout else None,
    )
    import aiohttp

    from .transport import _mapped

    # A long poll is silent for up to ``timeout``: only then is silence a lost link.
    wait = aiohttp.ClientTimeout(
        total=None, sock_connect=transport._connect_timeout,
        sock_read=transport._read_timeout + timeout,
    )
    with _mapped(what):
        async with transport.session.get(url, timeout=wait) as resp:
            if resp.status == 404:
                raise NoFeed(f"{what}: the server has no change feed", 404)
            if resp.status == 410:
                raise CursorGone(f"{what}: the server no longer has this cursor", 410)
            await transport._raise_for(resp, what)
            doc = await transport._json(resp, what)
    return parse_page(doc, what)
