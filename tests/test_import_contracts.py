"""The import contracts in pyproject.toml ([tool.importlinter]) hold on the tree, and fail on an inverted import:
a lower layer importing a higher one, host-side code importing a third-party package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
MODULE_UTILS = Path("collections/ansible_collections/klpfleet/livepatch/plugins/module_utils")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "collections"), "COLUMNS": "400"}  # no wrapped lines
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the code the contracts judge: the package, the collection's plugins, the configuration."""
    ignore = shutil.ignore_patterns("__pycache__", "output", "*.pyc")
    for part in ("klpfleet", "collections/ansible_collections/klpfleet/livepatch/plugins", "tests/import_contracts.py"):
        source, target = ROOT / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    (tmp_path / "tests" / "__init__.py").write_text("")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_on_the_tree(tree):
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


def lint_with(tree: Path, module: Path, line: str) -> str:
    """lint-imports' report on the tree with one line added to one module; it must fail."""
    module = tree / module
    module.write_text(module.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout
    return result.stdout


def test_an_inverted_import_breaks_the_layers(tree):
    # The database layer reaching up into the controller: what the layers exist to refuse.
    report = lint_with(tree, Path("klpfleet/db/types.py"), "from klpfleet.controller import gate")
    assert "klpfleet.db.types -> klpfleet.controller.gate" in report
    assert "every import points down BROKEN" in report


def test_a_cycle_between_siblings_breaks_the_contract(tree):
    # plan imports policy; policy importing plan closes a circle.
    report = lint_with(tree, Path("klpfleet/controller/policy.py"), "from klpfleet.controller import plan")
    assert "No import cycles among sibling modules or packages BROKEN" in report


def test_host_side_code_importing_a_third_party_package_breaks_the_contract(tree):
    report = lint_with(tree, MODULE_UTILS / "_modinfo.py", "import yaml")
    assert "_modinfo imports yaml, which a target host does not have" in report
