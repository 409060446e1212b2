"""``admin import-soledad``: a Soledad blobs tree of real sealed blobs into real stores."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blobsync.format import open_sealed, seal, seal_external
from blobsync.server.soledad_import import ImportReport, classify, import_soledad, read_flags
from blobsync.server.storage.base import NewBlob, Order
from blobsync.server.storage.blobstore import BlobStore
from blobsync.server.storage.factory import make_store
from tests.harness.stores import postgres_s3_store
from tests.helpers import subproc

SECRET = os.urandom(128)
BASE_TIME = 1_600_000_000


def soledad_path(root: Path, user: str, namespace: str | None, blob_id: str) -> Path:
    """Where Soledad's fs_backend keeps a blob; ``namespace=None``: the pre-release layout."""
    shards = [blob_id[0], blob_id[:3], blob_id[:6]]
    parts = [user, *([namespace] if namespace is not None else []), *shards, blob_id]
    return root.joinpath(*parts)


def put_file(path: Path, data: bytes, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


class SoledadTree:
    """A Soledad blobs dir built like fs_backend builds it, and what an import must find."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs: dict[tuple[str, str, str], bytes] = {}  # (user, ns, id) -> sealed

    def blob(self, user: str, ns: str | None, blob_id: str, data: bytes, age: int,
             flags: list[str] | None = None, imported_ns: str | None = None) -> Path:
        path = put_file(soledad_path(self.root, user, ns, blob_id), data, BASE_TIME + age)
        if flags is not None:
            Path(f"{path}.flags").write_text(json.dumps(flags))
        self.blobs[(user, imported_ns or ns or "default", blob_id)] = data
        return path

    def deleted(self, user: str, ns: str, blob_id: str, age: int) -> None:
        path = soledad_path(self.root, user, ns, blob_id)
        put_file(Path(f"{path}.deleted"), b"", BASE_TIME + age)


def build_tree(root: Path) -> SoledadTree:
    t = SoledadTree(root)
    # alice's default namespace: stored order (mtime) differs from name order.
    t.blob("alice", "default", "c-oldest", seal(SECRET, "c-oldest", b"one"), age=1)
    t.blob("alice", "default", "a-middle", seal(SECRET, "a-middle", os.urandom(300_000)),
           age=2, flags=["PROCESSED"])
    t.blob("alice", "default", "b-newest", seal(SECRET, "b-newest", b""), age=3)
    # Deleted, then created again: Soledad left the .deleted file; the live blob wins.
    t.blob("alice", "default", "reborn", seal(SECRET, "reborn", b"again"), age=4)
    t.deleted("alice", "default", "reborn", age=0)
    # Plain deletions, older one first in deletion order whatever their names.
    t.deleted("alice", "default", "zz-gone-first", age=5)
    t.deleted("alice", "default", "aa-gone-last", age=6)
    # The incoming box: an external blob, PENDING.
    payload = os.urandom(1000)
    t.blob("alice", "MX", "mail1", seal_external("mail1", len(payload)) + payload, age=7,
           flags=["PENDING"])
    # bob, written by a pre-release Soledad without a namespace dir.
    t.blob("bob", None, "legacy1", seal(SECRET, "legacy1", b"old layout"), age=8,
           imported_ns="default")
    # A flags file that is not JSON: the blob comes in, unflagged, with a warning.
    t.blob("bob", "notes", "n1", seal(SECRET, "n1", b"note"), age=9)
    Path(f"{soledad_path(root, 'bob', 'notes', 'n1')}.flags").write_text("[PENDING")
    return t


def add_bad_files(root: Path) -> dict[str, Path]:
    bad = {
        "garbage": put_file(soledad_path(root, "alice", "default", "garbage"), b"x" * 900, 0),
        # Sealed for another id: its preamble names "someone-else".
        "wrong-id": put_file(soledad_path(root, "alice", "default", "wrongid"),
                             seal(SECRET, "someone-else", b"hi"), 0),
        # Cut inside its tag.
        "short": put_file(soledad_path(root, "alice", "default", "short"),
                          seal(SECRET, "short", b"")[:-20], 0),
    }
    # Not part of Soledad's layout: reported as skipped, never imported.
    put_file(root / "README", b"hello", 0)
    put_file(root / "alice" / "default" / "stray", b"x", 0)
    put_file(root / "alice" / "default" / "x" / "xyz" / "xyzabc" / "wrong-shard", b"x", 0)
    return bad



@pytest.fixture(params=["sqlite-files", "postgres-s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "sqlite-files":
        s = make_store(str(tmp_path / "srv"), None, None)
    else:
        s = await postgres_s3_store(tmp_path, request)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def read_all(store: BlobStore, user: str, ns: str, blob_id: str) -> bytes:
    _, chunks = await store.read(user, ns, blob_id)
    return b"".join([c async for c in chunks])


async def test_import_everything(store: BlobStore, tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "soledad")
    bad = add_bad_files(tree.root)
    await store.index.add_user("bob", "0" * 64)  # alice has no account yet
    lines: list[str] = []

    report = await import_soledad(store, tree.root, report=lines.append)

    assert report.imported == len(tree.blobs)
    assert report.existing == 0
    assert report.imported_bytes == sum(len(b) for b in tree.blobs.values())
    for (user, ns, blob_id), data in tree.blobs.items():
        assert await read_all(store, user, ns, blob_id) == data, (user, ns, blob_id)
    # Stored order follows Soledad's mtimes, not names.
    assert await store.index.list_blobs("alice", "default", order=Order.OLDEST_FIRST) == [
        "c-oldest", "a-middle", "b-newest", "reborn",
    ]
    assert (await store.index.get_blob("alice", "default", "a-middle")).flags == {"PROCESSED"}
    assert (await store.index.get_blob("alice", "MX", "mail1")).flags == {"PENDING"}
    assert (await store.index.get_blob("alice", "default", "c-oldest")).flags == frozenset()
    assert await store.index.list_blobs("alice", "MX", filter_flag="PENDING") == ["mail1"]
    assert (await store.index.get_blob("bob", "notes", "n1")).flags == frozenset()
    assert [w.path for w in report.warnings] == [
        f"{soledad_path(tree.root, 'bob', 'notes', 'n1')}.flags"
    ]
    # Tombstones in deletion order; none for the re-created id.
    assert await store.index.list_deleted("alice", "default") == ["zz-gone-first",
                                                                  "aa-gone-last"]
    assert report.tombstones == 2
    # The invalid ones are reported by path and left out.
    assert sorted(p.path for p in report.invalid) == sorted(str(p) for p in bad.values())
    for blob_id in ("garbage", "wrongid", "short"):
        assert await store.index.get_blob("alice", "default", blob_id) is None
    assert len(report.skipped) == 3
    assert report.users == {"alice", "bob"}
    assert report.unregistered_users == ["alice"]
    # Usage counts what was imported, so quotas hold from the first request on.
    alice = sum(len(d) for (u, _, _), d in tree.blobs.items() if u == "alice")
    assert await store.index.usage("alice") == alice
    assert any(line.startswith("alice/default: 4 imported") for line in lines), lines
    assert any(line.startswith("invalid: ") and "wrongid" in line for line in lines)
    assert "blobsync user add" in report.summary()


async def test_rerun_skips_what_exists(store: BlobStore, tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "soledad")
    first = await import_soledad(store, tree.root)
    seqs = {k: (await store.index.get_blob(*k)).seq for k in tree.blobs}  # type: ignore[misc]
    # A blob added to Soledad since the first run, and the import run again.
    tree.blob("alice", "default", "late", seal(SECRET, "late", b"late"), age=100)

    second = await import_soledad(store, tree.root)

    assert first.imported == len(tree.blobs) - 1
    assert (second.imported, second.existing) == (1, len(tree.blobs) - 1)
    assert (second.tombstones, second.tombstones_existing) == (0, 2)
    for key, seq in seqs.items():
        assert (await store.index.get_blob(*key)).seq == seq  # untouched
    assert (await store.index.list_blobs("alice", "default", order=Order.OLDEST_FIRST))[-1] \
        == "late"
    assert await store.index.list_deleted("alice", "default") == ["zz-gone-first",
                                                                  "aa-gone-last"]
    assert await store.index.usage("alice") == sum(
        len(d) for (u, _, _), d in tree.blobs.items() if u == "alice"
    )


async def test_namespace_default_option(tmp_path: Path) -> None:
    store = make_store(str(tmp_path / "srv"), "memory:", "memory:")
    await store.open()
    tree = SoledadTree(tmp_path / "soledad")
    tree.blob("carol", "default", "d1", seal(SECRET, "d1", b"1"), age=1)
    tree.blob("carol", None, "d2", seal(SECRET, "d2", b"2"), age=2)
    tree.blob("carol", "other", "o1", seal(SECRET, "o1", b"3"), age=3)
    report = await import_soledad(store, tree.root, namespace_default="legacy")
    assert report.imported == 3
    assert sorted(await store.index.list_blobs("carol", "legacy")) == ["d1", "d2"]
    assert await store.index.list_blobs("carol", "other") == ["o1"]
    assert await store.index.list_blobs("carol", "default") == []
    with pytest.raises(ValueError):
        await import_soledad(store, tree.root, namespace_default="../x")
    with pytest.raises(FileNotFoundError):
        await import_soledad(store, tmp_path / "nowhere")
    await store.close()


async def test_imported_blob_opens(tmp_path: Path) -> None:
    store = make_store(str(tmp_path / "srv"), None, None)
    await store.open()
    try:
        tree = SoledadTree(tmp_path / "soledad")
        plain = os.urandom(200_000)
        tree.blob("dave", "default", "big", seal(SECRET, "big", plain), age=1)
        assert (await import_soledad(store, tree.root)).imported == 1
        assert open_sealed(SECRET, "big", await read_all(store, "dave", "default", "big")) \
            == plain
    finally:
        await store.close()


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("default", "a", "abc", "abcdef", "abcdefgh"), ("default", "abcdefgh", "blob")),
        (("MX", "a", "abc", "abcdef", "abcdefgh.flags"), ("MX", "abcdefgh", "flags")),
        (("ns", "a", "abc", "abcdef", "abcdefgh.deleted"), ("ns", "abcdefgh", "deleted")),
        (("a", "ab", "ab", "ab"), ("DEF", "ab", "blob")),  # short ids shard to themselves
        (("a", "abc", "abcdef", "abcdefgh"), ("DEF", "abcdefgh", "blob")),
        (("default", "b", "abc", "abcdef", "abcdefgh"), None),  # wrong shard
        (("default", "abcdefgh"), None),
        (("default", "a", "abc", "abcdef", "abc.def"), None),
        (("de.fault", "a", "abc", "abcdef", "abcdefgh"), None),
        (("default", "a", "abc", "abcdef", "abcdefgh.tmp"), None),
    ],
)
def test_classify(parts: tuple[str, ...], expected: tuple[str, str, str] | None) -> None:
    default = "DEF"
    if expected is not None and expected[0] == "default":
        expected = (default, *expected[1:])  # Soledad's `default` dir maps to the option
    assert classify(parts, default) == expected


def test_read_flags(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text('["PENDING", "FAILED"]')
    assert read_flags(str(f)) == (frozenset({"PENDING", "FAILED"}), None)
    assert read_flags(str(tmp_path / "absent")) == (frozenset(), None)
    for bad in ('{"a": 1}', "[1]", '["NEW"]', "nope"):
        f.write_text(bad)
        flags, problem = read_flags(str(f))
        assert flags == frozenset() and problem


def test_summary_mentions_counts() -> None:
    r = ImportReport(imported=3, existing=2, tombstones=1)
    text = r.summary()
    assert "imported 3 blobs" in text and "2 already present" in text
    assert "blobsync user add" not in text


@pytest.fixture(params=["memory", "sqlite-files", "postgres-s3"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "memory":
        s = make_store(str(tmp_path / "srv"), "memory:", "memory:")
    elif request.param == "sqlite-files":
        s = make_store(str(tmp_path / "srv"), None, None)
    else:
        s = await postgres_s3_store(tmp_path, request)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_add_tombstone(any_store: BlobStore) -> None:
    index = any_store.index
    await index.insert_blob("u", "ns", NewBlob("live", 10, b"t" * 16, "loc1"))
    await index.insert_blob("u", "ns", NewBlob("old", 10, b"t" * 16, "loc2"))
    await index.delete_blob("u", "ns", "old")

    assert await index.add_tombstone("u", "ns", "gone") is True
    assert await index.add_tombstone("u", "ns", "gone") is False  # keeps its place
    assert await index.add_tombstone("u", "ns", "old") is False  # deleted already
    assert await index.add_tombstone("u", "ns", "live") is False  # a live blob wins
    assert await index.list_deleted("u", "ns") == ["old", "gone"]
    assert await index.list_deleted("u", "other") == []
    # As for any tombstone, creating the id again removes it.
    await index.insert_blob("u", "ns", NewBlob("gone", 10, b"t" * 16, "loc3"))
    assert await index.list_deleted("u", "ns") == ["old"]
    assert await index.usage("u") == 20


def test_cli_import(tmp_path: Path) -> None:
    """``blobsync admin import-soledad``: progress and summary on stderr, exit 5 when some
    blobs were invalid, then the data is served by the store it was imported into."""
    tree = build_tree(tmp_path / "soledad")
    data = tmp_path / "data"
    run = subproc.blobsync("admin", "import-soledad", str(tree.root), "--data", str(data))
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert f"imported {len(tree.blobs)} blobs" in run.stderr
    assert "alice/default: 4 imported" in run.stderr
    assert "blobsync user add" in run.stderr  # nobody has an account yet

    add_bad_files(tree.root)
    again = subproc.blobsync("admin", "import-soledad", str(tree.root), "--data", str(data))
    assert again.returncode == 5, again.stderr
    assert f"imported 0 blobs (0 bytes), {len(tree.blobs)} already present, 3 invalid" \
        in again.stderr

    bad = subproc.blobsync("admin", "import-soledad", str(tmp_path / "none"), "--data",
                           str(data))
    assert bad.returncode == 1 and bad.stderr.startswith("blobsync: error: not a directory")
    assert "Traceback" not in bad.stderr + again.stderr + run.stderr

    async def check() -> None:
        store = make_store(str(data), None, None)
        await store.open()
        try:
            for (user, ns, blob_id), sealed in tree.blobs.items():
                assert await read_all(store, user, ns, blob_id) == sealed
        finally:
            await store.close()

    asyncio.run(check())
