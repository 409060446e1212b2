"""Issue 14: progress measured in bytes. A single large blob moves its bar (and its --json
lines) while it is sealed, uploaded and downloaded, not only once it ends; each bar shows
a rate and an ETA.

The transfers are made to last a few seconds honestly: a relay in front of the real
server (tests/helpers/relay.py) takes the request bodies with a pause after each piece,
or hands the answers over in pieces with a pause; the client is the real CLI. The bars
are read from a real pseudo-terminal (tests/helpers/ptyscreen.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobsync.format import sealed_size
from tests.helpers.cli import Device, Server
from tests.helpers.ptyscreen import bar_percentages, on_terminal, shown_lines
from tests.helpers.relay import Relay

LARGE = 200 << 20
MEDIUM = 48 << 20


@pytest.fixture
def relay(server: Server) -> Iterator[Relay]:
    host, port = server.url.removeprefix("http://").split(":")
    relay = Relay(host, int(port))
    server._call(relay.start())
    try:
        yield relay
    finally:
        server._call(relay.stop())


def big_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / f"{size}.bin"
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    return path


def inside(values: list[int], total: int) -> list[int]:
    return sorted({v for v in values if 0 < v < total})


def progress_lines(stderr: str, phase: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if line["progress"] == phase]


def test_put_of_a_large_file_shows_sealing_then_a_moving_upload_bar(
    ready_a: Device, relay: Relay, tmp_path: Path
) -> None:
    src = big_file(tmp_path, LARGE)
    relay.up_pause = 0.001  # at most 64 MiB/s up: the upload takes 3 s or more
    ready_a.ok("config", "set", "server", relay.url)
    ids = tmp_path / "ids.txt"
    code, seen = on_terminal(ready_a, "put", str(src), stdout=ids)
    assert code == 0, seen.decode(errors="replace")
    assert ids.read_text().split("\t")[1].strip() == str(src)  # stdout: the result only
    sealing = bar_percentages(seen, "sealing")
    uploading = bar_percentages(seen, "uploading")
    # Sealing has a bar of its own, drawn with its total before it ends (it used to be
    # seconds of nothing). How many steps show depends on the disk's speed (200 MB is
    # sealed in a fraction of a second here): tests/client/test_progress_bytes.py checks
    # each step of a seal; this checks the bar is on the screen while it happens.
    assert any(v < 100 for v in sealing), sealing
    assert sealing == sorted(sealing) and sealing[-1] == 100, sealing
    # The upload bar moved within the one blob: several percentages between 0 and 100.
    assert len(inside(uploading, 100)) >= 3, uploading
    assert uploading == sorted(uploading) and uploading[-1] == 100, uploading
    shown = "\n".join(shown_lines(seen))
    assert "1/1 blobs" in shown and "1/1 files" in shown, shown
    text = seen.decode(errors="replace")
    assert "MB/s" in text and "ETA 0:00:" in text  # a rate and an ETA from bytes


def test_get_to_a_file_moves_its_bar(ready_a: Device, ready_b: Device, relay: Relay,
                                     tmp_path: Path) -> None:
    """`get ID -o FILE` drew a bar that never moved: it follows the download now."""
    src = big_file(tmp_path, MEDIUM)
    blob_id = ready_a.ok("put", str(src)).split("\t")[0]
    relay.fragment, relay.fragment_pause = 65536, 0.003  # about 3 s for the blob
    ready_b.ok("config", "set", "server", relay.url)
    out = tmp_path / "out.bin"
    code, seen = on_terminal(ready_b, "get", blob_id, "-o", str(out))
    assert code == 0, seen.decode(errors="replace")
    assert out.read_bytes() == src.read_bytes()
    downloading = bar_percentages(seen, f"get {blob_id[:12]}")
    assert len(inside(downloading, 100)) >= 3, downloading
    assert downloading[-1] == 100, downloading


def test_json_lines_carry_the_bytes_of_one_blob_going_up(
    ready_a: Device, relay: Relay, tmp_path: Path
) -> None:
    src = big_file(tmp_path, MEDIUM)
    relay.up_pause = 0.004  # at most 16 MiB/s up: 3 s or more
    ready_a.ok("config", "set", "server", relay.url)
    proc = ready_a.run("--json", "put", str(src))
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["uploaded"] == 1
    total = sealed_size(MEDIUM)
    lines = progress_lines(proc.stderr.decode(), "upload")
    under_way = [line for line in lines if line["done"] == 0]
    done = [int(line["bytes_done"]) for line in under_way]  # type: ignore[call-overload]
    assert len(inside(done, total)) >= 2, lines
    assert done == sorted(done), lines
    # The total from the start, the rate and ETA from bytes.
    assert all(line["bytes_total"] == total and line["total"] == 1 for line in lines), lines
    assert all(int(line["rate"]) > 0 for line in under_way[1:]), lines  # type: ignore[call-overload]
    assert all(float(line["eta"]) >= 0 for line in under_way[1:]), lines  # type: ignore[arg-type]


def test_json_lines_carry_the_bytes_of_one_blob_coming_down(
    ready_a: Device, ready_b: Device, relay: Relay, tmp_path: Path
) -> None:
    src = big_file(tmp_path, MEDIUM)
    ready_a.ok("put", str(src))
    relay.fragment, relay.fragment_pause = 65536, 0.004
    ready_b.ok("config", "set", "server", relay.url)
    proc = ready_b.run("--json", "sync")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["downloaded"] == 1
    total = sealed_size(MEDIUM)
    lines = progress_lines(proc.stderr.decode(), "download")
    under_way = [line for line in lines if line["done"] == 0]
    done = [int(line["bytes_done"]) for line in under_way]  # type: ignore[call-overload]
    assert len(inside(done, total)) >= 2, lines
    assert done == sorted(done), lines
    assert all(line["total"] == 1 for line in lines), lines  # known before the transfer
    assert any(line["bytes_total"] == total and line["eta"] is not None
               for line in under_way), lines


def test_eta_counts_bytes_not_blobs() -> None:
    from blobsync.cli.progress import eta

    # 1 blob of 1 GB left among 1,000 done: the bytes say 10 s at 100 MB/s, not 0.01%.
    assert eta(1000, 1001, 10**6, 10**9 + 10**6, 1001, 1e8) == pytest.approx(10.0)
    # Sizes of half the blobs unknown: taken at the others' average.
    assert eta(0, 4, 0, 2 * 10**6, 2, 1e6) == pytest.approx(4.0)
    assert eta(3, 3, 5, 5, 3, None) == 0.0  # finished
    assert eta(0, 3, 0, 5, 3, None) is None  # no rate measured yet


def test_two_library_calls_add_up_to_one_bar_with_the_stated_total(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """put's uploads come from put_many and then send_missing: one bar, whose total the
    command stated before either began."""
    from blobsync.cli import progress
    from blobsync.client import Progress

    monkeypatch.setattr(progress, "JSON_INTERVAL", 0.0)
    with progress.Bars(progress.JSON_LINES) as bars:
        bars.expect("upload", 3, 300)
        first, second = bars.callback, bars.callback
        first(Progress("upload", 1, 1, 100, 100))
        second(Progress("upload", 0, 2, 50, 200, 2))
        second(Progress("upload", 2, 2, 200, 200, 2))
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(x["done"], x["total"], x["bytes_done"], x["bytes_total"]) for x in lines] == [
        (1, 3, 100, 300), (1, 3, 150, 300), (3, 3, 300, 300)]
    assert lines[-1]["eta"] == 0.0
