"""JAX throughput target (backends/jax_backend/bench.py) and references (reference_loop.py): no timing thresholds.
Every mode and loader runs and gives positive timings, settings() has the record's keys, and each mode's
equivalence_losses(1) equals the eager adapter's per-step losses (common.driver) in float64. On the bench's own
spec (doughnuts MLP, float32) at a small size with a ragged last batch (keep, pad, drop): every reference variant
and the compiled and fused epochs give the eager mode's exact-mode per-step losses (common.tolerance, float32 exact),
the epochs record the plan's batches, fused runs one program per epoch, and no dropout means no mask draws."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from backends.jax_backend import adapter as jax_adapter  # noqa: E402
from backends.jax_backend import bench, reference_loop  # noqa: E402
from backends.worker import load_adapter  # noqa: E402
from benchmarks.bench import bench_spec  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import _plans, train  # noqa: E402
from common.timing import time_calls  # noqa: E402
from common.tolerance import FLOAT32_EXACT, FLOAT64_EXACT  # noqa: E402
from tests.support import make_spec, seq_spec  # noqa: E402

# iris: 120 training rows; batch 32 under keep gives 3 full batches and a ragged one of 24 (fused: padded in its scan)
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
    # one transfer per stack: fused pads the ragged tail into its one scan; eager / compiled stack it apart
    assert len(target.placed) == (1 if mode == "fused" else 2)
    np.testing.assert_allclose(losses, eager_losses, rtol=FLOAT64_EXACT.rtol, atol=FLOAT64_EXACT.atol)


def test_placed_epochs_leave_the_next_epochs_prefetch_in_place(data):
    """The paired rounds alternate end-to-end and placed epochs: an end-to-end epoch after a placed one is still
    the one its predecessor prefetched (its inputs made once, during epoch 0), as when epochs follow each other."""
    target = bench.make_target(SPEC, data, "fused", "cpu")
    made, epoch_inputs = [], target.adapter.epoch_inputs

    def counted(epoch, first_step):
        made.append((epoch, first_step))
        return epoch_inputs(epoch, first_step)

    target.adapter.epoch_inputs = counted
    target.epoch(), target.placed_epoch(), target.epoch()
    # epoch 0 made and epoch 1 prefetched, the placed epoch 0, epoch 2 prefetched while epoch 1 runs (4 steps each)
    assert made == [(0, 1), (1, 5), (0, 1), (2, 9)]


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
    assert reference_loop.REFERENCES == ("scan",)
    runner = reference_loop.make_reference(SPEC, data, "cpu", "scan")
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


def small_bench_spec(last_batch: str, epochs: int = 2):
    """The bench's MLP spec (benchmarks.bench.BENCH_SPEC: float32, SGD lr 0.05, momentum 0.9) on 600 doughnuts:
    480 training rows, batch 64, so the last batch has 32 rows (7 full batches and a ragged one)."""
    return bench_spec(
        None,
        ["data.params.n=600", "batching.batch_size=64", f"batching.last_batch={last_batch}", f"train.epochs={epochs}"],
    )


@pytest.fixture(scope="module")
def bench_runs():
    """{last_batch: (spec, data, the driver's eager exact-mode steps over 2 epochs)}."""
    out = {}
    for last_batch in ("keep", "pad", "drop"):
        spec = small_bench_spec(last_batch)
        data = load_dataset(spec)
        assert data.train_x.shape[0] == 480 and spec.dtype == "float32" and spec.mode == "exact"
        out[last_batch] = (spec, data, train(jax_adapter.make_adapter(spec), spec, data)["steps"])
    return out


def assert_float32_exact(got, want):
    np.testing.assert_allclose(got, want, rtol=FLOAT32_EXACT.rtol, atol=FLOAT32_EXACT.atol)


@pytest.mark.parametrize("last_batch", ["keep", "pad", "drop"])
@pytest.mark.parametrize("variant", reference_loop.REFERENCES)
def test_reference_trains_as_eager_exact_mode(variant, last_batch, bench_runs):
    """Each reference variant trains on the plan's rows (slots of epochs 0 and 1, keep's tail padded with weight
    0): its per-step losses are the eager mode's exact-mode losses, the ragged step included."""
    spec, data, steps = bench_runs[last_batch]
    losses = np.asarray(reference_loop.make_reference(spec, data, "cpu", variant).equivalence_losses(2))
    assert losses.shape == (16 if last_batch != "drop" else 14,)
    assert_float32_exact(losses, [s["loss"] for s in steps])


def test_reference_epoch_returns_device_losses_and_refuses_unknown_variants(bench_runs):
    spec, data, steps = bench_runs["keep"]
    runner = reference_loop.make_reference(spec, data, "cpu", "scan")
    first, second = runner.epoch(), runner.epoch()  # epochs 0 and 1 of the plan, in order
    assert isinstance(first, jax.Array) and first.shape == (8,) and str(first.dtype) == "float32"
    assert_float32_exact(np.concatenate([first, second]), [s["loss"] for s in steps])
    with pytest.raises(ValueError, match="no reference 'graph'"):
        reference_loop.make_reference(spec, data, "cpu", "graph")


@pytest.mark.parametrize("last_batch", ["keep", "pad", "drop"])
@pytest.mark.parametrize("mode", ["compiled", "fused"])
def test_epochs_equal_eager_and_record_the_plan(mode, last_batch, bench_runs):
    """The adapter's run_epoch in compiled (epoch ids on the device, the gather in the step) and fused (one scan per
    epoch, keep's ragged tail padded inside it) mode: the eager mode's per-step losses, and the ids of
    plan.batches(e) (pad's filler listed, keep's tail only its 32 real rows)."""
    spec, data, steps = bench_runs[last_batch]
    target = bench.make_target(spec, data, mode, "cpu")
    runs = [target.adapter.run_epoch(e, 1 + e * target.adapter.plan.steps_per_epoch) for e in (0, 1)]
    assert_float32_exact(np.concatenate([r.losses for r in runs]), [s["loss"] for s in steps])
    for e, run in enumerate(runs):
        want = target.adapter.plan.batches(e)
        assert len(run.ids) == len(want) and all(
            np.array_equal(got, batch.ids) for got, batch in zip(run.ids, want, strict=True)
        )
    if last_batch != "drop":
        assert runs[0].ids[-1].shape == (64 if last_batch == "pad" else 32,)
    if mode == "fused":
        assert target.adapter.compile_count == 1  # the whole epoch, ragged tail included, is one program


@pytest.mark.parametrize("mode", bench.MODES)
def test_no_dropout_draws_no_masks(mode, bench_runs, monkeypatch):
    """Without dropout no step asks common.dropout for masks (they are None): the epoch's inputs carry none."""

    def refuse(*args):
        raise AssertionError("shared_masks called for a spec without dropout")

    spec, data, steps = bench_runs["keep"]
    monkeypatch.setattr(jax_adapter, "shared_masks", refuse)
    target = bench.make_target(spec, data, mode, "cpu")
    assert all(stacked[2] is None for stacked, _ in target.adapter.epoch_inputs(0, 1))
    assert_float32_exact(np.asarray(target.epoch()), [s["loss"] for s in steps[:8]])


@pytest.mark.parametrize("mode", ["compiled", "fused"])
def test_epoch_prefetches_the_next_and_donates_the_state(mode, bench_runs):
    """run_epoch dispatches its steps, then makes the next epoch's inputs (taken by the next call, which trains as
    the driver does) and donates the variables' buffers to the jitted program."""
    spec, data, steps = bench_runs["pad"]
    adapter = bench.make_target(spec, data, mode, "cpu").adapter
    before = jax.tree.leaves(adapter.params)
    adapter.run_epoch(0, 1)
    assert all(leaf.is_deleted() for leaf in before)
    (after, prefetched) = adapter.ahead
    assert after == (1, 9) and len(prefetched) == 1
    np.testing.assert_array_equal(prefetched[0][1][0].reshape(-1), adapter.plan.slots(1)[0])
    assert_float32_exact(adapter.run_epoch(1, 9).losses, [s["loss"] for s in steps[8:]])
    assert adapter.ahead[0] == (2, 17)


def test_sequence_target_trains_the_driver_plan():
    """The target's adapter walks the plan the driver builds for sequence data (common.driver._plans): the same
    batches and padded lengths, buckets included, and its epoch records them."""
    spec = seq_spec(sequence={"buckets": [4, 10]}, train={"epochs": 1})
    data = load_dataset(spec)
    driver_plan, _ = _plans(spec, data)
    target = bench.make_target(spec, data, "compiled", "cpu")
    for got, want in zip(target.adapter.plan.batches(0), driver_plan.batches(0), strict=True):
        assert np.array_equal(got.ids, want.ids) and got.length == want.length
    run = target.adapter.run_epoch(0, 1)
    assert run.lengths == [b.length for b in driver_plan.batches(0)]
    assert set(run.lengths) <= {4, 10}
