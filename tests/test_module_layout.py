"""How the code is cut into modules: the local store in modules of one idea each, short
enough to read, and classes that a grep tells apart.

The layer table itself (who may import whom) is tests/test_layers.py.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "blobsync"
LOCALSTORE = PACKAGE / "client" / "localstore"

# Lines a module of the local store may hold: one idea, read in one sitting.
MAX_LINES = 500

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


def test_the_local_store_is_modules_of_readable_length() -> None:
    modules = sorted(LOCALSTORE.glob("*.py"))
    assert {p.stem for p in modules} >= {*LOWER, *UPPER, "__init__"}, modules
    long = {p.name: n for p in modules if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_lower_modules_never_import_the_store_above_them() -> None:
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
