"""Issue 14: progress in bytes. A single large blob reports its bytes as they move (sealed,
uploaded, downloaded, read), not only once it ends; the total of a sync is known before the
first transfer. ``REPORT_EVERY`` is set to 0 here so that every chunk reports: the test
sees each step, with no dependence on the machine's speed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blobsync.client import Progress, SyncStatus, tracking
from blobsync.format import sealed_size

SIZE = 8 << 20  # 8 chunks of 1 MiB: a blob that travels alone


@pytest.fixture(autouse=True)
def every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "REPORT_EVERY", 0.0)


def moving(seen: list[Progress], phase: str) -> list[int]:
    """bytes_done of the reports of ``phase`` while no blob of it had finished."""
    return [p.bytes_done for p in seen if p.phase == phase and p.done == 0]


def check_moves(values: list[int], total: int) -> None:
    inside = [v for v in values if 0 < v < total]
    assert len(set(inside)) >= 3, values  # the bar moved within the blob, several times
    assert inside == sorted(inside), values


async def test_a_large_blob_reports_its_bytes_sealed_up_and_down(devices, tmp_path: Path
                                                                 ) -> None:
    a = await devices("a")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(SIZE))
    seen: list[Progress] = []
    [blob_id] = await a.put_many([src], upload=True, progress=seen.append)
    # Sealing: plaintext bytes of the file, its size known before the first.
    seals = [p for p in seen if p.phase == "seal"]
    assert seals[0].total == 1 and seals[0].bytes_total == SIZE and seals[0].bytes_done == 0
    check_moves(moving(seen, "seal"), SIZE)
    assert (seals[-1].done, seals[-1].bytes_done) == (1, SIZE)

    seen.clear()
    assert await a.send_missing(progress=seen.append) == 1
    ups = [p for p in seen if p.phase == "upload"]
    total = sealed_size(SIZE)
    # The plan up front: the first report already has the blob and its size.
    assert (ups[0].total, ups[0].bytes_total) == (1, total)
    check_moves(moving(seen, "upload"), total)
    assert (ups[-1].done, ups[-1].bytes_done) == (1, total)

    b = await devices("b")
    seen.clear()
    report = await b.sync(progress=seen.append, full=True)
    assert report.downloaded == 1
    downs = [p for p in seen if p.phase == "download"]
    assert downs[0].total == 1  # known after the listing, before any transfer
    check_moves(moving(seen, "download"), total)
    assert (downs[-1].done, downs[-1].bytes_done, downs[-1].bytes_total) == (1, total, total)

    # get -o FILE of a blob not here yet: the download's bytes; then local: the reads.
    c = await devices("c")
    seen.clear()
    await c.get(blob_id, dest=tmp_path / "out.bin", progress=seen.append)
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    check_moves(moving(seen, "download"), total)
    seen.clear()
    await c.get(blob_id, dest=tmp_path / "again.bin", progress=seen.append)
    check_moves(moving(seen, "read"), total)
    assert await c.status(blob_id) is SyncStatus.SYNCED


async def test_put_of_one_large_file_reports_sealing(devices, tmp_path: Path) -> None:
    a = await devices("a")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(SIZE))
    seen: list[Progress] = []
    await a.put("big", src, upload=False, progress=seen.append)
    check_moves(moving(seen, "seal"), SIZE)
    assert seen[-1].done == seen[-1].total == 1


async def test_without_a_callback_nothing_is_counted(devices, tmp_path: Path) -> None:
    """No callback, no counters: the chunk loops pay nothing but a None check."""
    a = await devices("a")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(SIZE))
    tracker = tracking.Tracker("upload", None)
    assert tracker.flow("x") is None and not tracker.moving
    await a.put_many([src], upload=True)
    assert await a.send_missing() == 1
