"""The JAX throughput target (common.benchtarget): the adapter's execution modes (docs/design.md, "Performance
methodology").

- MODES: execution.EXECUTIONS (eager op by op, compiled `jax.jit` per step, fused `lax.scan` over the epoch).
- LOADERS: data.LOADERS (naive per-row stacking, fast numpy indexing + `jax.device_put`, prefetched `jnp.take`).
- step alone: one update on the plan's first batch of epoch 0, already on the device (with its shared masks in
  exact mode); fused: the scanned program over that one batch (on-device gather included).
- end to end and equivalence_losses: the adapter's `run_epoch` (the latter through common.driver.train on a fresh
  exact-mode adapter in this mode), each epoch's stacked ids and weights made and put on the device while the
  epoch before runs (prefetched); placed: the same loop over epoch 0's inputs held on the device (`epoch_inputs`:
  the epoch's stacks, one per batch shape, gathered from the split on the device inside the step or the scan).
- device: "cpu" | "gpu" | "auto", made JAX's default device (`jax.config.update("jax_default_device", …)`); "gpu"
  without one raises. sync: `jax.block_until_ready`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from backends.jax_backend import data as pipeline
from backends.jax_backend.adapter import make_adapter
from backends.jax_backend.execution import EXECUTIONS
from common.batching import BatchPlan
from common.datasets import Dataset
from common.driver import canonical_init, model_layers, train
from common.flops import PEAK_N, gemm_flops
from common.idioms import on
from common.spec import Spec
from common.timing import fastest

MODES = EXECUTIONS
LOADERS = tuple(pipeline.LOADERS)


def gpus() -> list:
    """JAX's GPU devices, [] when it has no GPU backend (jax.devices("gpu") raises RuntimeError then)."""
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


def resolve_device(device: str, mode: str = "any mode"):
    """The jax.Device for "cpu", "gpu" or "auto" (a GPU when there is one); "gpu" without one is an error."""
    if device not in ("cpu", "gpu", "auto"):
        raise ValueError(f"jax: unknown device '{device}' (cpu, gpu or auto)")
    found = [] if device == "cpu" else gpus()
    if device == "gpu" and not found:
        raise RuntimeError(
            f"jax {mode} mode: device 'gpu' requested but JAX sees no GPU "
            f"(backend {jax.default_backend()}; install jax[cuda12] or unset JAX_PLATFORMS)"
        )
    return found[0] if found else jax.devices("cpu")[0]


def pin_threads(threads: int) -> None:
    """XLA:CPU's Eigen pool to `threads`, through XLA_FLAGS (`intra_op_parallelism_threads`, single-threaded Eigen
    at 1): JAX reads them when it starts its backend, at the first device use, so this must come before any (the
    bench worker calls it first); settings records the flags."""
    flags = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def peak_flops(device: str, dtype: str, n: int = PEAK_N) -> float:
    """FLOP/s of the fastest n×n jitted `jnp.matmul` on `device` in `dtype` (common.flops): the MFU denominator."""
    jax.config.update("jax_enable_x64", True)  # as make_adapter does for every spec: float64 stays float64
    dev = use_device(device)
    a, b = (jax.device_put(np.ones((n, n), dtype), dev) for _ in range(2))
    return gemm_flops(n) / fastest(functools.partial(_matmul, a, b), jax.block_until_ready)


@jax.jit
def _matmul(a, b):
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def use_device(device: str, mode: str = "any mode"):
    """Resolve `device` and make it JAX's default device (process-global, like every JAX config)."""
    dev = resolve_device(device, mode)
    jax.config.update("jax_default_device", dev)
    return dev


