"""A real small disk for full-disk tests: a tmpfs mounted for one test (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str, *, mode: str | None = None) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``"40m"``) at ``where``, made here; unmounted after.

    Skips the test, with the reason, where mounting is not possible: not root, or a
    sandbox that refuses mounts."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    options = f"size={size}" + (f",mode={mode}" if mode else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield where
    finally:
        # Lazy: a process a failed test left behind must not turn cleanup into an error.
        subprocess.run(["umount", "-l", str(where)], check=False)
