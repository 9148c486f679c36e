"""The TF / Keras 3 throughput target (common.benchtarget, docs/design.md, "Performance methodology"), built on the
adapter, not beside it.

- modes: the adapter's `spec.execution` (backends.tf_backend.execution): eager, compiled, fused.
- step alone: the runner's single-step tf.function on the plan's first batch (x, y, w and masks already tensors on
  the device); fused has no single step apart from its loop body, so its step is the compiled one, and fused's
  loader overhead is what its program saves (or costs) against that many dispatched XLA steps.
- loaders (each batch placed on the device with `tf.identity` under `tf.device`): fast = the adapter's own
  pipeline; naive = `Dataset.from_generator` one row at a time (backends.tf_backend.data).
- end to end and equivalence: `adapter.run_epoch`, the training loop `parity run` uses (one host sync per epoch);
  the equivalence check is common.driver.train on a fresh exact-mode adapter with this execution mode; placed:
  the same loop over epoch 0's inputs held on the device (`epoch_inputs`: eager's tf.data batches, or the
  compiled / fused program's plan tensors; compiled's program assigns them to the variables its persistent tf.data
  pipeline reads, so that pipeline is timed in placed too, and its loader share is the host's plan and its copy to
  the device).
TF is timed on CPU unless TensorFlow itself sees a GPU (the tensorflow-cpu wheel never does).
"""

from __future__ import annotations

import os
import platform
from dataclasses import replace

import keras
import numpy as np
import tensorflow as tf

from backends.tf_backend.adapter import make_adapter
from backends.tf_backend.execution import MODES
from common.batching import BatchPlan
from common.driver import canonical_init, model_layers, train
from common.flops import PEAK_N, gemm_flops
from common.spec import Spec
from common.timing import fastest

LOADERS = ("fast", "naive")


def pin_threads(threads: int) -> None:
    """TF's intra-op and inter-op pools to `threads` (before TF's context starts; settings records them)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def peak_flops(device: str, dtype: str, n: int = PEAK_N) -> float:
    """FLOP/s of the fastest n×n `tf.linalg.matmul` on `device` in `dtype` (common.flops): the MFU denominator."""
    with tf.device(tf_device(device, "peak")):
        a, b = (tf.random.uniform((n, n), dtype=dtype) for _ in range(2))
        return gemm_flops(n) / fastest(lambda: tf.linalg.matmul(a, b), lambda c: c[0, 0].numpy())


def tf_device(device: str, mode: str) -> str:
    """The TF device string for the bench's `--device` (cpu | gpu | auto); a clear error when TF sees no GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu" or (device == "auto" and not gpus):
        return "/CPU:0"
    if not gpus:
        raise RuntimeError(
            f"tf mode '{mode}' cannot run on device '{device}': TensorFlow sees no GPU "
            f"(tensorflow-cpu build, or no CUDA device visible); use --device cpu or auto"
        )
    return "/GPU:0"


def settings(device: str, mode: str, dtype: str) -> dict:
    """Versions, device, thread pools and precision switches as TF reports them."""
    return {
        "backend": "tf",
        "mode": mode,
        "device": device,
        "dtype": dtype,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "gpus_visible_to_tf": len(tf.config.list_physical_devices("GPU")),
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "note": "0 = unset: TF sizes the pool itself (one thread per core); the bench pins both (pin_threads)",
        },
        "precision": {
            "tf32_execution": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
            "keras_floatx": keras.config.floatx(),
        },
        "xla": {
            "jit_compile": mode != "eager",
            "TF_XLA_FLAGS": os.environ.get("TF_XLA_FLAGS", ""),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        },
    }


class TFTarget:
    """common.benchtarget.BenchTarget for one execution mode on one device (see the module docstring)."""

    def __init__(self, spec: Spec, data, mode: str, device: str):
        if mode not in MODES:
            raise ValueError(f"tf has no execution mode '{mode}' (modes: {', '.join(MODES)})")
        self.mode, self.data = mode, data
        self.spec = replace(spec, mode="exact", execution=mode)
        self.device = tf_device(device, mode)
        self.plan = BatchPlan.from_spec(self.spec, data.train_x.shape[0], data.train_lengths)
        self._epoch = 0
        self.placed = None  # epoch 0's inputs on the device, for placed_epoch
        with tf.device(self.device):
            self.adapter = make_adapter(self.spec)
            self.adapter.prepare(
                self.spec, data, self.plan, model_layers(self.spec, data), canonical_init(self.spec, data)
            )
            self.pipeline, runner = self.adapter.pipeline, self.adapter.runner
            first = next(self.pipeline.epoch(0))
            self._batch = [tf.identity(t) for t in (first.x, first.y, first.weights)] + [
                tf.constant(m) for m in runner.masks(1, first.ids.shape[0])
            ]

    def _next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch - 1

    def settings(self) -> dict:
        device = "cpu" if "CPU" in self.device else self.adapter.device()
        return settings(device, self.mode, self.spec.dtype)

    def loader_epoch(self, loader: str):
        if loader not in LOADERS:
            raise ValueError(f"tf has no loader '{loader}' (loaders: {', '.join(LOADERS)})")
        epoch = self._next_epoch()
        batches = self.pipeline.dataset(epoch) if loader == "fast" else self.pipeline.naive(epoch)
        last = None
        with tf.device(self.device):
            for batch in batches:
                last = [tf.identity(batch[k]) for k in ("x", "y", "weights")]
        return last

    def step(self):
        with tf.device(self.device):
            return self.adapter.runner.step(*self._batch)

    def epoch(self, inputs=None):
        first = int(self.adapter.optimizer.optimizer.iterations.numpy()) + 1  # step() calls advance it too
        with tf.device(self.device):
            return self.adapter.run_epoch(self._next_epoch(), first, inputs).losses

    def placed_epoch(self):
        if self.placed is None:
            with tf.device(self.device):
                self.placed = list(self.adapter.epoch_inputs(0, 1))
        return self.epoch(self.placed)

    def sync(self, result) -> None:
        for value in tf.nest.flatten(result):
            if tf.is_tensor(value):
                value.numpy()  # blocks until the value exists on the host

    def equivalence_losses(self, epochs: int) -> list[float]:
        spec = replace(self.spec, train=replace(self.spec.train, epochs=epochs))
        with tf.device(self.device):
            body = train(make_adapter(spec), spec, self.data)
        return [s["loss"] for s in body["steps"]]


def make_target(spec: Spec, data, mode: str, device: str) -> TFTarget:
    return TFTarget(spec, data, mode, device)
