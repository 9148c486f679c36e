"""`import common` must load no ML framework (docs/design.md, "Architecture")."""

import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax")


def test_common_loads_no_framework():
    code = (
        "import pkgutil, importlib, sys, common\n"
        "for m in pkgutil.iter_modules(common.__path__):\n"
        "    importlib.import_module('common.' + m.name)\n"
        "from common.datasets import load_dataset\n"
        "from common.spec import load_spec\n"
        "load_dataset(load_spec(None))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
