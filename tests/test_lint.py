"""Lint, as configured in pyproject.toml: the Python code's style (ruff), the Snakefiles' format
(snakefmt --check) and the package's import contracts (import-linter: lqs never imports snakemake,
and its modules import each other without cycles). A few seconds: part of the fast tier."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT


def tool(name: str) -> str:
    """The console script installed beside this interpreter (the test extra), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'", pytrace=False)
    return found


@pytest.mark.parametrize("command", [
    ["ruff", "check", "."],
    ["snakefmt", "--check", "Snakefile", "rules/"],
    ["lint-imports", "--no-cache"],  # no cache directory left in the checkout
], ids=["ruff", "snakefmt", "import-linter"])
def test_lint_finds_nothing(command):
    result = subprocess.run([tool(command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
