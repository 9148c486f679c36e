"""The PyTorch throughput target (backends/torch_backend/bench.py) and hand-fused reference: smoke tests of every
mode and loader through common.timing (no timing thresholds), the settings record, the loaders' batches, and each
mode's equivalence losses against the eager adapter run by the driver."""

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.torch_backend import bench, reference_loop  # noqa: E402
from common.batching import BatchPlan  # noqa: E402
from common.compare import compare_values  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import EpochRun  # noqa: E402
from common.timing import time_calls  # noqa: E402
from common.tolerance import tolerance_for  # noqa: E402
from tests.support import make_spec, run_in_process  # noqa: E402

# iris, 120 training rows at B = 32: three full batches and a ragged 24 (a second shape for compile / capture)
SPEC = make_spec(
    dtype="float64",
    batching={"batch_size": 32, "last_batch": "keep"},
    train={"epochs": 1},
    optimizer={"lr": 0.05, "momentum": 0.9},
    regularization={"dropout": 0.3, "weight_decay": 1e-3},
)
DEVICE = "auto"
ON_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC)


@pytest.fixture(scope="module")
def eager_losses():
    rec, _ = run_in_process("torch", SPEC)
    return np.array([s["loss"] for s in rec["steps"]])


def _positive(timing, items):
    assert timing.windows == 2 and timing.calls_per_window == 1 and timing.items_per_call == items
    assert timing.first_call_s > 0 and timing.median_s > 0 and timing.items_per_s > 0
    assert timing.q25_s > 0 and timing.q75_s >= timing.q25_s and timing.iqr_s >= 0


def _smoke(call, sync, items):
    _positive(time_calls(call, sync, items, windows=2, calls_per_window=1, warmup=1), items)


def test_modes_and_loaders_are_declared():
    assert bench.MODES == ("eager", "compiled", "fused") and bench.LOADERS == ("naive", "fast")
    with pytest.raises(ValueError, match="no execution mode 'jit'"):
        bench.make_target(SPEC, None, "jit", DEVICE)


@pytest.mark.parametrize("mode", bench.MODES)
def test_mode_smoke_and_equivalence(mode, data, eager_losses):
    if mode == "fused" and not ON_CUDA:
        with pytest.raises(RuntimeError, match=r"fused mode .*needs a CUDA device; this run is on cpu"):
            bench.make_target(SPEC, data, mode, DEVICE)
        pytest.skip("fused = CUDA graph: no CUDA device here (the bench notes it as unavailable)")
    target = bench.make_target(SPEC, data, mode, DEVICE)
    assert target.mode == mode
    _smoke(target.step, target.sync, 32)
    _smoke(target.epoch, target.sync, 120)
    losses = np.asarray(target.equivalence_losses(1))
    assert losses.shape == (4,)
    check = compare_values(losses, eager_losses, [1, 2, 3, 4], tolerance_for("float64", "exact"))
    assert check["first_divergent_step"] is None, check


@pytest.mark.parametrize("timed", ["epoch", "placed_epoch"])
@pytest.mark.parametrize("mode", bench.MODES)
def test_end_to_end_epoch_is_the_adapters_run_epoch(mode, timed, data, eager_losses):
    """The timed epoch is the training loop `parity run` drives, with its loader or over the same batches already on
    the device: a fresh target's first epoch gives the plan's rows and the driver's per-step losses, fetched once at
    its end."""
    if mode == "fused" and not ON_CUDA:
        pytest.skip("fused = CUDA graph: no CUDA device here")
    target = bench.make_target(SPEC, data, mode, DEVICE)
    run = getattr(target, timed)()
    if timed == "placed_epoch":
        assert len(target.placed) == 4 and all(rows.x.device == target.dev for rows in target.placed)
    assert isinstance(run, EpochRun) and isinstance(run.losses, np.ndarray)
    assert [ids.tolist() for ids in run.ids] == [b.ids.tolist() for b in BatchPlan.from_spec(SPEC, 120).batches(0)]
    check = compare_values(
        np.asarray(run.losses, dtype=np.float64), eager_losses, [1, 2, 3, 4], tolerance_for("float64", "exact")
    )
    assert check["first_divergent_step"] is None, check


@pytest.mark.parametrize("loader", bench.LOADERS)
def test_loader_smoke_and_batches(loader, data):
    target = bench.make_target(SPEC, data, "eager", DEVICE)
    _smoke(lambda: target.loader_epoch(loader), target.sync, 120)
    # both pipelines walk the plan's rows (the naive one, per row through the default collate)
    plan = BatchPlan.from_spec(SPEC, 120)
    target.naive.sampler.set_epoch(1)
    naive = list(target.naive)
    assert [x.shape[0] for x, _ in naive] == [32, 32, 32, 24]
    for (x, y), planned in zip(naive, plan.batches(1), strict=True):
        np.testing.assert_array_equal(x.numpy(), data.train_x[planned.ids])
        np.testing.assert_array_equal(y.numpy(), data.train_y[planned.ids])
    with pytest.raises(ValueError, match="no loader 'tfdata'"):
        target.loader_epoch("tfdata")


def test_settings_record_versions_device_threads_precision(data):
    settings = bench.make_target(SPEC, data, "eager", DEVICE).settings()
    assert {"backend", "mode", "versions", "device", "device_type", "dtype", "threads", "precision"} <= set(settings)
    assert settings["versions"]["torch"] == torch.__version__
    assert settings["threads"]["torch_num_threads"] == torch.get_num_threads()
    assert {"cuda_matmul_allow_tf32", "cudnn_allow_tf32", "float32_matmul_precision"} <= set(settings["precision"])
    if ON_CUDA:
        assert settings["precision"]["cuda_matmul_allow_tf32"] is False and "driver" in settings["gpu"]


@pytest.mark.parametrize("last_batch, optimizer", [("keep", "sgd"), ("drop", "adam"), ("pad", "adamw")])
def test_reference_loop_smoke(last_batch, optimizer, data):
    spec = replace(
        SPEC, batching=replace(SPEC.batching, last_batch=last_batch), optimizer=replace(SPEC.optimizer, name=optimizer)
    )
    ref = reference_loop.make_reference(spec, data, DEVICE)
    assert ref.steps == (3 if last_batch == "drop" else 4)
    before = {k: v.detach().clone() for k, v in ref.model.named_parameters()}
    _smoke(ref.epoch, ref.sync, 120)
    assert all(not torch.equal(before[k], v) for k, v in ref.model.named_parameters())  # it trains
    assert torch.isfinite(ref.epoch()).item()


def test_the_peak_probe_measures_a_gemm_in_each_dtype():
    """The MFU denominator (common.flops): the fastest 64² GEMM here, in both dtypes, a positive finite FLOP/s."""
    for dtype in ("float32", "float64"):
        peak = bench.peak_flops("cpu", dtype, n=64)
        assert 0 < peak < float("inf"), (dtype, peak)
