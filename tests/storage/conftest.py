"""The storage suites' backends, in the manner of restic's backend tests, one layer at a time.

- ``index_store``: each MetadataIndex (INDEXES) under the index suite, with memory payloads
  beneath it, so that what the suite sees is the index's behaviour alone.
- ``payload_store``: each PayloadStore (PAYLOADS) under the payload suite, with a memory
  index above it.
- ``store``: the whole BlobStore over every combined configuration the server runs
  (BACKENDS), for the combined suite and the BlobStore tests beside it (stream batches,
  the observer).

The tables live in ``tests/helpers/storage_backends.py``: an implementation joins with one
entry in the table of its layer. The index and payload suites take their layer's fixture
under the name ``store`` (a module fixture of that name), so the three suites' tests read
alike.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from blobsync.format import seal
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.memory import MemoryIndex, MemoryPayloads
from tests.helpers.storage_backends import BACKENDS, INDEXES, PAYLOADS


@contextlib.asynccontextmanager
async def _opened(store: BlobStore) -> AsyncIterator[BlobStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=list(INDEXES))
async def index_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    index = await INDEXES[request.param](tmp_path, request)
    async with _opened(BlobStore(index, MemoryPayloads())) as s:
        yield s


@pytest.fixture(params=list(PAYLOADS))
async def payload_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BlobStore]:
    payloads = await PAYLOADS[request.param](tmp_path, request)
    async with _opened(BlobStore(MemoryIndex(), payloads)) as s:
        yield s


@pytest.fixture(params=list(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    async with _opened(await BACKENDS[request.param](tmp_path, request)) as s:
        yield s


@pytest.fixture
def secret() -> bytes:
    return os.urandom(128)


@pytest.fixture
def sealed(secret: bytes) -> Callable[..., bytes]:
    """sealed(blob_id, size=100): a real sealed blob of random plaintext."""

    def make(blob_id: str, size: int = 100) -> bytes:
        return seal(secret, blob_id, os.urandom(size))

    return make
