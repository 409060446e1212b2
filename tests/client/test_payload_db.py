"""Inline payloads live in a plain SQLite database beside the SQLCipher one: what a crash
between the two leaves is repaired, and stores of the first layout are moved over."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from blobsync.client import BlobManager, SyncStatus
from blobsync.client.localstore import PAYLOADS_DB, SCHEMA_VERSION
from tests.helpers.passphrase import PASSPHRASE


def payload_ids(home: Path) -> set[int]:
    conn = sqlite3.connect(home / PAYLOADS_DB)  # plain SQLite: no key needed
    try:
        return {r[0] for r in conn.execute("SELECT id FROM payloads")}
    finally:
        conn.close()


def back_to_layout_1(store: object, move: bool) -> None:
    """The payloads into the SQLCipher database, as schema 1 kept them; ``move``: gone
    from the payload database too (else a copy stays there)."""
    conn = store._conn  # type: ignore[attr-defined]
    conn.execute("CREATE TABLE main.payloads (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    conn.execute("INSERT INTO main.payloads SELECT id, data FROM pl.payloads")
    if move:
        conn.execute("DELETE FROM pl.payloads")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")


async def test_payloads_are_plain_sqlite_and_private(devices) -> None:
    a = await devices("a")
    await a.put("small", b"x" * 100)
    home = a.profile.home
    assert len(payload_ids(home)) == 1
    assert stat.S_IMODE((home / PAYLOADS_DB).stat().st_mode) == 0o600
    assert b"x" * 50 not in (home / PAYLOADS_DB).read_bytes()  # sealed, not plaintext


async def test_a_crash_between_the_two_databases_is_repaired(devices) -> None:
    a = await devices("a")
    await a.put("kept", b"kept here and uploaded")
    await a.put("half-put", b"stored here, never uploaded", upload=False)
    await a.put("half-synced", b"uploaded, then its local payload lost")
    rows = await a.store.get_many("default", ["kept", "half-put", "half-synced"])
    assert rows["half-synced"].status is SyncStatus.SYNCED
    assert rows["half-put"].status is SyncStatus.PENDING_UPLOAD
    home = a.profile.home
    await a.store._run(a.store._set_sessions, 2)  # and another process died with it open
    await a.close()
    # What a crash between the commits of the two databases leaves: rows whose payload
    # never landed, and a payload whose row never did.
    conn = sqlite3.connect(home / PAYLOADS_DB)
    conn.execute("DELETE FROM payloads WHERE id IN (?, ?)",
                 (rows["half-put"].id, rows["half-synced"].id))
    conn.execute("INSERT INTO payloads (id, data) VALUES (999999, x'00')")
    conn.commit()
    conn.close()

    b = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        after = await b.store.get_many("default", ["kept", "half-put", "half-synced"])
        assert "half-put" not in after  # absent, as if its put never happened
        assert after["half-synced"].status is SyncStatus.PENDING_DOWNLOAD
        assert not after["half-synced"].inline
        assert payload_ids(home) == {rows["kept"].id}
        assert await b.get("kept") == b"kept here and uploaded"
        assert await b.get("half-synced") == b"uploaded, then its local payload lost"
    finally:
        await b.close()


async def test_a_store_of_the_first_layout_is_moved_over(devices) -> None:
    a = await devices("a")
    await a.put("old", b"kept inside the SQLCipher database", upload=False)
    home = a.profile.home
    row = await a.store.get("default", "old")
    assert row is not None

    await a.store._run(back_to_layout_1, a.store, True)
    await a.close()
    assert payload_ids(home) == set()

    b = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        assert await b.get("old") == b"kept inside the SQLCipher database"
        assert payload_ids(home) == {row.id}

        def layout() -> tuple[object, object]:
            conn = b.store._conn
            table = conn.execute(
                "SELECT 1 FROM main.sqlite_master WHERE name = 'payloads'"
            ).fetchone()
            schema = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            return table, schema[0]

        assert await b.store._run(layout) == (None, SCHEMA_VERSION)
    finally:
        await b.close()


async def test_a_power_cut_that_took_the_state_databases_last_commits(
    tmp_path: Path,
) -> None:
    """The state database (synchronous=NORMAL) lost its last commits, the payload database
    (FULL) kept them: row ids, and the sessions count asking for a sweep, went back. The
    payloads past every row id must not block the ids handed out again."""
    import shutil

    from blobsync.client.localstore import LocalStore, Sealed

    def store() -> LocalStore:
        return LocalStore(tmp_path / "local.db", tmp_path / "blobs", tmp_path / "tmp",
                          db_key=b"k" * 32, names_key=b"n" * 32, inline_max=64 << 10)

    def items(prefix: str, n: int) -> list[Sealed]:
        return [Sealed(f"{prefix}{i}", 10, bytes([i]) * 800) for i in range(n)]

    s = store()
    await s.open()
    await s.insert_many("default", SyncStatus.PENDING_UPLOAD, 1, items("kept", 2))
    await s.close()
    shutil.copy(tmp_path / "local.db", tmp_path / "before.db")
    s = store()
    await s.open()
    await s.insert_many("default", SyncStatus.PENDING_UPLOAD, 1, items("lost", 3))
    await s.close()
    shutil.copy(tmp_path / "before.db", tmp_path / "local.db")  # the power cut
    assert len(payload_ids(tmp_path)) == 5

    s = store()
    await s.open()
    try:
        assert len(payload_ids(tmp_path)) == 2  # the three orphans went at open
        await s.insert_many("default", SyncStatus.PENDING_UPLOAD, 1, items("new", 3))
        rows = await s.get_many("default", ["kept0", "kept1", "new0", "new1", "new2"])
        assert len(rows) == 5
        for blob_id, row in rows.items():
            n = int(blob_id[-1])
            assert await s.read_inline(row.id) == bytes([n]) * 800
    finally:
        await s.close()


async def test_a_migration_cut_between_its_two_steps_finishes(devices) -> None:
    a = await devices("a")
    await a.put("old", b"in both databases after the first step", upload=False)
    home = a.profile.home

    # As a migration cut after its copy and before its DROP leaves it.
    await a.store._run(back_to_layout_1, a.store, False)
    await a.close()
    b = await BlobManager.open(home, passphrase=PASSPHRASE)
    try:
        assert await b.get("old") == b"in both databases after the first step"
        gone = await b.store._run(lambda: b.store._conn.execute(
            "SELECT 1 FROM main.sqlite_master WHERE name = 'payloads'").fetchone())
        assert gone is None
    finally:
        await b.close()
