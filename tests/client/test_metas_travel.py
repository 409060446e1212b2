"""Metas travel (SPEC 11): device A puts blobs with names, the server keeps the sealed
metas, device B learns them from a full listing or from the feed and lists the blobs by
name. Against a server without the extension, nothing is sent and the profile says so
once. Real server, real devices."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from blobsync.client import BlobManager
from blobsync.client.metas import WARNED_KEY
from blobsync.format import Meta, open_meta, seal, seal_meta
from tests.helpers.client import Account
from tests.helpers.passphrase import PASSPHRASE
from tests.helpers.servers import make_user, running_server


async def _put_named(a: BlobManager, tmp_path: Path) -> dict[str, tuple[str, int, float]]:
    """Small files in a stream, one large file alone by PUT, bytes by name: by id, what
    each meta says (name, size, mtime)."""
    d = tmp_path / "photos"
    d.mkdir()
    paths = []
    for i in range(3):
        p = d / f"{i}.jpg"
        p.write_bytes(b"s" * (i + 10))
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
        paths.append(p)
    big = d / "big.raw"
    big.write_bytes(os.urandom(300_000))  # above the stream threshold set below: a PUT
    paths.append(big)
    names = [f"photos/{p.name}" for p in paths]
    ids = await a.put_many(paths, names=names)
    blob = await a.put(None, b"hello", name="notes/hello.txt", mtime=1_700_000_000.5)
    await a.sync()
    out = {b: (n, p.stat().st_size, p.stat().st_mtime_ns / 1e9)
           for b, n, p in zip(ids, names, paths, strict=True)}
    out[blob] = ("notes/hello.txt", 5, 1_700_000_000.5)
    return out


def _seen(entries: list) -> dict[str, tuple[str, int | None, float | None]]:
    return {e.blob_id: (e.name, e.size, e.mtime) for e in entries}


async def test_names_reach_another_device_by_full_listing(devices, account: Account,
                                                          tmp_path: Path) -> None:
    a = await devices("a", stream_threshold=100_000)
    want = await _put_named(a, tmp_path)
    # The server keeps each sealed meta, as A sealed it.
    for blob_id, (name, _, _) in want.items():
        info = await account.server.store.index.get_blob("alice", "default", blob_id)
        assert info is not None and info.meta is not None
        assert open_meta(a._secret, blob_id, info.meta).name == name
    b = await devices("b", stream_threshold=100_000)
    await b.sync()  # a first sync: the full listing, with_meta=true
    assert _seen(await b.named()) == want
    assert [e.name for e in await b.named("photos", whole_parts=True)] == [
        "photos/0.jpg", "photos/1.jpg", "photos/2.jpg", "photos/big.raw"]


async def test_names_reach_another_device_by_the_feed(devices, tmp_path: Path) -> None:
    a = await devices("a", stream_threshold=100_000)
    b = await devices("b", stream_threshold=100_000)
    await b.sync()  # its cursor: what follows comes through the feed
    want = await _put_named(a, tmp_path)
    await b.sync()
    assert _seen(await b.named()) == want


async def test_a_meta_that_does_not_open_is_ignored(devices, account: Account) -> None:
    a = await devices("a")
    good = await a.put(None, b"x" * 10, name="good.txt")
    await a.sync()
    info = await account.server.store.index.get_blob("alice", "default", good)
    assert info is not None and info.meta is not None
    # Another blob under the good blob's meta: its tag does not verify for this id.
    async def body():  # noqa: ANN202
        yield seal(a._secret, "swapped", b"y" * 10)

    await account.server.store.put("alice", "default", "swapped", body(), meta=info.meta)
    b = await devices("b")
    report = await b.sync()
    assert not report.failed
    assert {e.blob_id: e.name for e in await b.named()} == {"swapped": "", good: "good.txt"}


async def test_a_blob_fetched_alone_brings_its_meta(devices, account: Account) -> None:
    """A GET's Blob-Meta fills a row that no listing named (a row made here, as a get of
    an id the device never listed makes one)."""
    a = await devices("a", stream_threshold=100_000)
    blob = await a.put(None, os.urandom(200_000), name="alone.bin", mtime=1_600_000_000.0)
    await a.sync()
    b = await devices("b", stream_threshold=100_000)
    await b.store.add_pending_downloads("default", [blob])  # known, but not by a listing
    await b.engine.run("default", ["download"])
    assert _seen(await b.named()) == {blob: ("alone.bin", 200_000, 1_600_000_000.0)}


async def test_a_server_without_metas_gets_none_and_it_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server(tmp_path, settings={"meta_extension": False}) as server:
        account = Account(server, "alice", await make_user(server.store, "alice"), tmp_path)
        a = await account.device("a", stream_threshold=100_000)
        try:
            info = await a.transport.info()
            assert "meta" not in info["extensions"]
            with caplog.at_level(logging.WARNING, logger="blobsync.client"):
                want = await _put_named(a, tmp_path)
            said = [r for r in caplog.records if "does not keep names" in r.getMessage()]
            assert len(said) == 1
            # Nothing went to the server; the names stay here.
            for blob_id in want:
                info_ = await server.store.index.get_blob("alice", "default", blob_id)
                assert info_ is not None and info_.meta is None
            assert _seen(await a.named()) == want
            assert await a.store.remembered(WARNED_KEY + str(a.transport.base)) == "1"
        finally:
            await a.close()
        # Another session of the profile: not said again.
        caplog.clear()
        a = await BlobManager.open(tmp_path / "home-a", passphrase=PASSPHRASE)
        try:
            with caplog.at_level(logging.WARNING, logger="blobsync.client"):
                await a.put(None, b"more", name="more.txt")
                await a.sync()
            assert not [r for r in caplog.records if "does not keep names" in r.getMessage()]
        finally:
            await a.close()
        b = await account.device("b")
        try:
            await b.sync()
            assert {e.name for e in await b.named()} == {""}  # ids only on B
            assert len(await b.named()) == len(want) + 1
        finally:
            await b.close()


async def test_sealed_metas_of_any_length_travel(devices, account: Account) -> None:
    """A name near the longest a meta holds goes up in a stream and comes down by feed."""
    a = await devices("a")
    b = await devices("b")
    await b.sync()
    name = "d/" + "n" * 2900
    assert len(seal_meta(a._secret, "x", Meta(name, 1, time.time()))) <= 4096
    blob = await a.put(None, b"z", name=name)
    other = await a.put(None, b"zz", name="short")
    await a.sync()
    await b.sync()
    assert {e.blob_id: e.name for e in await b.named()} == {blob: name, other: "short"}
