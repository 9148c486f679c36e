"""tests/conftest.py under pytest-xdist: the tests that share a module fixture run on one worker, so the fixture is
built once (with a pytest that xdist's loadgroup cannot group, it would be built on both workers)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHARED = """
import os
import pytest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with open(os.environ["BUILDS"], "a") as f:
        f.write(f"{os.getpid()}\\n")


@pytest.mark.parametrize("i", range(8))
def test_uses_the_fixture(built, i):
    pass


@pytest.mark.parametrize("i", range(8))
def test_alone(i):
    pass
"""


def test_a_module_fixture_is_built_once_on_two_workers(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    (tmp_path / "test_shared.py").write_text(SHARED)
    builds = tmp_path / "builds.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-v"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BUILDS": str(builds)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "16 passed" in proc.stdout
    assert len(builds.read_text().split()) == 1, proc.stdout
