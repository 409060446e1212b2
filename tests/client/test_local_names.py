"""A device keeps what each blob's meta says (SPEC 11; local store schema 5): put with a
name, list by name and prefix, the sealed meta kept to travel with the blob, names never
on disk in clear. Real server, real store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from blobsync.client import BlobManager, ClientError
from blobsync.client.localstore import SCHEMA_VERSION
from blobsync.format import Meta, open_meta
from tests.helpers.passphrase import PASSPHRASE


async def meta_text(m: BlobManager, blob_id: str, namespace: str = "default") -> str | None:
    def q() -> str | None:
        r = m.store._conn.execute(
            "SELECT meta FROM blobs WHERE namespace = ? AND blob_id = ?", (namespace, blob_id)
        ).fetchone()
        return r[0]

    return await m.store._run(q)


async def test_put_bytes_with_a_name(devices) -> None:
    a = await devices("a")
    before = time.time()
    blob = await a.put(None, b"hello", name="notes/hello.txt", media_type="text/plain",
                       upload=False)
    (row,) = await a.named()
    assert (row.blob_id, row.name, row.size, row.mode, row.mtype) == (
        blob, "notes/hello.txt", 5, None, "text/plain")
    assert before <= row.mtime <= time.time()
    # The sealed meta kept to travel with the blob opens to what the row says.
    text = await meta_text(a, blob)
    assert text is not None
    assert open_meta(a._secret, blob, text) == Meta(
        "notes/hello.txt", 5, row.mtime, None, "text/plain")


async def test_put_a_file_takes_its_mtime_and_mode(devices, tmp_path: Path) -> None:
    a = await devices("a")
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    blob = await a.put(None, path, name="a.bin", upload=False)
    (row,) = await a.named()
    assert (row.blob_id, row.name, row.size, row.mode) == (blob, "a.bin", 100, 0o640)
    assert row.mtime == 1_600_000_000_123_456_789 / 1e9


async def test_put_many_names_small_and_large_files(devices, tmp_path: Path) -> None:
    a = await devices("a")
    d = tmp_path / "photos"
    d.mkdir()
    small = [d / f"{i}.jpg" for i in range(3)]
    for i, p in enumerate(small):
        p.write_bytes(b"s" * (i + 1))
    large = d / "big.raw"
    large.write_bytes(os.urandom(200_000))  # above the inline limit: a file of its own
    paths = [*small, large]
    names = [f"photos/{p.name}" for p in paths]
    ids = await a.put_many(paths, names=names, upload=True)
    rows = await a.named()
    assert [(r.name, r.blob_id, r.size) for r in rows] == sorted(
        (n, b, p.stat().st_size) for n, b, p in zip(names, ids, paths, strict=True))
    for r in rows:
        text = await meta_text(a, r.blob_id)
        assert text is not None
        assert open_meta(a._secret, r.blob_id, text).name == r.name


async def test_listing_by_prefix_whole_parts_and_name(devices) -> None:
    a = await devices("a")
    ids = {}
    for name in ("photos/a.jpg", "photos/sub/b.jpg", "photos2/c.jpg", "photosx", "zeta"):
        ids[name] = await a.put(None, name.encode(), name=name, upload=False)
    unnamed = await a.put(None, b"no name", upload=False)
    twin = await a.put(None, b"same name", name="zeta", upload=False)

    every = await a.named()
    assert [r.name for r in every] == [
        "", "photos/a.jpg", "photos/sub/b.jpg", "photos2/c.jpg", "photosx", "zeta", "zeta"]
    assert every[0].blob_id == unnamed
    assert [r.name for r in await a.named("photos")] == [
        "photos/a.jpg", "photos/sub/b.jpg", "photos2/c.jpg", "photosx"]
    assert [r.name for r in await a.named("photos", whole_parts=True)] == [
        "photos/a.jpg", "photos/sub/b.jpg"]
    assert [r.name for r in await a.named("photos/", whole_parts=True)] == [
        "photos/a.jpg", "photos/sub/b.jpg"]
    assert [r.blob_id for r in await a.named(name="zeta")] == sorted(
        [ids["zeta"], twin], key=[ids["zeta"], twin].index)
    assert await a.named("nothing") == []
    # A blob being deleted is not listed.
    await a.delete(ids["photosx"])
    assert "photosx" not in [r.name for r in await a.named()]


@pytest.mark.parametrize("name", ["", "/etc/passwd", "a/../b", "a//b", "x" * 5000])
async def test_a_name_that_cannot_be_a_meta_stores_nothing(devices, name: str) -> None:
    a = await devices("a")
    with pytest.raises(ClientError):
        await a.put(None, b"data", name=name, upload=False)
    assert await a.named() == []


async def test_names_are_never_on_disk_in_clear(devices) -> None:
    a = await devices("a")
    marker = "secret-holiday-plans-7c1f"
    await a.put(None, b"x" * 50, name=f"{marker}/a.txt", upload=False)
    home = a.profile.home
    await a.close()
    for path in home.rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path


async def test_a_schema_4_store_migrates_to_5(devices) -> None:
    a = await devices("a")
    old = await a.put(None, b"from before names", upload=False)

    def back_to_schema_4() -> None:
        conn = a.store._conn
        conn.execute("DROP INDEX blobs_names")
        for col in ("name", "mtime", "mode", "mtype", "meta"):
            conn.execute(f"ALTER TABLE blobs DROP COLUMN {col}")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")

    await a.store._run(back_to_schema_4)
    home = a.profile.home
    await a.close()

    b = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        def version() -> str:
            return b.store._conn.execute(
                "SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]

        assert await b.store._run(version) == SCHEMA_VERSION == "5"
        new = await b.put(None, b"after", name="after.txt", upload=False)
        assert [(r.blob_id, r.name) for r in await b.named()] == [(old, ""), (new, "after.txt")]
        assert await b.get(old) == b"from before names"
    finally:
        await b.close()


async def test_named_copies_match_name_size_and_mtime(devices, tmp_path: Path) -> None:
    from blobsync.client import SyncStatus

    a = await devices("a")
    one = await a.put(None, b"12345", name="a.txt", mtime=100.5, upload=False)
    await a.put(None, b"123", name="b.txt", mtime=7.0, upload=False)
    every = [s for s in SyncStatus]
    found = await a.store.named_copies("default", [
        ("a.txt", 5, 100.5),   # the same: found
        ("b.txt", 3, 8.0),     # another mtime
        ("c.txt", 3, 7.0),     # no such name
    ], every)
    assert found == {"a.txt": one}
    # Only blobs in the statuses asked for count.
    assert await a.store.named_copies("default", [("a.txt", 5, 100.5)],
                                      [SyncStatus.SYNCED]) == {}
    assert await a.store.named_copies("other", [("a.txt", 5, 100.5)], every) == {}
