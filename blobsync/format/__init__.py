"""Sans-IO wire formats of blobsync: preamble, sealing and opening, stream frames, limits.

Nothing here touches sockets, files or asyncio: bytes in, bytes or events out.
"""

from .errors import BlobsyncError, InvalidBlob, LimitExceeded, ProtocolError
from .keys import SECRET_SIZE, blob_key, local_key, rounded_size
from .limits import (
    CHUNK_SIZE,
    FRAME_HEADER_SIZE,
    MAX_FRAME_SIZE,
    MAX_ID_LENGTH,
    MAX_JSON_HEADER,
    valid_id,
)
from .meta import (
    MAX_META_LENGTH,
    InvalidMeta,
    Meta,
    check_meta_text,
    open_meta,
    seal_meta,
    valid_name,
)
from .preamble import (
    ENCODED_PREAMBLE_SIZE,
    PREAMBLE_SIZE,
    TAG_SIZE,
    Method,
    Preamble,
    Scheme,
    SealedHead,
    b64url_decode,
    b64url_encode,
    parse_sealed_head,
)
from .sealing import (
    EXTERNAL_OVERHEAD,
    SEAL_OVERHEAD,
    Opened,
    Opener,
    Sealer,
    check_sealed,
    decryptions,
    open_sealed,
    seal,
    seal_external,
    sealed_size,
)
from .stream import (
    NEED_DATA,
    BlobData,
    BlobEnd,
    BlobStart,
    DownstreamReader,
    FrameTagMismatch,
    StreamEnd,
    StreamError,
    UpstreamHeader,
    UpstreamReader,
    encode_frame,
    encode_frame_header,
    encode_upstream_header,
    parse_upstream_header,
)

__all__ = [
    "MAX_META_LENGTH", "InvalidMeta", "Meta", "check_meta_text", "open_meta", "seal_meta",
    "valid_name",
    "BlobsyncError", "InvalidBlob", "LimitExceeded", "ProtocolError", "SECRET_SIZE",
    "blob_key", "local_key", "rounded_size", "CHUNK_SIZE", "FRAME_HEADER_SIZE",
    "MAX_FRAME_SIZE", "MAX_ID_LENGTH", "MAX_JSON_HEADER", "valid_id", "ENCODED_PREAMBLE_SIZE",
    "PREAMBLE_SIZE", "TAG_SIZE", "Method", "Preamble", "Scheme", "SealedHead",
    "b64url_decode", "b64url_encode", "parse_sealed_head", "EXTERNAL_OVERHEAD",
    "SEAL_OVERHEAD", "Opened", "Opener", "Sealer", "check_sealed", "decryptions", "open_sealed",
    "seal", "seal_external",
    "sealed_size", "NEED_DATA", "BlobData", "BlobEnd", "BlobStart", "DownstreamReader",
    "FrameTagMismatch", "StreamEnd", "StreamError", "UpstreamHeader", "UpstreamReader",
    "encode_frame",
    "encode_frame_header", "encode_upstream_header", "parse_upstream_header",
]
