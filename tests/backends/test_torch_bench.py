"""The PyTorch throughput target (backends/torch_backend/bench.py) and references (reference_loop.py): smoke tests of
every mode and loader through common.timing (no timing thresholds), the settings record, the loaders' batches (the
exact-mode loader's placed epoch against the plan), the lean optimizer, and each mode's and each reference
variant's per-step losses against the eager adapter run by the driver."""

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.torch_backend import bench, reference_loop  # noqa: E402
from backends.torch_backend.adapter import TorchAdapter  # noqa: E402
from backends.torch_backend.data import step_reals  # noqa: E402
from benchmarks.bench import bench_spec  # noqa: E402
from common.batching import BatchPlan  # noqa: E402
from common.compare import compare_values  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import EpochRun, model_layers  # noqa: E402
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
    losses = ref.epoch()
    assert losses.shape == (ref.steps,) and torch.isfinite(losses).all().item()


def test_references_are_declared_and_graph_needs_cuda(data):
    assert reference_loop.REFERENCES == ("eager", "compiled", "graph")
    with pytest.raises(ValueError, match="no reference 'jit'"):
        reference_loop.make_reference(SPEC, data, DEVICE, "jit")
    if not ON_CUDA:
        with pytest.raises(RuntimeError, match=r"'graph' \(CUDA graphs\) needs a CUDA device"):
            reference_loop.make_reference(SPEC, data, "cpu", "graph")


# the bench's MLP (doughnuts 2-32-2, float32, SGD momentum) at 400 training rows: B = 32 leaves a ragged 16-row
# last batch (keep) or 16 filler rows (pad); B = 16 divides the rows (every batch real)
SMALL = ["data.params.n=500", "train.epochs=2"]


@pytest.mark.parametrize("variant", reference_loop.REFERENCES)
@pytest.mark.parametrize("batching", [(32, "keep"), (32, "pad"), (16, "keep")])
def test_each_reference_trains_as_the_eager_mode_does(variant, batching):
    """A reference's per-step losses (two epochs of the plan's rows, the timed `epoch()`) are the eager adapter's
    exact-mode losses, as the driver records them, within the float32 exact tolerance."""
    size, last = batching
    spec = bench_spec(None, [*SMALL, f"batching.batch_size={size}", f"batching.last_batch={last}"])
    data = load_dataset(spec)
    if variant == "graph" and not ON_CUDA:
        pytest.skip("graph = CUDA graphs: no CUDA device here")
    rec, _ = run_in_process("torch", spec)
    eager = np.array([s["loss"] for s in rec["steps"]])
    assert eager.shape == (50 if size == 16 else 26,)
    losses = np.asarray(reference_loop.make_reference(spec, data, DEVICE, variant).equivalence_losses(2))
    check = compare_values(losses, eager, list(range(1, eager.shape[0] + 1)), tolerance_for("float32", "exact"))
    assert check["first_divergent_step"] is None, check


@pytest.mark.parametrize("last_batch", ["keep", "pad", "drop"])
def test_exact_loader_places_each_epoch_once_and_walks_the_plan(last_batch):
    """Exact mode on features: the DataLoader yields the plan's batches (ids, weights, rows, `real`) as views of one
    gather per epoch."""
    spec = bench_spec(None, [*SMALL, "batching.batch_size=32", f"batching.last_batch={last_batch}"])
    data = load_dataset(spec)
    adapter = TorchAdapter(spec, "cpu")
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
    adapter.prepare(spec, data, plan, model_layers(spec, data), None)
    for epoch in (0, 1):
        batches = list(adapter.pipeline.epoch(epoch))
        planned = plan.batches(epoch)
        assert len(batches) == len(planned) == (12 if last_batch == "drop" else 13)
        assert len({rows.x.untyped_storage().data_ptr() for rows in batches}) == 1  # one epoch tensor, sliced
        for rows, batch in zip(batches, planned, strict=True):
            np.testing.assert_array_equal(rows.ids, batch.ids)
            np.testing.assert_array_equal(rows.weights.numpy(), batch.weights.astype(np.float32))
            np.testing.assert_array_equal(rows.x.numpy(), data.train_x[batch.ids].astype(np.float32))
            np.testing.assert_array_equal(rows.y.numpy(), data.train_y[batch.ids])
        assert [rows.real for rows in batches] == [None] * 12 + {"keep": [None], "pad": [16], "drop": []}[last_batch]
        assert batches[-1].ids.shape == ((32,) if last_batch != "keep" else (16,))


def test_step_reals_counts_the_real_rows_heading_each_step():
    assert step_reals(np.array([1.0, 1, 1, 1, 1, 1, 0, 0]), np.array([0, 4])) == [None, 2]
    assert step_reals(np.ones(5), np.array([0, 4])) == [None, None]  # a ragged kept batch is all real
    with pytest.raises(RuntimeError, match="filler rows"):
        step_reals(np.array([1.0, 1, 0, 1]), np.array([0, 2]))


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_lean_optimizer_one_group_fused_sgd_no_penalty_op(mode):
    """Without weight decay the SGD has one parameter group, fused on the CPU in both modes (compiled mode runs the
    fused kernel outside its graphs, as the compiled reference does), and the loss gets no penalty op; with a
    coupled weight decay two groups (weights decayed)."""
    spec = bench_spec(None, [*SMALL, f"execution={mode}"])
    data = load_dataset(spec)
    adapter = TorchAdapter(spec, "cpu")
    adapter.prepare(spec, data, BatchPlan.from_spec(spec, 400), model_layers(spec, data), None)
    opt = adapter.optimizer
    assert len(opt.opt.param_groups) == 1 and opt.opt.defaults["fused"] is True and opt.fused
    loss = torch.ones(())
    assert opt.with_penalty(loss) is loss
    decayed = replace(spec, regularization=replace(spec.regularization, weight_decay=1e-3))
    adapter = TorchAdapter(decayed, "cpu")
    adapter.prepare(decayed, data, BatchPlan.from_spec(decayed, 400), model_layers(decayed, data), None)
    groups = adapter.optimizer.opt.param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(2, 1e-3), (2, 0.0)]


def test_the_peak_probe_measures_a_gemm_in_each_dtype():
    """The MFU denominator (common.flops): the fastest 64² GEMM here, in both dtypes, a positive finite FLOP/s."""
    for dtype in ("float32", "float64"):
        peak = bench.peak_flops("cpu", dtype, n=64)
        assert 0 < peak < float("inf"), (dtype, peak)
