import subprocess
import sys

from blobsync import __version__


def test_version_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "blobsync", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"blobsync {__version__}"


def test_help_lists_usage() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "blobsync", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: blobsync" in out.stdout
