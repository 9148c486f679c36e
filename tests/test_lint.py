"""The code passes ruff's lint and format check with the settings in pyproject.toml (ruff is in the dev extra)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    proc = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
