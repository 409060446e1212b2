"""Named limits of the wire formats, each with the reason it exists."""

from __future__ import annotations

import re

# SPEC 1: ids are Pascal strings in the preamble, whose length byte stops at 254.
MAX_ID_LENGTH = 254

# SPEC 1: one pattern for users, blob ids and namespaces; it also rules out path traversal.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,254}")

# A stream header lists [id, size] pairs: 1 MiB holds ~3,800 pairs of longest ids and
# ~30,000 of typical ones, while bounding what a server buffers before the first blob.
MAX_JSON_HEADER = 1 << 20

# SPEC 11: the whole meta, as base64url text, is at most this many characters; it bounds
# what a server keeps per blob and what a listing or a stream header carries.
MAX_META_LENGTH = 4096

# The blobs a client sends in one stream upload (its stream_max_count, by default).
MAX_STREAM_BLOBS = 1000

# SPEC 11: an upload header must hold a full stream of blobs with metas of the longest.
# The metas get room of their own on top of MAX_JSON_HEADER, which still bounds the rest
# of the line (ids, sizes, punctuation): 1 MiB + 1000 x 4096 characters, about 5 MiB.
MAX_UPSTREAM_HEADER = MAX_JSON_HEADER + MAX_STREAM_BLOBS * MAX_META_LENGTH

# A downstream frame states its length in 8 hex digits, so no frame can be larger.
MAX_FRAME_SIZE = 0xFFFFFFFF

# Bytes of a download frame header: 8 hex digits, 24 base64 chars of the tag, one space.
FRAME_HEADER_SIZE = 33

# What one read hands back at most: large enough for few syscalls, small enough to stay
# far below the 100 MB memory bound when many transfers run at once.
CHUNK_SIZE = 1 << 16


def valid_id(value: str) -> bool:
    """True when ``value`` is a legal user, blob id or namespace (SPEC 1)."""
    return ID_PATTERN.fullmatch(value) is not None
