"""The tree stays lint-, format- and type-clean: ``ruff check .``, ``ruff format --check .`` and ``mypy``
(config in pyproject.toml; the pre-commit hooks run the same).

Both run as subprocesses with the executables of the venv running the tests, from the repository
root so they read ``[tool.ruff]`` / ``[tool.mypy]``; a failure shows the tool's full output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin/ (pytest runs as .venv/bin/python -m pytest)

#: what mypy checks; models/trainer joins when `mypy models/trainer` is clean too
MYPY_TARGETS = ("service", "models/trainer")


def _run_tool(name: str, *args: str) -> None:
    exe = BIN / name
    assert exe.is_file(), f"{exe} not found: install the test extras (pip install -e '.[test]')"
    proc = subprocess.run([str(exe), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"`{name} {' '.join(args)}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("ruff", ("check", ".")),
        ("mypy", MYPY_TARGETS),
    ],
    ids=["ruff", "mypy"],
)
def test_tool_reports_no_errors(name: str, args: tuple[str, ...]) -> None:
    _run_tool(name, *args)
