"""The wheel stands on its own: package data, entry points, SPDX licence, and the plugin loads from it.

Built offline from a copy of the sources (``pip wheel --no-deps --no-build-isolation --no-index``),
so it needs no network and never writes ``build/`` or ``*.egg-info`` into the working tree.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "pytest_modelcompat", "muscle")
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input")


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel path, pip's build output) of a wheel built from a clean copy of the sources."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    out = tmp / "dist"
    result = _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(src)])
    (wheel,) = out.glob("pytest_modelcompat-*.whl")
    return wheel, result.stdout + result.stderr


def _dist_info(names: list[str], filename: str) -> str:
    (match,) = [n for n in names if n.endswith(f".dist-info/{filename}")]
    return match


def test_build_prints_no_deprecation_warning(built):
    _, output = built
    assert "deprecat" not in output.lower(), output


def test_wheel_carries_package_data(built):
    wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    for required in (
        "pytest_modelcompat/report/schema/report.schema.json",
        "pytest_modelcompat/report/templates/report.html",
        "pytest_modelcompat/py.typed",
        "pytest_modelcompat/plugin.py",
        "muscle/cli.py",
        "muscle/losses/__init__.py",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "scripts/", "example_suite/"))]


def test_wheel_metadata_spdx_license_and_entry_points(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(_dist_info(names, "METADATA")).decode()
        entry_points = archive.read(_dist_info(names, "entry_points.txt")).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert not any(line.startswith("License: ") for line in metadata.splitlines())
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert parser["pytest11"]["modelcompat"].strip() == "pytest_modelcompat.plugin"
    assert parser["console_scripts"]["muscle"].strip() == "muscle.cli:main"


def test_plugin_and_cli_load_from_the_installed_wheel(built, tmp_path):
    wheel, _ = built
    target = tmp_path / "site"
    _run([*PIP, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    # The wheel's copy comes first on sys.path (the dependencies come from this environment).
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    where = _run(
        [sys.executable, "-c",
         "import pytest_modelcompat.plugin as p, muscle.cli as c, pytest_modelcompat.report.records as r;"
         "print(p.__file__); print(c.__file__); print(r.schema_path().is_file())"],
        cwd=tmp_path, env=env,
    ).stdout.split()
    assert all(Path(path).is_relative_to(target) for path in where[:2]), where
    assert where[2] == "True"
    help_text = _run([sys.executable, "-m", "pytest", "--help"], cwd=tmp_path, env=env).stdout
    assert "--old-adapter" in help_text and "--compat-report" in help_text
    script = target / "bin" / "muscle"
    assert script.is_file()
    usage = _run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env).stdout
    assert "train" in usage and "eval" in usage


def test_docs_point_inside_the_repository():
    """README (the wheel's long description), ARCHITECTURE.md and docs/ link only to files that
    exist in this repository, and never to the out-of-tree spec they were once written against."""
    pages = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text and "SPEC.md" not in text, f"{page.name} points outside the repository"
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http(s):, mailto: ...
                continue
            path = target.split("#")[0]
            if not path:
                continue
            resolved = (page.parent / path).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{page.name}: broken link {target}"
