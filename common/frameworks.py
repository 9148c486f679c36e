"""The framework registry: every backend Parity runs, in one table (docs/design.md, "Adding a framework").

A backend is named by its id (`numpy`, `torch`, `tf`, `jax`); everything else that differs between frameworks
by name only (which module holds its adapter and probes, the pip extra that installs it, the import names a test
checks for, the Keras backend that peers it in `parity bench`, its idiomatic execution mode and padding sides, how
long its worker process usually takes) is
read from here. Adding a framework is one entry here, its packaging extra and its own backends/<id>_backend/.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Framework:
    name: str
    package: str  # backends.<package>: adapter.py, probes.py, bench.py, ...
    extra: str | None  # pip extra installing it (None: always installed)
    imports: tuple[str, ...]  # top-level modules it needs
    keras_backend: str | None  # KERAS_BACKEND of the Keras `fit` peer on this framework (parity bench)
    default_execution: str  # what `execution = "default"` runs: the loop a user of that framework writes
    native_pad: str  # the pad side of the framework's idiom (`sequence.pad = "native"`)
    native_truncate: str  # the truncation side of its idiom (`sequence.truncate = "native"`)
    start_seconds: float  # a worker's wall time on the default run (2 cores), mostly import: slowest starts first

    @property
    def adapter(self) -> str:
        return f"backends.{self.package}.adapter"

    @property
    def probes(self) -> str:
        return f"backends.{self.package}.probes"

    def install_hint(self) -> str:
        """The one-line hint printed when this framework is missing."""
        return f"pip install -c constraints.txt -e '.[{self.extra}]'"


REGISTRY: dict[str, Framework] = {
    f.name: f
    for f in (
        # the float64 oracle: numpy's "native" sides are the canonical post/post
        Framework("numpy", "numpy_backend", None, ("numpy",), None, "eager", "post", "post", 0.2),
        # pad_sequence pads at the end; a user truncates with seq[:max_len]
        Framework("torch", "torch_backend", "torch", ("torch",), "torch", "eager", "post", "post", 2.0),
        # keras.utils.pad_sequences(padding="pre", truncating="pre") defaults
        Framework("tf", "tf_backend", "tf", ("tensorflow", "keras"), "tensorflow", "eager", "pre", "pre", 3.7),
        # JAX's idiomatic loop is jax.jit (op-by-op JAX is a debugging mode); manual padding writes from position 0
        Framework("jax", "jax_backend", "jax", ("jax", "flax", "optax"), "jax", "compiled", "post", "post", 1.5),
    )
}
REFERENCE = "numpy"
FRAMEWORKS = tuple(name for name in REGISTRY if name != REFERENCE)
