"""The TF / Keras 3 throughput target (common.benchtarget, DESIGN §7), built on the adapter, not beside it.

- modes: the adapter's `spec["execution"]` (backends.tf_backend.execution): eager = `tf.function` graph without
  XLA, compiled = `tf.function(jit_compile=True)` step, fused = one XLA program per epoch (`tf.while_loop`).
- step alone: the adapter's step function on one fixed plan batch (x, y, w and dropout masks already tensors on the
  device). In fused mode there is no single-step program to time apart from the loop body, so the step is the
  same XLA-compiled step as "compiled": fused's loader overhead is then what the fused epoch saves (or costs)
  against that many separately dispatched XLA steps. ε̂ (Keras Adam) keeps its last value here; the epoch assigns it.
- loaders (each placed on the device with `tf.identity` under `tf.device`):
    fast  = the adapter's own pipeline: `from_tensor_slices` of the plan's rows + `.batch(B)` + `.prefetch`;
    naive = `Dataset.from_generator` yielding one row at a time, then `.batch(B)` (backends.tf_backend.data).
- end to end: `adapter.run_epoch`: the fast pipeline and one step per batch (eager, compiled), or the plan placed
  on the device and the fused program (fused); no host sync inside the epoch.
- equivalence: common.driver.train on a fresh adapter in exact mode with this execution mode.
TF is timed on CPU unless TensorFlow itself sees a GPU (the tensorflow-cpu wheel never does).
"""

from __future__ import annotations

import os
import platform

import keras
import numpy as np
import tensorflow as tf

from backends.tf_backend import data as pipeline
from backends.tf_backend.adapter import make_adapter
from backends.tf_backend.execution import MODES
from common.batching import BatchPlan
from common.dropout import shared_masks
from common.driver import canonical_init, train
from common.spec import validate

LOADERS = ("fast", "naive")
_PIPELINES = {"fast": pipeline.epoch_dataset, "naive": pipeline.naive_epoch_dataset}


def tf_device(device: str, mode: str) -> str:
    """The TF device string for the bench's `--device` (cpu | gpu | auto); a clear error when TF sees no GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu" or (device == "auto" and not gpus):
        return "/CPU:0"
    if not gpus:
        raise RuntimeError(f"tf mode '{mode}' cannot run on device '{device}': TensorFlow sees no GPU "
                           f"(tensorflow-cpu build, or no CUDA device visible); use --device cpu or auto")
    return "/GPU:0"


def settings(device: str, mode: str, dtype: str) -> dict:
    """Versions, device, thread pools and precision switches as TF reports them."""
    return {
        "backend": "tf", "mode": mode, "device": device, "dtype": dtype,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__},
        "gpus_visible_to_tf": len(tf.config.list_physical_devices("GPU")),
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "note": "0 = unset: TF sizes the pool itself (one thread per core)"},
        "precision": {"tf32_execution": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
                      "keras_floatx": keras.config.floatx()},
        "xla": {"jit_compile": mode != "eager", "TF_XLA_FLAGS": os.environ.get("TF_XLA_FLAGS", ""),
                "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")},
    }


class TFTarget:
    """common.benchtarget.BenchTarget for one execution mode on one device (see the module docstring)."""

    def __init__(self, spec: dict, data, mode: str, device: str):
        if mode not in MODES:
            raise ValueError(f"tf has no execution mode '{mode}' (modes: {', '.join(MODES)})")
        self.mode, self.data = mode, data
        self.spec = validate({**spec, "mode": "exact", "execution": mode})
        self.device = tf_device(device, mode)
        self.plan = BatchPlan.from_spec(self.spec, data.train_x.shape[0])
        dtype = self.spec["dtype"]
        self.x, self.y = data.train_x.astype(dtype), data.train_y.astype(np.int64)
        self._epoch = 0
        with tf.device(self.device):
            self.adapter = make_adapter(self.spec)
            self.adapter.prepare(self.spec, data, self.plan, canonical_init(self.spec, data))
            first = self.plan.batches(0)[0]
            masks = shared_masks(self.spec["seed"], 1, self.spec["regularization"]["dropout"], first.rows,
                                 self.adapter.mask_widths, dtype) or []
            self._batch = [tf.constant(self.x[first.ids]), tf.constant(self.y[first.ids]),
                           tf.constant(first.weights.astype(dtype))] + [tf.constant(m) for m in masks]

    def _next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch - 1

    def settings(self) -> dict:
        device = "cpu" if "CPU" in self.device else self.adapter.device()
        return settings(device, self.mode, self.spec["dtype"])

    def loader_epoch(self, loader: str):
        if loader not in _PIPELINES:
            raise ValueError(f"tf has no loader '{loader}' (loaders: {', '.join(LOADERS)})")
        last = None
        with tf.device(self.device):
            for batch in _PIPELINES[loader](self.x, self.y, self.plan, self._next_epoch()):
                last = [tf.identity(t) for t in batch[:3]]
        return last

    def step(self):
        with tf.device(self.device):
            return self.adapter._step(*self._batch)

    def epoch(self):
        with tf.device(self.device):
            return self.adapter.run_epoch(self._next_epoch())

    def sync(self, result) -> None:
        for tensor in tf.nest.flatten(result):
            if tensor is not None:
                tensor.numpy()  # blocks until the value exists on the host

    def equivalence_losses(self, epochs: int) -> list[float]:
        spec = validate({**self.spec, "train": {**self.spec["train"], "epochs": epochs}})
        with tf.device(self.device):
            body = train(make_adapter(spec), spec, self.data)
        return [s["loss"] for s in body["steps"]]


def make_target(spec: dict, data, mode: str, device: str) -> TFTarget:
    return TFTarget(spec, data, mode, device)
