"""`blobsync sync --full`, `blobsync sync --watch` and `blobsync incoming process --watch`
against the real server; the watches under a real pseudo-terminal, stopped by ^C as a
person stops them (exit 130, one line, no traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, TIMEOUT, Device, deliver
from tests.helpers.terminal import fork_on_pty, read_until, reap


def put_file(device: Device, path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return device.ok("put", str(path)).split("\t")[0].strip()


@contextmanager
def on_a_terminal(device: Device, *args: str) -> Iterator[tuple[int, list[int]]]:
    """``blobsync ARGS`` with a new pty as its controlling terminal, stdout and stderr;
    yields the master side and a list that receives the exit code once it ended."""
    argv = [sys.executable, "-m", "blobsync", "--home", str(device.home), *args]
    pid, master = fork_on_pty(argv, device.env(), ROOT)
    code: list[int] = []
    try:
        yield master, code
    finally:
        ended = reap(pid, TIMEOUT)
        if ended is not None:
            code.append(ended)
        os.close(master)


def interrupt(master: int, seen: bytes) -> bytes:
    os.write(master, b"\x03")  # ^C, as typed
    seen += read_until(master, b"interrupted", time.monotonic() + TIMEOUT)
    return seen + read_until(master, None, time.monotonic() + 10)


def test_sync_full_lists_and_then_the_feed_goes_on(ready_a: Device, ready_b: Device,
                                                   tmp_path: Path) -> None:
    blob_id = put_file(ready_a, tmp_path / "one.txt", b"one")
    first = ready_b.json("sync", "--full")
    assert first["downloaded"] == 1  # type: ignore[index]
    assert ready_b.json("sync")["downloaded"] == 0  # type: ignore[index]
    assert ready_b.ok("get", blob_id) == "one"
    proc = ready_b.run("sync", "--watch", "--full")
    assert proc.returncode == 2 and b"--watch and --full" in proc.stderr


def test_sync_watch_at_a_terminal_until_ctrl_c(ready_a: Device, ready_b: Device,
                                                tmp_path: Path) -> None:
    with on_a_terminal(ready_b, "sync", "--watch") as (master, code):
        seen = read_until(master, b"resync default", time.monotonic() + TIMEOUT)
        blob_id = put_file(ready_a, tmp_path / "live.txt", b"arrives while watching")
        seen += read_until(master, f"downloaded default {blob_id}".encode(),
                           time.monotonic() + 5)
        # A put in another shell on the watching profile gets in (the lock is free
        # between rounds) and is done at once.
        mine = put_file(ready_b, tmp_path / "mine.txt", b"put beside the watch")
        time.sleep(0.5)
        seen = interrupt(master, seen)
    text = seen.decode(errors="replace")
    assert code == [130], text
    assert "Traceback" not in text
    # The terminal echoes ^C; then the one error line.
    assert text.strip().splitlines()[-1].strip().endswith("blobsync: error: interrupted")
    assert ready_a.ok("get", mine) == "put beside the watch"
    assert ready_b.ok("get", blob_id) == "arrives while watching"


def test_sync_watch_json_lines(ready_a: Device, ready_b: Device, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "blobsync", "--home", str(ready_b.home), "--json", "sync",
         "--watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ready_b.env(), cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "resync" and first["namespace"] == "default"
        blob_id = put_file(ready_a, tmp_path / "x.txt", b"x")
        second = json.loads(proc.stdout.readline())
        assert second == {"event": "downloaded", "namespace": "default", "blob_id": blob_id,
                          "detail": ""}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130
    assert err.decode().strip() == "blobsync: error: interrupted"


def test_incoming_process_watch_handles_mail_as_it_comes(
    ready_a: Device, incoming_token: str, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    deliver(ready_a.account, incoming_token, "early", b"before the watch")
    with on_a_terminal(ready_a, "incoming", "process", "--watch", "--exec",
                       f'cat > "{inbox}/$BLOBSYNC_BLOB_ID"') as (master, code):
        seen = read_until(master, b"incoming MX early (PROCESSED)", time.monotonic() + TIMEOUT)
        time.sleep(0.3)
        deliver(ready_a.account, incoming_token, "late", b"while watching")
        seen += read_until(master, b"incoming MX late (PROCESSED)", time.monotonic() + 5)
        seen = interrupt(master, seen)
    text = seen.decode(errors="replace")
    assert code == [130], text
    assert "Traceback" not in text
    assert {p.name: p.read_bytes() for p in inbox.iterdir()} == {
        "early": b"before the watch", "late": b"while watching"}
    assert ready_a.ok("ls", "--remote", "-n", "MX").split() == []


def test_incoming_process_watch_says_why_a_message_failed(
    ready_a: Device, incoming_token: str
) -> None:
    # The one-shot command says "FAILED (exit status 3)"; the watch said a bare "FAILED"
    # and left the person at the terminal to guess.
    with on_a_terminal(ready_a, "incoming", "process", "--watch", "--exec",
                       'test "$BLOBSYNC_BLOB_ID" = good || exit 3') as (master, code):
        time.sleep(0.5)
        deliver(ready_a.account, incoming_token, "bad", b"refused by the command")
        seen = read_until(master, b"incoming MX bad (", time.monotonic() + TIMEOUT)
        deliver(ready_a.account, incoming_token, "good", b"taken")
        seen += read_until(master, b"incoming MX good (PROCESSED)", time.monotonic() + 5)
        seen = interrupt(master, seen)
    text = seen.decode(errors="replace")
    assert code == [130], text
    assert "incoming MX bad (FAILED (exit status 3))" in text
    assert "incoming MX good (PROCESSED)" in text


def test_a_watch_at_a_terminal_says_it_runs(ready_a: Device, ready_b: Device) -> None:
    # A device already in sync printed nothing at all: a terminal that looked hung.
    ready_b.ok("sync")
    with on_a_terminal(ready_b, "sync", "--watch") as (master, code):
        seen = read_until(master, b"Ctrl-C to stop", time.monotonic() + TIMEOUT)
        seen = interrupt(master, seen)
    text = seen.decode(errors="replace")
    assert code == [130], text
    url = ready_b.account.server.url
    assert f"blobsync: watching namespace default on {url}; Ctrl-C to stop" in text
    with on_a_terminal(ready_a, "incoming", "process", "--watch", "--exec", "cat") as (
            master, code):
        seen = read_until(master, b"Ctrl-C to stop", time.monotonic() + TIMEOUT)
        seen = interrupt(master, seen)
    assert code == [130]
    assert f"blobsync: watching the incoming box (MX) on {url}; Ctrl-C to stop" in seen.decode()


@pytest.mark.parametrize("command", [("sync",), ("incoming", "process")])
def test_the_watch_help_says_what_json_prints(command: tuple[str, ...]) -> None:
    # --json's own help says "one JSON document"; a watch prints one per line.
    run = subprocess.run([sys.executable, "-m", "blobsync", *command, "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)
    assert run.returncode == 0
    assert "with --json a JSON object per line" in " ".join(run.stdout.split())
