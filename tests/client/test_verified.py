"""The one verified-plaintext path (client/verified.py): nothing leaves a Provisional
holder before the blob's tag verified, it spills to an unnamed file past its bound and
leaves nothing behind; and the paths that use it decrypt a blob once."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from blobsync.client import BlobManager
from blobsync.client.verified import Provisional, Unverified, open_into, reread_chunks
from blobsync.format import InvalidBlob, decryptions, seal, seal_external
from blobsync.format.keys import SECRET_SIZE

SECRET = bytes(range(SECRET_SIZE))
OTHER = bytes(reversed(range(SECRET_SIZE)))
PLAIN = os.urandom(300_000)
SEALED = seal(SECRET, "b", PLAIN)


async def pieces(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def held_files(tmp: Path) -> list[str]:
    """Open descriptors of this process on files in ``tmp`` (an unnamed spill file shows
    as ``tmp/#123 (deleted)``)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(tmp)):
            out.append(target)
    return out


BAD = {
    "truncated": (SECRET, SEALED[:-1]),
    "truncated_body": (SECRET, SEALED[: len(SEALED) // 2]),
    "flipped_byte": (SECRET, SEALED[:5000] + bytes([SEALED[5000] ^ 1]) + SEALED[5001:]),
    "flipped_tag": (SECRET, SEALED[:-1] + bytes([SEALED[-1] ^ 0x80])),
    "wrong_key": (OTHER, SEALED),
}


@pytest.mark.parametrize("memory_max", [None, 1 << 20, 1000], ids=["memory", "1MiB", "spill"])
@pytest.mark.parametrize("case", list(BAD))
async def test_nothing_is_released_when_the_tag_fails(
    case: str, memory_max: int | None, tmp_path: Path
) -> None:
    secret, sealed = BAD[case]
    released: list[bytes] = []

    async def sink(data: bytes) -> None:
        released.append(data)

    async with Provisional(tmp_path, memory_max=memory_max) as held:
        with pytest.raises(InvalidBlob):
            await open_into(secret, "b", pieces(sealed), held)
        with pytest.raises(Unverified):
            await held.release(sink)
        with pytest.raises(Unverified):
            await held.whole()
        with pytest.raises(Unverified):
            async for chunk in held.chunks():
                released.append(chunk)
        with pytest.raises(Unverified):
            held.opened  # noqa: B018
    assert released == []
    assert held_files(tmp_path) == [] and os.listdir(tmp_path) == []


async def test_holds_in_memory_up_to_the_bound_then_spills(tmp_path: Path) -> None:
    small = seal(SECRET, "s", b"x" * 1000)
    async with Provisional(tmp_path, memory_max=1000) as held:
        opened = await open_into(SECRET, "s", pieces(small, 100), held)
        assert opened.size == 1000 and not held.spilled
        assert held_files(tmp_path) == []
        assert await held.whole() == b"x" * 1000

    async with Provisional(tmp_path, memory_max=1000) as held:
        await open_into(SECRET, "b", pieces(SEALED), held)
        assert held.spilled
        # Unnamed: an open descriptor, no name in the directory.
        assert len(held_files(tmp_path)) == 1 and os.listdir(tmp_path) == []
        got: list[bytes] = []

        async def sink(data: bytes) -> None:
            got.append(data)

        await held.release(sink)
        assert b"".join(got) == PLAIN
        # Read again from its start, as the incoming box does for each consumer.
        assert b"".join([c async for c in held.chunks()]) == PLAIN
        assert await held.whole() == PLAIN
    assert held_files(tmp_path) == [] and os.listdir(tmp_path) == []


async def test_spilled_holder_is_dropped_on_failure_too(tmp_path: Path) -> None:
    async with Provisional(tmp_path, memory_max=1000) as held:
        with pytest.raises(InvalidBlob):
            await open_into(SECRET, "b", pieces(SEALED[:-3]), held)
        assert held.spilled and len(held_files(tmp_path)) == 1
    assert held_files(tmp_path) == [] and os.listdir(tmp_path) == []


async def test_external_payload_comes_whole_with_its_last_bytes(tmp_path: Path) -> None:
    payload = os.urandom(5000)
    sealed = seal_external("m", len(payload)) + payload
    async with Provisional(tmp_path) as held:
        opened = await open_into(None, "m", pieces(sealed, 333), held)
        assert opened.external and opened.size == len(payload)
        assert await held.whole() == payload


async def test_reset_forgets_and_needs_a_new_verification(tmp_path: Path) -> None:
    async with Provisional(tmp_path, memory_max=1000) as held:
        await open_into(SECRET, "b", pieces(SEALED), held)
        await held.reset()
        with pytest.raises(Unverified):
            await held.whole()
        assert held_files(tmp_path) == []
        await open_into(SECRET, "b", pieces(SEALED), held)
        assert await held.whole() == PLAIN


async def test_verify_only_keeps_nothing() -> None:
    opened = await open_into(SECRET, "b", pieces(SEALED), None)
    assert opened.size == len(PLAIN)
    with pytest.raises(InvalidBlob):
        await open_into(OTHER, "b", pieces(SEALED), None)


async def test_reread_opens_once_when_it_fits_and_refuses_a_changed_copy() -> None:
    before = decryptions()
    got = [c async for c in reread_chunks(SECRET, "b", lambda: pieces(SEALED))]
    assert b"".join(got) == PLAIN and decryptions() - before == 1
    # Past the bound: verified, then decrypted again; a copy that changed between the
    # passes is still refused at the end.
    reads = [SEALED, SEALED[:-1] + bytes([SEALED[-1] ^ 1])]
    with pytest.raises(InvalidBlob):
        async for _ in reread_chunks(SECRET, "b", lambda: pieces(reads.pop(0)),
                                     memory_max=1000):
            pass
    # A copy bad from the start: nothing at all comes out.
    out = []
    with pytest.raises(InvalidBlob):
        async for chunk in reread_chunks(SECRET, "b", lambda: pieces(SEALED[:-1]),
                                         memory_max=1000):
            out.append(chunk)
    assert out == []


# --- the paths that use it, against a real server -----------------------------------------

Devices = Callable[..., Awaitable[BlobManager]]


async def test_open_stream_of_a_fresh_download_decrypts_once(devices: Devices) -> None:
    a = await devices("a")
    b = await devices("b")
    data = os.urandom(3 << 20)  # over the inline size and the 1 MiB holder bound
    await a.put("big", data)
    before = decryptions()
    got = b"".join([c async for c in b.open_stream("big")])
    assert got == data
    assert decryptions() - before == 1  # was 3: download, a verify pass, a yield pass


async def test_open_stream_of_a_local_blob_that_fits_in_memory_decrypts_once(
    devices: Devices,
) -> None:
    a = await devices("a")
    data = os.urandom(600_000)  # a payload file (over the inline size), under 1 MiB
    await a.put("mid", data)
    before = decryptions()
    assert b"".join([c async for c in a.open_stream("mid")]) == data
    assert decryptions() - before == 1  # was 2: a verify pass, then a yield pass
    # Larger than the holder's bound: no plaintext copy on disk (a reader works on a
    # full disk), so it is verified first and decrypted again as it is handed out.
    big = os.urandom(3 << 20)
    await a.put("big", big)
    before = decryptions()
    assert b"".join([c async for c in a.open_stream("big")]) == big
    assert decryptions() - before == 2


async def test_get_into_a_fifo_decrypts_a_local_blob_once(
    devices: Devices, tmp_path: Path
) -> None:
    import asyncio

    a = await devices("a")
    data = os.urandom(900_000)
    await a.put("f", data)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def read() -> bytes:
        with open(fifo, "rb") as f:
            return f.read()

    before = decryptions()
    reader = asyncio.create_task(asyncio.to_thread(read))
    await a.get("f", dest=fifo)
    assert await reader == data
    assert decryptions() - before == 1  # was 2: a verify pass, then a write pass


async def test_put_uploads_the_sealed_bytes_it_holds(devices: Devices) -> None:
    a = await devices("a")

    def no_read_back(*_args: object) -> AsyncIterator[bytes]:
        raise AssertionError("put read back the payload it had just sealed")

    a.store.read_sealed = no_read_back  # type: ignore[method-assign]
    await a.put("small", b"small blob")
    b = await devices("b")
    assert await b.get("small") == b"small blob"


async def test_small_get_stays_in_memory(devices: Devices, tmp_path: Path) -> None:
    a = await devices("a")
    await a.put("small", b"s" * 5000)
    b = await devices("b")
    assert b.store.inline_max > 5000 + 800
    # A partial file could not even be created: the small blob never needs one.
    nowhere = tmp_path / "no-such-dir" / "x.part"
    b.store.partial_path = lambda *_a: nowhere  # type: ignore[method-assign]
    assert await b.get("small") == b"s" * 5000
    assert not nowhere.parent.exists()
    assert await b.get("small") == b"s" * 5000  # kept in the store
