"""The import-linter contract in pyproject.toml bites: a backward import added to a copy of the package fails it.

Each test copies the source into tmp_path, adds one module with one import, and runs ``lint-imports`` with the
repository's own configuration against the copy, so what is checked is the contract as written, not a re-statement.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "unhardcoded"


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of src/unhardcoded under tmp_path/src, with the repository's pyproject.toml beside it."""
    shutil.copytree(SOURCE, tmp_path / "src" / "unhardcoded", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _add_module(root: Path, dotted: str, source: str) -> None:
    path = root / "src" / Path(*dotted.split(".")).with_suffix(".py")
    path.write_text(f'"""Probe for the layer contract."""\n\n{source}\n', encoding="utf-8")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", command, str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_backward_import_breaks_the_layers(package_copy: Path) -> None:
    _add_module(package_copy, "unhardcoded.router._probe", "from unhardcoded.receipts import model")
    result = _lint_imports(package_copy)
    assert result.returncode != 0, result.stdout
    assert "unhardcoded.router is not allowed to import unhardcoded.receipts" in result.stdout, result.stdout
    assert "unhardcoded.router._probe -> unhardcoded.receipts.model" in result.stdout, result.stdout


def test_the_bottom_may_not_import_a_layer(package_copy: Path) -> None:
    _add_module(package_copy, "unhardcoded._probe_bottom", "from unhardcoded import _wire\nimport unhardcoded.catalog")
    # A new top-level module belongs in a layer (the contract is exhaustive): put it there to test the import alone.
    config = package_copy / "pyproject.toml"
    text = config.read_text(encoding="utf-8")
    bottom = ": _wire"
    assert bottom in text
    config.write_text(text.replace(bottom, bottom + " : _probe_bottom", 1), encoding="utf-8")
    result = _lint_imports(package_copy)
    assert result.returncode != 0, result.stdout
    assert "unhardcoded._probe_bottom -> unhardcoded.catalog" in result.stdout, result.stdout


def test_server_processor_and_instrumentation_are_independent(package_copy: Path) -> None:
    _add_module(package_copy, "unhardcoded.processor._probe", "import unhardcoded.server.access")
    result = _lint_imports(package_copy)
    assert result.returncode != 0, result.stdout
    assert "unhardcoded.processor is not allowed to import unhardcoded.server" in result.stdout, result.stdout


def test_a_new_top_level_module_must_be_placed_in_a_layer(package_copy: Path) -> None:
    _add_module(package_copy, "unhardcoded.unplaced", "")
    result = _lint_imports(package_copy)
    assert result.returncode != 0, result.stdout
    assert "unhardcoded.unplaced" in result.stdout, result.stdout


def test_type_checking_imports_are_exempt(package_copy: Path) -> None:
    _add_module(
        package_copy,
        "unhardcoded.router._probe",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from unhardcoded.receipts import model",
    )
    result = _lint_imports(package_copy)
    assert "unhardcoded.router._probe" not in result.stdout, result.stdout
