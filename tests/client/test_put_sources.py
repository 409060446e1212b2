"""The local store remembers which file each blob was put from (schema 3): a put run
again skips unchanged files. Real server, real store."""

from __future__ import annotations

import os
from pathlib import Path

from blobsync.client import BlobManager, SyncStatus
from blobsync.client.localstore import SCHEMA_VERSION
from tests.helpers.passphrase import PASSPHRASE


def files(tmp_path: Path, n: int) -> list[Path]:
    d = tmp_path / "files"
    d.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"{i}.txt"
        p.write_bytes(f"file {i}".encode())
        out.append(p)
    return out


async def test_a_schema_2_store_gets_the_sources_table(devices, tmp_path: Path) -> None:
    a = await devices("a")
    paths = files(tmp_path, 1)
    (kept,) = await a.put_many(paths, upload=False)

    def back_to_schema_2() -> None:
        conn = a.store._conn
        conn.execute("DROP TABLE sources")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")

    await a.store._run(back_to_schema_2)
    home = a.profile.home
    await a.close()

    b = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        def schema() -> tuple[str, int]:
            conn = b.store._conn
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            n = conn.execute("SELECT count(*) FROM sources").fetchone()
            return version[0], n[0]

        assert await b.store._run(schema) == (SCHEMA_VERSION, 0) == ("5", 0)
        assert await b.get(kept) == b"file 0"
        # Stored before the table existed: not known, so stored again, and known after.
        again: list[str] = []
        ids = await b.put_many(paths, upload=False, already=lambda i, p: again.append(i))
        assert ids[0] != kept and again == []
        assert await b.put_many(paths, upload=False,
                                already=lambda i, p: again.append(i)) == ids == again
    finally:
        await b.close()


async def test_put_many_skips_unchanged_files_only(devices, tmp_path: Path) -> None:
    a = await devices("a")
    paths = files(tmp_path, 5)
    first = await a.put_many(paths, upload=False)
    skipped: list[str] = []
    new: list[str] = []

    def run(**kw: object) -> object:
        skipped.clear()
        new.clear()
        return a.put_many(paths, upload=False, stored=lambda i, p: new.append(i),
                          already=lambda i, p: skipped.append(i), **kw)

    assert await run() == first and skipped == first and new == []
    # Changed (mtime), deleted blob, and --force.
    os.utime(paths[0], ns=(0, 12345))
    await a.delete(first[1])
    ids = await run()
    assert ids[2:] == first[2:] and skipped == first[2:]
    assert ids[0] != first[0] and ids[1] != first[1] and new == ids[:2]
    ids = await run(force=True)
    assert skipped == [] and len(set(ids) & set(first)) == 0
    # Local-only blobs count for a local-only put, not for one that uploads.
    (tmp_path / "x").mkdir()
    other = files(tmp_path / "x", 1)
    (private,) = await a.put_many(other, local_only=True)
    assert await a.put_many(other, local_only=True) == [private]
    (shared,) = await a.put_many(other, upload=False)
    assert shared != private
    assert await a.status(shared) is SyncStatus.PENDING_UPLOAD


async def test_a_record_never_matches_a_later_blob_of_the_same_id(devices, tmp_path) -> None:
    a = await devices("a")
    (path,) = files(tmp_path, 1)
    await a.put("reused", path, upload=False)
    assert await a.stored_copies([path]) == {path: "reused"}
    await a.delete("reused")
    await a.put("reused", b"another blob under the same id", upload=False)
    # The file is unchanged, but "reused" is not its blob any more.
    assert await a.stored_copies([path]) == {}
    (new,) = await a.put_many([path], upload=False)
    assert new != "reused" and await a.get(new) == b"file 0"
