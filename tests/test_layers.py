"""The architecture as executable rules (docs/architecture.md): the import contracts in
pyproject.toml, and SQL against catalog.sqlite only inside ``weightdb.storage.catalog``."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "weightdb"
CATALOG = SRC / "storage" / "catalog"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter over ``root/src`` with ``root/pyproject.toml``'s contracts."""
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "BROKEN" not in result.stdout and "Contracts: 3 kept, 0 broken" in result.stdout


def test_a_storage_module_importing_the_facade_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the source tree where storage imports the facade."""
    shutil.copytree(ROOT / "src", tmp_path / "src")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    verify = tmp_path / "src" / "weightdb" / "storage" / "verify.py"
    verify.write_text("import weightdb.database\n" + verify.read_text())
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "weightdb.storage is not allowed to import weightdb.database" in result.stdout


def _catalog_connection_uses(path: Path) -> list[int]:
    """Lines that reach a catalog's SQLite connection (``<...>.catalog.conn`` or a
    ``Catalog``'s ``conn`` attribute) in one module."""
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "conn"
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "catalog"
    ]


@pytest.mark.parametrize(
    "module",
    sorted(p for p in SRC.rglob("*.py") if CATALOG not in p.parents),
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_no_module_outside_the_catalog_touches_its_connection(module):
    assert _catalog_connection_uses(module) == []


def test_the_connection_check_finds_a_use(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(db):\n    return db.store.catalog.conn.execute('SELECT 1')\n")
    assert _catalog_connection_uses(module) == [2]
