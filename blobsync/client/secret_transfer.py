"""The storage secret on the server: where a new device finds it (``init`` with recover).

The passphrase-encrypted document of ``secret.enc`` travels as an external sealed blob
(the server accepts only sealed blobs); the server never sees the secret nor the
passphrase. See docs/client.md, "Storage secret".
"""

from __future__ import annotations

import asyncio

from blobsync.format import InvalidBlob, Opener, seal_external

from .errors import AlreadyOnServer, BlobNotFound, ClientError, WrongPassphrase
from .secrets import decrypt_secret
from .transport import Transport

# Where the passphrase-encrypted storage secret waits for a new device (init --recover).
SECRET_NAMESPACE = "blobsync-secret"
SECRET_BLOB_ID = "storage-secret"
MAX_SECRET_DOCUMENT = 64 << 10


async def download_secret(transport: Transport) -> bytes:
    parts: list[bytes] = []
    opener = Opener(None, SECRET_BLOB_ID)
    total = 0
    try:
        async with transport.get_blob(SECRET_NAMESPACE, SECRET_BLOB_ID) as dl:
            async for chunk in dl.chunks():
                total += len(chunk)
                if total > MAX_SECRET_DOCUMENT:
                    raise ClientError("the storage secret on the server is too large")
                parts.append(opener.feed(chunk))
        opened = opener.finish()
        parts.append(opened.rest)
    except BlobNotFound:
        raise ClientError(
            "the server holds no storage secret for this user: set up the first device "
            "with a plain init (blobsync init, without --recover)"
        ) from None
    except InvalidBlob as exc:
        raise ClientError(f"the storage secret on the server is garbled ({exc})") from None
    if not opened.external:
        raise ClientError("the storage secret on the server is not in the expected form")
    return b"".join(parts)


async def upload_secret(
    transport: Transport, document: bytes, secret: bytes, passphrase: str
) -> bool:
    """Store the encrypted secret on the server; True when this call stored it, False
    when the server already held the same secret."""
    body = seal_external(SECRET_BLOB_ID, len(document)) + document
    try:
        await transport.put_blob(SECRET_NAMESPACE, SECRET_BLOB_ID, body, len(body))
        return True
    except AlreadyOnServer:
        pass
    # Another device set the user up already. Going on with another secret would make
    # every blob of one device unreadable on the other.
    existing = await download_secret(transport)
    try:
        same = await asyncio.to_thread(decrypt_secret, existing, passphrase) == secret
    except WrongPassphrase:
        same = False
    if not same:
        raise ClientError(
            "the server already holds a storage secret for this user: set this device up "
            "with recover (blobsync init --recover)"
        )
    return False


async def delete_secret(transport: Transport) -> None:
    """Take back the secret that an init which then failed uploaded."""
    await transport.delete_blob(SECRET_NAMESPACE, SECRET_BLOB_ID)
