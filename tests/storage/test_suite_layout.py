"""The shape of the test tree that keeps pytest's imports sound, and the storage suites.

pytest imports a module of a directory without ``__init__.py`` (``tests/``,
``tests/storage/``) by its bare basename: two such modules of one name collide, and a test
module that another imports as ``tests.storage.test_x`` is loaded a second time under that
name. Shared code lives in ``tests/helpers/`` or a conftest; a conftest is imported only by
the modules of its own directory, as pytest loads it under a name of its own and an import
from elsewhere (``tests.cli.conftest``) loads it a second time.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.helpers.storage_backends import BACKENDS, INDEXES, PAYLOADS

TESTS = Path(__file__).resolve().parent.parent
SUITES = (
    "test_index_suite.py",
    "test_feed_suite.py",
    "test_payload_suite.py",
    "test_combined_suite.py",
)


def _python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append(base)
            # ``from tests.storage import test_x`` names the module in the alias
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def test_no_test_module_is_imported_by_another_file() -> None:
    offenders = [
        f"{path.relative_to(TESTS)} imports {name}"
        for path in _python_files()
        for name in _imported_modules(path)
        if name.rsplit(".", 1)[-1].startswith("test_")
    ]
    assert offenders == []


def _imported_conftest_dirs(path: Path) -> list[Path]:
    """The directories whose conftest.py ``path`` imports, however the import is spelled."""
    dirs: list[Path] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
            anchor = TESTS.parent
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".") if node.module else []
            dotted = [".".join([*module, alias.name]) for alias in node.names]
            dotted.append(".".join(module))
            anchor = TESTS.parent
            if node.level:
                anchor = path.parent
                for _ in range(node.level - 1):
                    anchor = anchor.parent
        else:
            continue
        for name in dotted:
            parts = [p for p in name.split(".") if p]
            if parts and parts[-1] == "conftest":
                dirs.append(anchor.joinpath(*parts[:-1]).resolve())
    return dirs


def test_no_module_imports_the_conftest_of_another_directory() -> None:
    offenders = [
        f"{path.relative_to(TESTS)} imports {where.relative_to(TESTS.parent)}/conftest.py"
        for path in _python_files()
        for where in _imported_conftest_dirs(path)
        if where != path.parent
    ]
    assert offenders == []


def test_code_shared_across_directories_lives_in_helpers_or_harness() -> None:
    shared = {"helpers", "harness"}
    offenders = [
        f"{path.relative_to(TESTS)} imports {name}"
        for path in _python_files()
        for name in _imported_modules(path)
        if name.startswith("tests.")
        and (where := name.split(".")[1]) not in shared
        and where != path.relative_to(TESTS).parts[0]
    ]
    assert offenders == []


def test_no_module_basename_repeats_across_directories_without_init() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in _python_files():
        if path.name == "conftest.py" or (path.parent / "__init__.py").exists():
            continue  # pytest imports conftests apart; a package's modules are qualified
        by_name[path.name].append(str(path.relative_to(TESTS)))
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}


def test_each_storage_test_lives_in_one_suite_over_its_layer() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for suite in SUITES:
        tree = ast.parse((TESTS / "storage" / suite).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.name.startswith("test_"):
                    where[node.name].append(suite)
    assert {name: suites for name, suites in where.items() if len(suites) > 1} == {}
    assert set(INDEXES) == {"memory", "sqlite", "postgres"}
    assert set(PAYLOADS) == {"memory", "files", "sqlite", "tiered", "s3", "postgres",
                             "pg-s3-tiered"}
    assert {"memory", "sqlite-files", "sqlite-tiered", "postgres-s3", "postgres-s3-tiered",
            "postgres-local"} <= set(BACKENDS)
