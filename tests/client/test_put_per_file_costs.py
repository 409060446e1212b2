"""The put of many small files without per-file work it does not need (issue 13): the
files' one stat taken by the caller, the files read with os calls, the batch inserted with
one statement per table, the sealed payloads sent in few pieces. Real server, real store."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from blobsync.client import SyncStatus, putting, upload
from blobsync.client.errors import BlobExists, ClientError
from blobsync.client.localstore import Sealed
from blobsync.format.stream import encode_upstream_header


def small_files(tmp_path: Path, n: int) -> list[Path]:
    d = tmp_path / "files"
    d.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"{i:03d}"
        p.write_bytes(os.urandom(100 + i))
        out.append(p)
    return out


async def test_put_many_with_sources_stats_no_file_again(
    devices, tmp_path: Path, monkeypatch
) -> None:
    """Sources the caller took (the CLI, from the open of its walk) are used as they are:
    no file is stat'ed again, and they are what the store records for a put run again."""
    a = await devices("a")
    paths = small_files(tmp_path, 5)
    sources = [putting.file_source(p) for p in paths]
    names = {str(p) for p in paths} | {s.path for s in sources}
    real_stat = os.stat
    stats: list[str] = []

    def counting_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path) in names:  # type: ignore[call-overload]
            stats.append(os.fspath(path))  # type: ignore[call-overload]
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counting_stat)
    assert await a.stored_copies(paths, sources=sources) == {}
    ids = await a.put_many(paths, upload=False, sources=sources)
    assert stats == []
    monkeypatch.undo()
    assert await a.stored_copies(paths) == dict(zip(paths, ids, strict=True))
    with pytest.raises(ValueError):  # one source per path, or nothing is done
        await a.put_many(paths, upload=False, sources=sources[:-1])


async def test_put_many_refuses_a_file_changed_since_its_source(
    devices, tmp_path: Path
) -> None:
    """A file that grew or shrank after its size was taken is not stored from a part of
    it: the batch fails whole."""
    a = await devices("a")
    grows, shrinks = small_files(tmp_path, 2)
    for p, after in ((grows, grows.read_bytes() + b"more"), (shrinks, b"x")):
        src = putting.file_source(p)
        p.write_bytes(after)
        with pytest.raises(ClientError, match="changed while it was read"):
            await a.put_many([p], upload=False, sources=[src])
    assert await a.local_list() == []


def test_read_small_reads_exactly_the_size(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 1000)
    assert putting.read_small(str(p), 1000) == b"x" * 1000
    assert putting.read_small(str(p), 999) is None  # grew past what was expected
    assert putting.read_small(str(p), 1001) is None  # shrank
    (tmp_path / "e").write_bytes(b"")
    assert putting.read_small(str(tmp_path / "e"), 0) == b""


def test_new_ids_are_uuid4_hex() -> None:
    for _ in range(200):
        blob_id = putting._new_id()
        assert len(blob_id) == 32
        u = uuid.UUID(hex=blob_id)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and u.hex == blob_id


async def test_insert_many_ids_never_reuse_a_removed_row(devices) -> None:
    """insert_many gives the row ids itself (one executemany per table): they go past the
    highest ever given out, as AUTOINCREMENT does, so a source record of a removed blob
    never matches a new one; and a duplicate is named and leaves nothing."""
    a = await devices("a")
    store = a.store
    await a.put("old", b"x" * 10, upload=False)
    old = await store.get("default", "old")
    assert old is not None
    await store.remove("default", "old")
    sealed = [Sealed(f"n{i}", 3, b"p" * 40 + bytes([i]) * 16) for i in range(3)]
    await store.insert_many("default", SyncStatus.PENDING_UPLOAD, 1, sealed)
    rows = await store.get_many("default", [s.blob_id for s in sealed])
    assert sorted(r.id for r in rows.values()) == [old.id + 1, old.id + 2, old.id + 3]
    for s in sealed:
        assert await store.read_inline(rows[s.blob_id].id) == s.payload
        assert await store.tail(rows[s.blob_id], 16) == s.payload[-16:]
    again = [Sealed("m0", 3, b"q" * 56), Sealed("n1", 3, b"r" * 56), Sealed("m2", 3, b"s" * 56)]
    with pytest.raises(BlobExists, match="blob n1 already exists"):
        await store.insert_many("default", SyncStatus.PENDING_UPLOAD, 1, again)
    assert await store.get_many("default", ["m0", "m2"]) == {}


async def test_set_many_counts_only_rows_it_changed(devices) -> None:
    a = await devices("a")
    for name in ("p1", "p2", "l1"):
        await a.put(name, b"x", upload=False, local_only=name.startswith("l"))
    n = await a.store.set_many(
        "default", ["p1", "p2", "l1", "missing"], [SyncStatus.PENDING_UPLOAD],
        status=SyncStatus.SYNCED, retries=0,
    )
    assert n == 2
    assert sorted(await a.local_list(status=SyncStatus.SYNCED)) == ["p1", "p2"]
    assert await a.local_list(status=SyncStatus.LOCAL_ONLY) == ["l1"]


async def test_sealed_payloads_go_in_few_pieces() -> None:
    """Blobs held in memory reach the socket joined (about 256 KiB a piece), not one
    write per 10 KB blob; the bytes are the same."""
    payloads = [os.urandom(10_000) for _ in range(100)]
    pieces = [p async for p in upload._in_memory(payloads)]
    assert b"".join(pieces) == b"".join(payloads)
    assert len(pieces) == 4  # 1,000,000 bytes in pieces of at least 256 KiB
    assert [p async for p in upload._in_memory([])] == []


def test_upstream_header_is_unchanged_json() -> None:
    items = [("a", 1), ("b-c_d", 22)]
    assert encode_upstream_header(items) == b'[["a", 1], ["b-c_d", 22]]\n'


async def test_put_many_with_sources_uploads_every_batch(
    devices, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(putting, "PUT_BATCH_COUNT", 4)
    a = await devices("a", concurrency=2)
    b = await devices("b")
    paths = small_files(tmp_path, 11)
    sources = [putting.file_source(p) for p in paths]
    ids = await a.put_many(paths, upload=True, sources=sources)
    assert sorted(await a.local_list(status=SyncStatus.SYNCED)) == sorted(ids)
    await b.sync()
    for blob_id, p in zip(ids, paths, strict=True):
        assert await b.get(blob_id) == p.read_bytes()
