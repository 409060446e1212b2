"""The storage package's layering, checked on its source.

Dependencies point one way (payload stores never import the BlobStore layer above them),
no module reaches for another's private names, and optional storage features are declared
methods of the interfaces, not attributes probed for with getattr/hasattr.
"""

from __future__ import annotations

import ast
from pathlib import Path

import blobsync.server

SERVER = Path(blobsync.server.__file__).parent
STORAGE = SERVER / "storage"
# The payload stores: below BlobStore, which combines them with an index.
PAYLOAD_MODULES = ("files", "memory", "s3", "sqlitepayloads", "tiered")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of each ``from module import names`` in ``path``; relative modules
    as ``.name``."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            out.append((module, [alias.name for alias in node.names]))
    return out


def test_no_module_imports_private_names_of_another() -> None:
    offenders = [
        f"{path.name}: from {module} import {name}"
        for path in sorted(STORAGE.glob("*.py"))
        for module, names in _imports(path)
        for name in names
        if name.startswith("_") and not module.startswith("__")
    ]
    assert offenders == []


def test_payload_stores_do_not_import_the_blobstore_layer() -> None:
    offenders = [
        f"{name}.py: from {module}"
        for name in PAYLOAD_MODULES
        for module, _ in _imports(STORAGE / f"{name}.py")
        if module.split(".")[-1] in ("blobstore", "sweep", "factory")
    ]
    assert offenders == []


def test_optional_storage_features_are_not_probed_for() -> None:
    paths = [*sorted(STORAGE.glob("*.py")), *sorted(SERVER.glob("routes_*.py"))]
    offenders = [
        f"{path.relative_to(SERVER)}:{node.lineno}"
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
    ]
    assert offenders == []


def _mentions(word: str) -> set[str]:
    """The server modules whose code (not comments) names ``word`` as an attribute."""
    return {
        str(path.relative_to(SERVER))
        for path in SERVER.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == word
    }


def test_bytes_sent_are_counted_in_one_place() -> None:
    # The response's byte count, read by the access log and /metrics alike.
    assert _mentions("output_size") == {"sent.py"}
    # Sealed bytes served: reported to the observer by the store alone, never by a route.
    assert _mentions("on_served") == {"storage/blobstore.py"}


def test_stream_upload_storage_logic_lives_under_storage() -> None:
    routes = (SERVER / "routes_stream.py").read_text()
    tree = ast.parse(routes)
    defined = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert not defined & {"_Upload", "_present", "_check_quota", "StreamUpload"}
    assert ".index." not in routes.split("async def upload")[1]
