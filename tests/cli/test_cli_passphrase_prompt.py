"""The passphrase prompt at a real terminal: what Ctrl-D and Ctrl-C there do."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.helpers.cli import ROOT, TIMEOUT, Device
from tests.helpers.terminal import fork_on_pty, read_until, reap


def at_the_prompt(device: Device, key: bytes) -> tuple[int, str]:
    """Run ``status`` (it opens the profile, so it asks for the passphrase) with the pty
    as its controlling terminal, and type ``key`` at the prompt."""
    env = device.env()
    del env["BLOBSYNC_PASSPHRASE"]
    argv = [sys.executable, "-m", "blobsync", "--home", str(device.home), "status"]
    pid, master = fork_on_pty(argv, env, ROOT)
    seen = b""
    try:
        seen = read_until(master, b"Passphrase: ", time.monotonic() + TIMEOUT)
        os.write(master, key)
        seen += read_until(master, None, time.monotonic() + 20)
    finally:
        code = reap(pid, 10)
        os.close(master)
    assert code is not None, f"blobsync still runs after the key: {seen!r}"
    return code, seen.decode(errors="replace")


@pytest.mark.parametrize(
    ("key", "code", "message"),
    [
        # Ctrl-D: no passphrase given. Not "run at a terminal": the user is at one.
        (b"\x04", 2, "blobsync: error: no passphrase given"),
        (b"\x03", 130, "blobsync: error: interrupted"),  # Ctrl-C, as anywhere else
    ],
    ids=["ctrl-d", "ctrl-c"],
)
def test_keys_at_the_passphrase_prompt(
    ready_a: Device, key: bytes, code: int, message: str
) -> None:
    got, text = at_the_prompt(ready_a, key)
    assert got == code, text
    lines = [line for line in text.replace("\r", "").splitlines() if line.strip()]
    assert lines[-1] == message, text
    assert "Traceback" not in text and "BLOBSYNC_PASSPHRASE" not in text
