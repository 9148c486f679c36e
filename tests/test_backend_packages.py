"""The backend packages mirror each other (read as source, so this runs without any framework installed): the
same layer-family modules mapping exactly common.layers' kinds, the same model/adapter vocabulary, and adapters
that never branch on the model kind."""

import ast
from pathlib import Path

import pytest

from common.frameworks import FRAMEWORKS, REGISTRY
from common.layers import core, norm, sequence

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)

ROOT = Path(__file__).resolve().parent.parent / "backends"
FAMILIES = {"core": core.KINDS, "norm": norm.KINDS, "sequence": sequence.KINDS}
VOCABULARY = {"model": {"build", "load_canonical", "to_canonical"}, "adapter": {"make_adapter"}}
SHARED = ("data", "optim", "adapter", "model", *FAMILIES)


def _tree(backend: str, module: str) -> ast.Module:
    path = ROOT / REGISTRY[backend].package / f"{module}.py"
    assert path.exists(), f"{backend} has no {module}.py"
    return ast.parse(path.read_text(encoding="utf-8"))


def _top_level(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _layers_keys(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LAYERS" for t in node.targets):
            assert isinstance(node.value, ast.Dict), "LAYERS must be a dict literal"
            return {ast.literal_eval(k) for k in node.value.keys}
    raise AssertionError("no LAYERS")


@pytest.mark.parametrize("backend", list(REGISTRY))
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_module_maps_exactly_the_canonical_kinds(backend, family):
    assert _layers_keys(_tree(backend, family)) == {k.kind for k in FAMILIES[family]}


@pytest.mark.parametrize("backend", list(REGISTRY))
def test_every_backend_speaks_the_same_vocabulary(backend):
    for module in SHARED:
        _tree(backend, module)
    for module, names in VOCABULARY.items():
        assert names <= _top_level(_tree(backend, module)), (backend, module)


def test_the_frameworks_have_the_same_modules():
    files = {fw: {p.stem for p in (ROOT / REGISTRY[fw].package).glob("*.py")} for fw in FRAMEWORKS}
    first = files[FRAMEWORKS[0]]
    assert all(names == first for names in files.values()), files


@pytest.mark.parametrize("backend", list(REGISTRY))
def test_adapters_do_not_branch_on_the_model_kind(backend):
    source = (ROOT / REGISTRY[backend].package / "adapter.py").read_text(encoding="utf-8")
    for marker in ("is_sequence", "seq_pool", '"rnn"', '["kind"]', "self.sequence", "layer_sizes"):
        assert marker not in source, f"{backend} adapter mentions {marker}"
