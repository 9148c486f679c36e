"""Backend adapters, one package per framework, mirrored file for file:

    data.py   the native input pipeline fed by the shared BatchPlan
    model.py  the MLP and the canonical ⇄ native parameter mapping
    optim.py  the optimizer and regularization, converted from common.regularization / common.optim
    adapter.py  the common.driver.Adapter that ties them together

`numpy` is the float64 oracle (manual forward and backward, no framework). Each backend runs in its own process
(see backends.worker), so that global framework state (x64, thread pools, GPU memory) never crosses backends.
"""

# name → (adapter module, distribution extra that installs its framework)
BACKENDS = {
    "numpy": ("backends.numpy_backend.adapter", None),
    "torch": ("backends.torch_backend.adapter", "torch"),
    "tf": ("backends.tf_backend.adapter", "tf"),
    "jax": ("backends.jax_backend.adapter", "jax"),
}
FRAMEWORKS = ("torch", "tf", "jax")
REFERENCE = "numpy"


def install_hint(name: str) -> str:
    """The one-line hint printed when a backend's framework is missing."""
    extra = BACKENDS[name][1]
    return f"pip install -c constraints.txt -e '.[{extra}]'"
