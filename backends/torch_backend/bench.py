"""The PyTorch throughput target (common.benchtarget): the adapter's execution modes, driven without the driver
(docs/design.md, "Performance methodology").

- MODES: the adapter's executions (execution.py); fused (a CUDA graph) raises in `make_target` off CUDA, and the
  bench notes the mode as unavailable. LOADERS: naive (TensorDataset per-row fetch + default collate, then
  `.to(device)`), fast (the adapter's own pipeline, data.py).
- step alone: one update on a fixed batch (the first of epoch 0, with the shared masks of step 1 in exact mode).
- end to end: `TorchAdapter.run_epoch`, the same training loop `parity run` drives (losses fetched once per epoch);
  placed: the same loop over epoch 0's batches held on the device (`epoch_inputs`), the loader left out.
- equivalence_losses: the driver (common.driver.train, hence run_epoch) on a fresh adapter in this mode, exact mode.
- sync: `torch.cuda.synchronize` on CUDA; on CPU `.item()` of a returned tensor (CPU ops run synchronously).
- threads: `pin_threads` (the bench's `--threads`) sets both pools; recorded (`torch.get_num_threads`,
  `get_num_interop_threads`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import replace
from typing import Any

import torch

from backends.torch_backend.adapter import TorchAdapter, resolve_device
from backends.torch_backend.data import make_per_row_loader
from backends.torch_backend.execution import EXECUTIONS
from backends.torch_backend.model import DTYPES
from common.batching import BatchPlan
from common.datasets import Dataset
from common.driver import canonical_init, model_layers, train
from common.flops import PEAK_N, gemm_flops
from common.idioms import on
from common.spec import Spec
from common.timing import fastest

MODES = EXECUTIONS
LOADERS = ("naive", "fast")


def pin_threads(threads: int) -> None:
    """torch's CPU pools, intra-op and inter-op, to `threads` (before any parallel work; device_settings records
    them)."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def peak_flops(device: str, dtype: str, n: int = PEAK_N) -> float:
    """FLOP/s of the fastest n×n `torch.matmul` on `device` in `dtype` (common.flops): the MFU denominator."""
    dev = resolve_device(device)
    a, b = (torch.rand(n, n, dtype=DTYPES[dtype], device=dev) for _ in range(2))
    return gemm_flops(n) / fastest(lambda: torch.matmul(a, b), lambda c: sync_device(dev, c[0, 0]))


def sync_device(dev: torch.device, result: Any) -> None:
    """Wait until `result` (a tensor, an EpochRun whose losses were already fetched, or None) is computed on `dev`."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif torch.is_tensor(result):
        result.item() if result.numel() == 1 else result.sum().item()


def device_settings(dev: torch.device) -> dict[str, Any]:
    """Device name, driver, threads and the float32 precision switches (TF32), for the record."""
    out: dict[str, Any] = {
        "device_type": dev.type,
        "threads": {
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "precision": {
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        },
        "cpu": platform.processor() or platform.machine(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver": _cuda_driver(),
        }
    return out


def _cuda_driver() -> str:
    try:
        import ctypes

        version = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
        return f"{version.value // 1000}.{version.value % 1000 // 10}"
    except OSError:
        return "unknown"


class TorchTarget:
    """One execution mode of the torch adapter, prepared once in exact or native mode as the spec says."""

    def __init__(self, spec: Spec, data: Dataset, mode: str, device: str):
        self.mode, self.data, self.device = mode, data, device
        self.spec = replace(spec, execution=mode)
        self.adapter = TorchAdapter(self.spec, device)  # raises for a mode this device cannot run
        self.dev = self.adapter.dev
        self.plan = plan = BatchPlan.from_spec(self.spec, data.train_x.shape[0], data.train_lengths)
        self.adapter.prepare(
            self.spec,
            data,
            plan,
            model_layers(self.spec, data),
            None if on(self.spec, "default_init") else canonical_init(self.spec, data),
        )
        first = next(self.adapter.pipeline.epoch(0))
        self.fixed = (first, self.adapter._masks(1, first))
        dtype = DTYPES[self.spec.dtype]
        self.naive = make_per_row_loader(
            torch.as_tensor(data.train_x, dtype=dtype), torch.as_tensor(data.train_y, dtype=torch.long), plan
        )
        self.epochs_run = self.loader_epochs = 0
        self.placed = None  # epoch 0's batches on the device, for placed_epoch

    def settings(self) -> dict[str, Any]:
        return {
            "backend": "torch",
            "mode": self.mode,
            "versions": self.adapter.versions(),
            "device": self.adapter.device(),
            "dtype": self.spec.dtype,
            **device_settings(self.dev),
        }

    def loader_epoch(self, loader: str) -> Any:
        if loader not in LOADERS:
            raise ValueError(f"torch has no loader '{loader}' (loaders: {', '.join(LOADERS)})")
        last = None
        if loader == "fast":
            for rows in self.adapter.pipeline.epoch(self.loader_epochs):
                last = rows.x
        else:
            self.naive.sampler.set_epoch(self.loader_epochs)
            for x, y in self.naive:
                last, _ = x.to(self.dev), y.to(self.dev)
        self.loader_epochs += 1
        return last

    def step(self) -> Any:
        return self.adapter._advance(*self.fixed)

    def epoch(self, inputs=None) -> Any:
        run = self.adapter.run_epoch(self.epochs_run, self.epochs_run * self.plan.steps_per_epoch + 1, inputs)
        self.epochs_run += 1
        return run

    def placed_epoch(self) -> Any:
        if self.placed is None:
            self.placed = list(self.adapter.epoch_inputs(0, 1))
        return self.epoch(self.placed)

    def sync(self, result: Any) -> None:
        sync_device(self.dev, result)

    def equivalence_losses(self, epochs: int) -> list[float]:
        spec = replace(self.spec, mode="exact", train=replace(self.spec.train, epochs=epochs))
        body = train(TorchAdapter(spec, self.device), spec, self.data)
        return [s["loss"] for s in body["steps"]]


def make_target(spec: Spec, data: Dataset, mode: str, device: str) -> TorchTarget:
    if mode not in MODES:
        raise ValueError(f"torch has no execution mode '{mode}' (modes: {', '.join(MODES)})")
    return TorchTarget(spec, data, mode, device)
