"""The package's public API (pytest_modelcompat/__init__.py) and its layout: every public name
resolves to its owner's object, lazily; importing the package stays light; every module imports
on its own (no import cycles) and only from its own part or the layers below (ARCHITECTURE.md);
muscle imports the gate only through the public API."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_modelcompat

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "lm_eval", "peft")
# ARCHITECTURE.md: each part of the package (a top-level module or sub-package) belongs to a layer
# and imports only from its own part and the layers below.
PARTS = {
    "errors": "base", "atomic": "base", "cache": "base", "progress": "base",
    "metrics": "metrics", "tasks": "tasks", "models": "models", "scoring": "scoring", "report": "report",
    "session": "run", "assertions": "run", "plugin": "run",
}
LAYERS = {"base": 0, "metrics": 1, "tasks": 2, "models": 2, "scoring": 3, "report": 4, "run": 5}


def _modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(pytest_modelcompat.__path__, "pytest_modelcompat."))


def test_every_public_name_is_its_owners_object():
    owners = pytest_modelcompat._OWNERS
    assert set(pytest_modelcompat.__all__) == {*owners, "CompatInputError", "__version__"}
    for name, owner in owners.items():
        module = importlib.import_module(f"pytest_modelcompat.{owner}")
        assert getattr(pytest_modelcompat, name) is getattr(module, name), name
    assert set(pytest_modelcompat.__all__) <= set(dir(pytest_modelcompat))


def test_the_type_checking_imports_list_the_same_owners():
    tree = ast.parse((ROOT / "pytest_modelcompat" / "__init__.py").read_text(encoding="utf-8"))
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    declared = {alias.name: node.module.removeprefix("pytest_modelcompat.")
                for node in block.body for alias in node.names}
    assert declared == pytest_modelcompat._OWNERS


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        pytest_modelcompat.nope  # noqa: B018


def test_importing_the_package_and_its_light_names_imports_no_ml_library():
    code = ("import sys, pytest_modelcompat as p; p.load_suite, p.Session, p.ResultCache, p.discriminative_metrics, "
            "p.load_stack, p.write_reports; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_every_module_imports_on_its_own():
    """Each module imported first, in a process where no other module of the package is loaded:
    a cycle shows as an ImportError of a partially initialised module."""
    code = (
        "import importlib, sys\n"
        f"for name in {_modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('pytest_modelcompat', 'muscle')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def _part(module: str) -> str:
    return module.removeprefix("pytest_modelcompat.").split(".")[0]


def test_every_module_imports_only_its_own_part_and_the_layers_below():
    package = ROOT / "pytest_modelcompat"
    modules = [path for path in sorted(package.rglob("*.py")) if path != package / "__init__.py"]
    assert {_part(".".join(path.relative_to(ROOT).with_suffix("").parts)) for path in modules} == set(PARTS)
    for path in modules:
        importer = PARTS[_part(".".join(path.relative_to(ROOT).with_suffix("").parts))]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):   # function-level imports too
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_modelcompat."):
                imported = PARTS[_part(node.module)]
                assert imported == importer or LAYERS[imported] < LAYERS[importer], (
                    f"{path.relative_to(ROOT)}:{node.lineno}: {importer} imports {node.module}")


def test_muscle_imports_the_gate_only_through_the_public_api():
    for path in sorted((ROOT / "muscle").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_modelcompat."):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}; "
                            "import it from pytest_modelcompat (its __all__)")
            if isinstance(node, ast.Import) and any(a.name.startswith("pytest_modelcompat.") for a in node.names):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} imports a pytest_modelcompat module")
