"""Driving a command under a real pseudo-terminal, as a person at a keyboard would."""

from __future__ import annotations

import os
import select
import time


def read_until(fd: int, marker: bytes | None, deadline: float) -> bytes:
    """Read the pty until ``marker`` shows (or, with None, until it closes)."""
    got = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return got
        if not chunk:
            return got
        got += chunk
        if marker is not None and marker in got:
            return got
    if marker is not None:
        raise AssertionError(f"{marker!r} never showed: {got!r}")
    return got
