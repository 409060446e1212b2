"""How the code is cut into modules: the local store in modules of one idea each whose
lower ones never reach up, classes that a grep tells apart, and a CLI whose --help loads
no client stack.

The length budget (500 lines a module) is tests/test_module_sizes.py; the layer table
itself (who may import whom) is tests/test_layers.py.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "blobsync"
LOCALSTORE = PACKAGE / "client" / "localstore"

# What other modules and branches import from ``blobsync.client.localstore``: the package
# keeps re-exporting it, wherever it is defined.
EXPORTED = (
    "LocalStore", "Row", "Attach", "Source", "Sealed", "read_file", "LocalFileWriter",
    "PAYLOADS_DB", "SCHEMA_VERSION",
)

# The local store's modules below the store itself: each holds one idea and none of them
# reaches up into the store's queries or its life cycle.
LOWER = ("rows", "files", "schema", "recovery")
UPPER = ("core", "reads", "writes", "store")


def classes(path: Path) -> list[str]:
    return [n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]


def local_imports(path: Path) -> set[str]:
    """The sibling modules of the local store that ``path`` imports (``from .x import``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_lower_modules_never_import_the_store_above_them() -> None:
    modules = sorted(LOCALSTORE.glob("*.py"))
    assert {p.stem for p in modules} >= {*LOWER, *UPPER, "__init__"}, modules
    for name in LOWER:
        reached = local_imports(LOCALSTORE / f"{name}.py") & set(UPPER)
        assert reached == set(), f"localstore/{name}.py imports {sorted(reached)}"


def test_the_names_others_import_stay_importable_from_localstore() -> None:
    localstore = importlib.import_module("blobsync.client.localstore")
    missing = [name for name in EXPORTED if not hasattr(localstore, name)]
    assert missing == []


def test_every_writer_class_has_a_name_of_its_own() -> None:
    """The client's file writer and the server's payload file writer were both
    ``FileWriter``: a grep, a traceback or a profile could not tell them apart."""
    names = [c for path in sorted(PACKAGE.rglob("*.py")) for c in classes(path)]
    writers = [c for c in names if c.endswith("Writer")]
    assert len(writers) >= 3  # the walk found them (PayloadWriter and the two file writers)
    assert sorted({c for c in writers if writers.count(c) > 1}) == []
    assert "FileWriter" not in writers


def test_writers_are_imported_under_their_own_names() -> None:
    """A writer imported under another name (``LocalFileWriter as FileWriter``) brings
    back, in that module, the name a grep could not tell apart."""
    renamed = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name} as {alias.asname}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.endswith("Writer") and alias.asname not in (None, alias.name)
    ]
    assert renamed == []


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
