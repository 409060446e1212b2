"""The layer table of docs/architecture.md, checked on every module's imports.

Imports are read with ``ast`` (those inside functions too), so a rule broken by a lazy
import is caught as well. The self-tests feed the checker a synthetic module breaking each
rule, so a checker that silently stopped seeing a rule would fail here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "blobsync"

# The storage backends: routes reach storage only through BlobStore and storage/base.py.
BACKENDS = (
    "blobsync.server.storage.sqlite",
    "blobsync.server.storage.sqlitepayloads",
    "blobsync.server.storage.sqlitethread",
    "blobsync.server.storage.postgres",
    "blobsync.server.storage.pglisten",
    "blobsync.server.storage.s3",
    "blobsync.server.storage.files",
    "blobsync.server.storage.tiered",
    "blobsync.server.storage.inline",
    "blobsync.server.storage.pgpayloads",
    "blobsync.server.storage.memory",
)
# The format is sans-IO: no event loop, sockets, files or HTTP. ``os`` only for urandom.
FORMAT_FORBIDDEN = ("asyncio", "socket", "io", "pathlib", "aiohttp", "shutil", "tempfile")
FORMAT_OS_ALLOWED = {"urandom"}


@dataclass(frozen=True)
class Rule:
    name: str
    applies: tuple[str, ...]  # module name prefixes the rule binds
    forbidden: tuple[str, ...]  # imported module name prefixes it forbids

    def binds(self, module: str) -> bool:
        return any(under(module, p) for p in self.applies)


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# The sync planner takes plain data and returns plain data: no I/O, no store, no transport.
PLANNER_FORBIDDEN = (
    "asyncio", "socket", "aiohttp", "sqlite3", "pathlib", "tempfile",
    *(f"blobsync.client.{m}" for m in (
        "localstore", "transport", "sync", "download", "upload", "manager", "verified",
        "jobs",
    )),
)
# What BlobManager delegates to: the put, get and delete paths, set-up and check.
MANAGER_PATHS = tuple(
    f"blobsync.client.{m}"
    for m in ("putting", "getting", "deleting", "enroll", "secret_transfer", "check")
)
ROUTES = (
    "blobsync.server.routes_blobs",
    "blobsync.server.routes_stream",
    "blobsync.server.routes_incoming",
    "blobsync.server.app",
)
RULES = (
    Rule(
        "the shared bottom modules import nothing of blobsync",
        ("blobsync.allocator", "blobsync.lockinfo"),
        ("blobsync.format", "blobsync.client", "blobsync.server", "blobsync.cli"),
    ),
    Rule("format is sans-IO", ("blobsync.format",), FORMAT_FORBIDDEN),
    Rule(
        "format is the bottom layer",
        ("blobsync.format",),
        ("blobsync.client", "blobsync.server", "blobsync.cli"),
    ),
    Rule("client never imports the server", ("blobsync.client",), ("blobsync.server",)),
    Rule("client never imports the cli", ("blobsync.client",), ("blobsync.cli",)),
    Rule("server never imports the client", ("blobsync.server",), ("blobsync.client",)),
    Rule("server never imports the cli", ("blobsync.server",), ("blobsync.cli",)),
    Rule(
        "storage never imports the server above it",
        ("blobsync.server.storage",),
        tuple(
            f"blobsync.server.{m}"
            for m in (
                "app", "routes_blobs", "routes_stream", "routes_incoming", "auth", "errors",
                "expect", "params", "metrics", "workers", "logs", "config", "openapi",
            )
        ),
    ),
    Rule("routes use no backend class", ROUTES, BACKENDS),
    Rule("the sync planner is pure", ("blobsync.client.plan",), PLANNER_FORBIDDEN),
    # BlobManager hands them what they use: they never reach back into the facade.
    Rule("the manager's paths never import the manager", MANAGER_PATHS,
         ("blobsync.client.manager",)),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(module: str, source: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every module ``source`` imports (absolute names, ``from x import y`` giving both x and
    x.y since y may be a submodule), with its line; imports inside functions included."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def os_uses(source: str) -> list[tuple[str, int]]:
    """``os.<name>`` attribute uses, and ``from os import <name>`` names."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            out.append((node.attr, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and not node.level:
            out += [(a.name, node.lineno) for a in node.names]
    return out


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    found: list[str] = []
    names = imported(module, source, is_package)
    for rule in RULES:
        if not rule.binds(module):
            continue
        for name, line in names:
            if any(under(name, f) for f in rule.forbidden):
                found.append(f"{module}:{line}: {rule.name}: imports {name}")
    if under(module, "blobsync.format"):
        for attr, line in os_uses(source):
            if attr not in FORMAT_OS_ALLOWED:
                found.append(f"{module}:{line}: format is sans-IO: uses os.{attr}")
    return sorted(set(found))