class JaxTarget:
    """One execution mode of the JAX adapter, prepared once in exact or native mode as the spec says."""

    def __init__(self, spec: Spec, data: Dataset, mode: str, device: str):
        if mode not in MODES:
            raise ValueError(f"jax has no execution mode '{mode}' (modes: {', '.join(MODES)})")
        self.mode, self.data = mode, data
        self.dev = use_device(device, mode)
        self.spec = replace(spec, execution=mode)
        self.adapter = make_adapter(self.spec)
        self.adapter.prepare(
            self.spec,
            data,
            BatchPlan.from_spec(self.spec, data.train_x.shape[0], data.train_lengths),
            model_layers(self.spec, data),
            None if on(self.spec, "default_init") else canonical_init(self.spec, data),
        )
        plan = self.adapter.plan
        self.loaders = {name: cls(data, plan, self.spec) for name, cls in pipeline.LOADERS.items()}
        first = plan.batches(0)[0]
        if mode == "fused":
            self.fixed = self.adapter._stacked(first.ids[None], first.weights[None], [1])
        else:
            rows = self.adapter.pipeline.rows(first)
            self.fixed = (rows.x, rows.y, rows.weights, self.adapter._masks(1, first.rows), 1)
        self.epochs_run = 0
        self.loader_epochs = 0
        self.placed = None  # epoch 0's inputs on the device, for placed_epoch

    def settings(self) -> dict[str, Any]:
        d = self.dev
        try:
            platform_version = d.client.platform_version  # on GPU the CUDA driver/runtime versions
        except Exception:  # a private attribute; the record just says unknown
            platform_version = "unknown"
        precision = jax.config.jax_default_matmul_precision
        return {
            "backend": "jax",
            "mode": self.mode,
            "versions": self.adapter.versions(),
            "device": self.adapter.device(),
            "device_kind": d.device_kind,
            "platform": jax.default_backend(),
            "platform_version": platform_version,
            "dtype": str(self.adapter.dtype),
            "x64": bool(jax.config.jax_enable_x64),
            "precision": {
                "jax_default_matmul_precision": precision or "DEFAULT (unset)",
                "model_dense_precision": "HIGHEST (model.py: no TF32/bf16 passes for float32)",
            },
            "threads": {
                "cpu_count": os.cpu_count(),
                "affinity": len(os.sched_getaffinity(0)),
                "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
                "note": "JAX has no thread-count API: XLA_FLAGS carries the bench's pin (pin_threads)",
            },
        }

    def loader_epoch(self, loader: str) -> Any:
        if loader not in self.loaders:
            raise ValueError(f"jax has no loader '{loader}' (loaders: {', '.join(LOADERS)})")
        last = None
        for batch in self.loaders[loader].epoch(self.loader_epochs):
            last = batch
        self.loader_epochs += 1
        return (last.x, last.y, last.weights)

    def step(self) -> Any:
        return (self.adapter._scan if self.mode == "fused" else self.adapter._advance)(*self.fixed)

    def epoch(self) -> Any:
        steps = self.adapter.plan.steps_per_epoch
        run = self.adapter.run_epoch(self.epochs_run, self.epochs_run * steps + 1)
        self.epochs_run += 1
        return run.losses

    def placed_epoch(self) -> Any:
        """Epoch 0's inputs again, held on the device. It leaves the epoch count alone: `epoch()` after it is still
        the one its predecessor prefetched, as in `parity run`, where epochs follow each other (counting this one
        made every end-to-end epoch of the paired rounds, which alternate the two, miss its prefetch: 29 % of the
        epoch at B = 1024, against 2 % back to back)."""
        if self.placed is None:
            self.placed = list(self.adapter.epoch_inputs(0, 1))
        return self.adapter.run_epoch(0, 1, self.placed).losses

    def sync(self, result: Any) -> None:
        jax.block_until_ready(result)

    def equivalence_losses(self, epochs: int) -> list[float]:
        spec = replace(self.spec, mode="exact", train=replace(self.spec.train, epochs=epochs))
        body = train(make_adapter(spec), spec, self.data)
        return [s["loss"] for s in body["steps"]]


def make_target(spec: Spec, data: Dataset, mode: str, device: str) -> JaxTarget:
    return JaxTarget(spec, data, mode, device)
