"""Issue 11's structural aims, kept: one idea per module, so no CLI module grows past about
500 lines and BlobManager stays the glue (init and open's set-up are in client/enroll.py,
the secret on the server in client/secret_transfer.py, check in client/check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "blobsync"
CLI_MODULE_MAX = 500
# It was 1,159 lines before check, init and the secret transfer moved out.
MANAGER_MAX = 1000


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


@pytest.mark.parametrize("path", sorted((PACKAGE / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_modules_hold_one_idea_each(path: Path) -> None:
    assert lines(path) <= CLI_MODULE_MAX, f"{path.name}: split it by idea (docs/architecture.md)"


def test_manager_is_the_glue_only() -> None:
    assert lines(PACKAGE / "client" / "manager.py") <= MANAGER_MAX


def test_help_loads_no_client_stack() -> None:
    """The command modules load their heavy parts inside the commands: building the whole
    parser (what --help does) imports neither the client library nor aiohttp nor rich."""
    probe = (
        "import sys; from blobsync.cli.main import build_parser; build_parser(); "
        "print(' '.join(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('aiohttp', 'rich') or m.startswith('blobsync.client'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split() == []
