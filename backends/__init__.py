"""Backend adapters, one package per framework, mirrored module for module (docs/design.md, "Architecture"):

    data.py     the native input pipeline fed by the shared BatchPlan, yielding common.batching.Rows
    core.py, norm.py, sequence.py   each layer family's kinds (common.layers) as native layers
    model.py    build(layers, spec), load_canonical, to_canonical
    optim.py    the optimizer and regularization, converted from common.regularization / common.optim
    adapter.py  the common.driver.Adapter that ties them together

`numpy` is the float64 oracle (manual forward and backward, no framework). Each backend runs in its own process
(backends.worker), so that global framework state (x64, thread pools, GPU memory) never crosses backends. Which
backends exist is common.frameworks.REGISTRY.
"""

from common.frameworks import FRAMEWORKS, REFERENCE, REGISTRY


def install_hint(name: str) -> str:
    """The one-line hint printed when a backend's framework is missing."""
    return REGISTRY[name].install_hint()


__all__ = ["FRAMEWORKS", "REFERENCE", "REGISTRY", "install_hint"]
