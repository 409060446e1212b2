"""blobsync.allocator: the malloc thresholds are set on glibc, once, and do no harm."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuned_on_glibc_and_idempotent() -> None:
    # In a child, so that this test process keeps glibc's defaults.
    code = (
        "from blobsync.allocator import tune_allocator as t\n"
        "assert t() is True and t() is True\n"
        "big = [bytes(300_000) for _ in range(100)]\n"  # allocations still work
        "assert sum(map(len, big)) == 30_000_000\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reports_whether_glibc_took_the_thresholds() -> None:
    # True exactly where mallopt exists (glibc); False elsewhere, never an exception.
    # In a child, so that this test process keeps glibc's defaults.
    code = "from blobsync.allocator import tune_allocator as t\nprint(t())\n"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == str(GLIBC)