def test_every_module_keeps_the_layer_table() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40  # the walk found the package
    broken: list[str] = []
    for path in modules:
        broken += violations(
            module_name(path), path.read_text(), is_package=path.name == "__init__.py"
        )
    assert broken == [], "\n".join(broken)


# A module breaking each rule once, and the rule the checker must name for it.
BREAKS = [
    ("blobsync.format.sealing", "import asyncio\n", "format is sans-IO"),
    ("blobsync.format.sealing", "import socket\n", "format is sans-IO"),
    ("blobsync.format.sealing", "from pathlib import Path\n", "format is sans-IO"),
    ("blobsync.format.sealing", "import io\n", "format is sans-IO"),
    ("blobsync.format.sealing", "def f():\n    import aiohttp\n", "format is sans-IO"),
    ("blobsync.format.sealing", "import os\nos.open('x', 0)\n", "format is sans-IO"),
    ("blobsync.format.sealing", "from os import fsync\n", "format is sans-IO"),
    ("blobsync.format.stream", "from ..client import sync\n", "format is the bottom layer"),
    ("blobsync.client.sync", "from blobsync.server import app\n",
     "client never imports the server"),
    (
        "blobsync.client.sync",
        "def f():\n    from ..server.storage.base import BlobInfo\n",
        "client never imports the server",
    ),
    ("blobsync.client.sync", "from ..cli import failures\n", "client never imports the cli"),
    ("blobsync.client.plan", "import asyncio\n", "the sync planner is pure"),
    ("blobsync.lockinfo", "from blobsync.client.errors import ProfileBusy\n",
     "the shared bottom modules import nothing of blobsync"),
    ("blobsync.client.plan", "from .localstore import LocalStore\n", "the sync planner is pure"),
    ("blobsync.client.putting", "from .manager import BlobManager\n",
     "the manager's paths never import the manager"),
    (
        "blobsync.client.getting",
        "def f():\n    from blobsync.client import manager\n",
        "the manager's paths never import the manager",
    ),
    ("blobsync.server.app", "import blobsync.client.errors\n", "server never imports the client"),
    (
        "blobsync.server.storage.files",
        "from ...client.errors import NoSpace\n",
        "server never imports the client",
    ),
    ("blobsync.server.workers", "from ..cli.failures import guarded\n",
     "server never imports the cli"),
    (
        "blobsync.server.storage.blobstore",
        "from ..routes_blobs import get_blob\n",
        "storage never imports the server above it",
    ),
    (
        "blobsync.server.routes_blobs",
        "from blobsync.server.storage.sqlite import SQLiteIndex\n",
        "routes use no backend class",
    ),
    (
        "blobsync.server.routes_stream",
        "from .storage import files\n",
        "routes use no backend class",
    ),
    (
        "blobsync.server.app",
        "def f():\n    from .storage.postgres import PostgresIndex\n",
        "routes use no backend class",
    ),
]


@pytest.mark.parametrize(("module", "source", "rule"), BREAKS)
def test_the_checker_reports_each_broken_rule(module: str, source: str, rule: str) -> None:
    found = violations(module, source)
    assert any(f": {rule}: " in v for v in found), found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("blobsync.format.sealing", "import os\niv = os.urandom(16)\n"),
        ("blobsync.server.app", "from .storage.factory import make_store\n"),
        ("blobsync.server.routes_stream", "from .storage.blobstore import BlobStore\n"),
        ("blobsync.server.routes_blobs", "from ..format.limits import CHUNK_SIZE\n"),
        ("blobsync.cli.server_cmds", "from blobsync.server.storage.factory import make_store\n"),
        ("blobsync.server.storage.s3", "import aiohttp\n"),
        ("blobsync.client.lock", "from blobsync.lockinfo import LockHolder\n"),
        ("blobsync.server.datalock", "from blobsync.lockinfo import LockHolder\n"),
    ],
)
def test_the_checker_allows_what_the_table_allows(module: str, source: str) -> None:
    assert violations(module, source) == []
