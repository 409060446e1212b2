"""Issue 14: with --json, results go to stdout as one JSON document and progress goes to
stderr as JSON lines, at most one per second, whether or not stderr is a terminal; -q
turns progress off. Without --json a non-terminal gets no progress at all.

A transfer of a few seconds comes from a relay in front of the server that hands the
answers over in small pieces (tests/helpers/relay.py); device B is moved onto it with
``config set server``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import Device, Server
from tests.helpers.ptyscreen import BAR_CHARS, on_terminal
from tests.helpers.relay import Relay

BLOBS = 24
SIZE = 96 * 1024


@pytest.fixture
def slow_b(server: Server, ready_a: Device, ready_b: Device, tmp_path: Path) -> Iterator[Device]:
    """Device B behind a relay that makes a download of BLOBS blobs last a few seconds; A has put
    them (B has none yet)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(BLOBS):
        (src / f"f{i:02d}").write_bytes(os.urandom(SIZE))
    ready_a.ok("put", str(src))
    host, port = server.url.removeprefix("http://").split(":")
    relay = Relay(host, int(port), fragment=1024, fragment_pause=0.005)
    server._call(relay.start())
    try:
        ready_b.ok("config", "set", "server", relay.url)
        yield ready_b
    finally:
        server._call(relay.stop())


def progress_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def check_rate(lines: list[dict[str, object]]) -> None:
    times = [float(line["elapsed"]) for line in lines]  # type: ignore[arg-type]
    assert times[0] >= 0.99, times  # a command done within a second says nothing
    assert all(b - a >= 0.99 for a, b in zip(times, times[1:], strict=False)), times


def test_json_progress_lines_on_a_pipe(slow_b: Device) -> None:
    proc = slow_b.run("--json", "sync", "--no-stream")
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)  # stdout: the result, one document, nothing else
    assert doc["downloaded"] == BLOBS
    lines = progress_lines(proc.stderr.decode())
    assert len(lines) >= 2, proc.stderr.decode()
    check_rate(lines)
    for line in lines:
        assert line["progress"] == "download"
        assert 0 <= int(line["done"]) <= int(line["total"]) == BLOBS  # type: ignore[call-overload]
        assert set(line) >= {"bytes_done", "bytes_total", "elapsed"}


def test_json_progress_lines_on_a_terminal(slow_b: Device, tmp_path: Path) -> None:
    """stderr a terminal changes nothing with --json: JSON lines, no bars."""
    out = tmp_path / "out.json"
    code, seen = on_terminal(slow_b, "--json", "sync", "--no-stream", stdout=out)
    assert code == 0, seen.decode(errors="replace")
    assert json.loads(out.read_text())["downloaded"] == BLOBS
    text = seen.decode().replace("\r\n", "\n")
    assert not any(c in text for c in BAR_CHARS)
    lines = progress_lines(text)
    assert len(lines) >= 2, text
    check_rate(lines)


def test_quiet_and_plain_pipes_get_no_progress(slow_b: Device) -> None:
    proc = slow_b.run("--json", "-q", "sync", "--no-stream")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["downloaded"] == BLOBS
    assert proc.stderr == b""


def test_no_progress_for_a_pipe_without_json(slow_b: Device) -> None:
    proc = slow_b.run("sync", "--no-stream")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    assert proc.stdout.decode().startswith(f"downloaded {BLOBS},")
