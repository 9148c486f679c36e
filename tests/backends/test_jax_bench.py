"""JAX throughput target (backends/jax_backend/bench.py) and hand-fused reference: smoke tests only, no timing
thresholds. Every mode and loader runs and gives positive timings, settings() has the record's keys, and each
mode's equivalence_losses(1) equals the eager adapter's per-step losses (common.driver) in float64."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from backends.jax_backend import bench, reference_loop  # noqa: E402
from backends.worker import load_adapter  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import train  # noqa: E402
from common.timing import time_calls  # noqa: E402
from common.tolerance import FLOAT64_EXACT  # noqa: E402
from tests.support import make_spec  # noqa: E402

# iris: 120 training rows; batch 32 under keep gives 3 full batches and a ragged one of 24 (fused: two scans)
SPEC = make_spec(
    dtype="float64",
    batching={"batch_size": 32},
    train={"epochs": 1},
    optimizer={"lr": 0.05, "momentum": 0.9},
    regularization={"dropout": 0.3, "weight_decay": 1e-3},
)
SETTINGS_KEYS = {
    "backend",
    "mode",
    "versions",
    "device",
    "device_kind",
    "platform",
    "platform_version",
    "dtype",
    "x64",
    "precision",
    "threads",
}


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC)


@pytest.fixture(scope="module")
def eager_losses(data):
    body = train(load_adapter("jax").make_adapter(SPEC), SPEC, data)
    return np.array([s["loss"] for s in body["steps"]])


def check(timing, items: int) -> None:
    assert timing.windows == 2 and timing.calls_per_window == 1 and timing.items_per_call == items
    assert timing.first_call_s > 0 and timing.median_s > 0 and timing.items_per_s > 0
    assert timing.iqr_s >= 0 and timing.q75_s >= timing.q25_s > 0


def test_module_contract():
    assert bench.MODES == ("eager", "compiled", "fused")
    assert bench.LOADERS == ("naive", "fast", "prefetched")


@pytest.mark.parametrize("mode", bench.MODES)
def test_mode_smoke(mode, data, eager_losses):
    target = bench.make_target(SPEC, data, mode, "cpu")
    assert target.mode == mode
    check(time_calls(target.step, target.sync, 32, windows=2, calls_per_window=1), 32)
    check(time_calls(target.epoch, target.sync, 120, windows=2, calls_per_window=1), 120)
    settings = target.settings()
    assert set(settings) >= SETTINGS_KEYS and settings["mode"] == mode
    assert settings["x64"] is True and settings["platform"] == jax.default_backend()
    assert settings["precision"]["jax_default_matmul_precision"]
    losses = np.asarray(target.equivalence_losses(1))
    assert losses.shape == eager_losses.shape == (4,)
    np.testing.assert_allclose(losses, eager_losses, rtol=FLOAT64_EXACT.rtol, atol=FLOAT64_EXACT.atol)


@pytest.mark.parametrize("mode", bench.MODES)
def test_placed_epoch_is_the_epoch_without_its_loader(mode, data, eager_losses):
    """The loop timed without its loader (`placed_epoch`: epoch 0's inputs made once and held on the device) trains
    as the driver does: a fresh target's first placed epoch gives the driver's per-step losses."""
    target = bench.make_target(SPEC, data, mode, "cpu")
    losses = np.asarray(target.placed_epoch())
    assert len(target.placed) == (2 if mode == "fused" else 4)  # fused: a scan of 3 batches, then the ragged one
    np.testing.assert_allclose(losses, eager_losses, rtol=FLOAT64_EXACT.rtol, atol=FLOAT64_EXACT.atol)


@pytest.mark.parametrize("loader", bench.LOADERS)
def test_loader_smoke(loader, data):
    target = bench.make_target(SPEC, data, "compiled", "cpu")
    check(time_calls(lambda: target.loader_epoch(loader), target.sync, 120, windows=2, calls_per_window=1), 120)
    x, y, w = target.loader_epoch(loader)  # the last (ragged) batch of the next epoch, on the device
    assert x.shape == (24, 4) and y.shape == w.shape == (24,)
    assert str(x.dtype) == "float64" and str(y.dtype) == "int32"


def test_loaders_deliver_the_same_batches(data):
    target = bench.make_target(SPEC, data, "compiled", "cpu")
    epochs = {name: list(loader.epoch(1)) for name, loader in target.loaders.items()}
    for batches in epochs.values():
        assert len(batches) == 4
        for got, want in zip(batches, epochs["fast"], strict=True):
            np.testing.assert_array_equal(got.ids, want.ids)
            for field in ("x", "y", "weights"):
                np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)))


def test_reference_smoke(data):
    runner = reference_loop.make_reference(SPEC, data, "cpu")
    check(time_calls(runner.epoch, runner.sync, 120, windows=2, calls_per_window=1), 120)
    losses = np.asarray(runner.epoch())
    assert losses.shape == (4,) and np.all(np.isfinite(losses)) and losses.dtype == np.float64


def test_reference_refuses_kinds_it_does_not_hand_write(data):
    spec = make_spec(
        dtype="float64", model={"layers": [{"kind": "dense", "units": 8}, {"kind": "layer_norm"}, {"kind": "dense"}]}
    )
    with pytest.raises(ValueError, match="layer kinds layer_norm are not in its hand-fused forward"):
        reference_loop.make_reference(spec, data, "cpu")


def test_unknown_mode_and_missing_gpu_are_clear(data):
    with pytest.raises(ValueError, match="no execution mode 'graph'"):
        bench.make_target(SPEC, data, "graph", "cpu")
    if bench.gpus():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="fused mode: device 'gpu' requested but JAX sees no GPU"):
        bench.make_target(SPEC, data, "fused", "gpu")


def test_the_peak_probe_measures_a_gemm_in_each_dtype():
    """The MFU denominator (common.flops): the fastest 64² GEMM here, in both dtypes, a positive finite FLOP/s."""
    for dtype in ("float32", "float64"):
        peak = bench.peak_flops("cpu", dtype, n=64)
        assert 0 < peak < float("inf"), (dtype, peak)
