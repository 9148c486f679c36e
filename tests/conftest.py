"""Test placement under pytest-xdist: tests that share a module-scoped fixture run on one worker.

xdist builds a module fixture once in every worker that runs one of its tests, so a fixture that trains every
backend over a grid (tests/dp_acceptance.py's `runs`, the cross-backend records) was built twice on two workers.
Each test that requests a module fixture, directly or through another fixture, gets `xdist_group(<module>)`, which
`--dist loadgroup` keeps on one worker; a group the test already has is kept beside it.

A test marked `framework_free` (tox runs it in one env only) fails if it imports an ML framework the worker had not
imported before it.
"""

import inspect
import sys

import pytest

from common.frameworks import FRAMEWORKS, REGISTRY

FRAMEWORK_MODULES = {m for b in FRAMEWORKS for m in REGISTRY[b].imports}


def _requests_module_fixture(item: pytest.Item) -> bool:
    """Whether a fixture of module scope is among those the test function's parameters request (autouse ones,
    which every test of their module gets, are not)."""
    definitions = item._fixtureinfo.name2fixturedefs
    todo, seen = list(inspect.signature(item.function).parameters), set()
    while todo:
        name = todo.pop()
        if name in seen or not definitions.get(name):
            continue
        seen.add(name)
        definition = definitions[name][-1]
        if definition.scope == "module":
            return True
        todo += definition.argnames
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and _requests_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(autouse=True)
def _framework_free_guard(request):
    if request.node.get_closest_marker("framework_free") is None:
        yield
        return
    before = FRAMEWORK_MODULES & sys.modules.keys()
    yield
    assert not FRAMEWORK_MODULES & sys.modules.keys() - before, "a framework_free test imported an ML framework"
