"""TensorFlow bench target and references: smoke timings (no thresholds), settings, equivalence per mode and per
reference variant, the compiled mode's persistent tf.data pipeline."""

import os
from dataclasses import replace

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
tf = pytest.importorskip("tensorflow")

from backends.tf_backend.bench import LOADERS, MODES, make_target, peak_flops  # noqa: E402
from backends.tf_backend.reference_loop import REFERENCES, make_reference  # noqa: E402
from benchmarks.bench import bench_spec  # noqa: E402
from common.batching import BatchPlan  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.layers import is_state  # noqa: E402
from common.timing import time_calls  # noqa: E402
from common.tolerance import tolerance_for  # noqa: E402
from tests.support import CNN_STACK, cnn_spec, make_spec, run_in_process, seq_spec  # noqa: E402

# iris: 120 rows at batch 32 → 3 full batches and a ragged last batch of 24 ("keep"); Adam (ε̂ per step) and
# shared dropout masks, so the fused program's loop, its extra last step and its in-loop ε̂ are all exercised.
SPEC = make_spec(
    dtype="float64",
    batching={"batch_size": 32},
    optimizer={"name": "adam"},
    train={"epochs": 1},
    regularization={"dropout": 0.3, "weight_decay": 1e-3},
)
SETTINGS_KEYS = {"backend", "mode", "versions", "device", "dtype", "threads", "precision", "xla"}


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC)


@pytest.fixture(scope="module")
def eager_losses():
    return run_in_process("tf", replace(SPEC, execution="eager"))[1]["losses"]


def _smoke(call, sync, items):
    timing = time_calls(call, sync, items, windows=2, calls_per_window=1, warmup=1)
    assert timing.windows == 2 and timing.calls_per_window == 1 and timing.items_per_call == items
    assert min(timing.first_call_s, timing.median_s, timing.q25_s, timing.q75_s, timing.items_per_s) > 0
    assert timing.iqr_s >= 0
    return timing


@pytest.mark.parametrize("mode", MODES)
def test_mode_smoke_and_equivalence(mode, data, eager_losses):
    target = make_target(SPEC, data, mode, "cpu")
    assert target.mode == mode
    losses = target.equivalence_losses(1)
    assert len(losses) == 4
    np.testing.assert_allclose(losses, eager_losses, rtol=tolerance_for("float64", "exact").rtol, atol=0)
    _smoke(target.step, target.sync, 32)
    _smoke(target.epoch, target.sync, 120)
    settings = target.settings()
    assert set(settings) >= SETTINGS_KEYS
    assert settings["mode"] == mode and settings["xla"]["jit_compile"] == (mode != "eager")
    assert settings["versions"]["tensorflow"] == tf.__version__ and settings["device"] == "cpu"
    assert {"intra_op", "inter_op"} <= set(settings["threads"])
    assert isinstance(settings["precision"]["tf32_execution"], bool)


@pytest.mark.parametrize("mode", MODES)
def test_placed_epoch_is_the_epoch_without_its_loader(mode, data, eager_losses):
    """The loop timed without its loader (`placed_epoch`: epoch 0's inputs made once and held) trains as the driver
    does: a fresh target's first placed epoch gives the driver's per-step losses."""
    target = make_target(SPEC, data, mode, "cpu")
    losses = target.placed_epoch()
    assert len(target.placed) == (4 if mode == "eager" else 1)  # compiled, fused: one program call's plan inputs
    np.testing.assert_allclose(losses, eager_losses, rtol=tolerance_for("float64", "exact").rtol, atol=0)


@pytest.mark.parametrize("mode", ["compiled", "fused"])
def test_no_dropout_draws_no_masks(mode, data, monkeypatch):
    """Without dropout the one-call epochs ask for no step's masks (not one call per step, each giving none): their
    plan inputs carry none, and the epoch trains as the driver's eager run does."""
    spec = replace(SPEC, regularization=replace(SPEC.regularization, dropout=0.0))
    eager = run_in_process("tf", replace(spec, execution="eager"))[1]["losses"]
    target = make_target(spec, data, mode, "cpu")
    assert target.adapter.runner.masks.shapes == []

    def refuse(*args):
        raise AssertionError("a step's masks asked for, for a spec without dropout")

    monkeypatch.setattr(type(target.adapter.runner.masks), "__call__", lambda self, *args: refuse(*args))
    assert target.adapter.runner.slots(0, 1)[3] == ()
    np.testing.assert_allclose(target.epoch(), eager, rtol=tolerance_for("float64", "exact").rtol, atol=0)


@pytest.mark.parametrize("loader", LOADERS)
def test_loader_smoke(loader, data):
    target = make_target(SPEC, data, "eager", "cpu")
    batch = target.loader_epoch(loader)
    assert batch[0].shape == (120 % 32, 4)  # the epoch's last batch: the ragged one
    _smoke(lambda: target.loader_epoch(loader), target.sync, 120)


def test_loaders_deliver_the_same_epoch(data):
    target = make_target(SPEC, data, "eager", "cpu")
    fast, naive = (
        [{k: t.numpy() for k, t in b.items()} for b in ds]
        for ds in (target.pipeline.dataset(2), target.pipeline.naive(2))
    )
    assert len(fast) == len(naive) == 4
    for a, b in zip(fast, naive, strict=True):
        assert set(a) == set(b) == {"x", "y", "weights", "ids"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("variant", REFERENCES)
def test_reference_smoke(variant, data):
    reference = make_reference(SPEC, data, "cpu", variant)
    _smoke(reference.epoch, reference.sync, 120)
    losses = reference.epoch().numpy()
    assert losses.shape == (4,) and np.all(np.isfinite(losses))
    assert reference.program._jit_compile == (variant == "xla")
    with pytest.raises(ValueError, match="no reference 'eager'"):
        make_reference(SPEC, data, "cpu", "eager")


@pytest.mark.parametrize("last_batch", ["keep", "pad"])
def test_references_give_the_eager_modes_losses(last_batch):
    """The bench spec (doughnuts 2-32-2, float32, SGD momentum, shuffled) at 300 rows and batch 32: 240 training
    rows, 7 full batches and a ragged one of 16 (keep: padded by the reference to 32 with weight-0 rows; pad: the
    plan's filler). Every reference variant's per-step losses over 2 epochs are the eager mode's exact-mode losses
    (the plan's order and rows), within the float32 exact tolerance."""
    spec = bench_spec(None, ["data.params.n=300", "batching.batch_size=32", f'batching.last_batch="{last_batch}"'])
    data = load_dataset(spec)
    assert data.train_x.shape[0] % 32 == 16 and spec.dtype == "float32" and spec.batching.shuffle
    eager = make_target(spec, data, "eager", "cpu").equivalence_losses(2)
    assert len(eager) == 16
    tol = tolerance_for("float32", "exact")
    for variant in REFERENCES:
        losses = make_reference(spec, data, "cpu", variant).equivalence_losses(2)
        np.testing.assert_allclose(losses, eager, rtol=tol.rtol, atol=tol.atol, err_msg=variant)


def test_reference_pads_a_ragged_batch_with_weight_zero_plan_rows(data):
    """keep: the last batch of 120 % 32 = 24 rows is completed by the epoch's first 8 ids at weight 0."""
    reference = make_reference(SPEC, data, "cpu", "xla")
    ids, weights = reference.order(1)
    plan = BatchPlan.from_spec(SPEC, 120).batches(1)
    assert ids.shape == weights.shape == (4, 32)
    np.testing.assert_array_equal(ids[:3], [b.ids for b in plan[:3]])
    np.testing.assert_array_equal(ids[3], np.concatenate([plan[3].ids, plan[0].ids[:8]]))
    np.testing.assert_array_equal(weights[3], [1] * 24 + [0] * 8)


@pytest.mark.parametrize("last_batch", ["keep", "pad", "drop"])
def test_compiled_pipeline_delivers_the_plan(last_batch):
    """The compiled mode's epoch is one program call over a tf.data pipeline and iterator made once, reading the
    variables the program assigns the epoch's slots to: the ids each step's batch delivered are `plan.batches(e)`'s
    over epochs in any order (the bench skips epoch numbers), so no batch was made ahead from an earlier epoch's
    slots (tf.data's default options, with their injected prefetch, fail this); the program traces once and its
    graph makes no dataset or iterator."""
    spec = replace(SPEC, batching=replace(SPEC.batching, last_batch=last_batch))
    data = load_dataset(spec)
    target = make_target(spec, data, "compiled", "cpu")
    plan = BatchPlan.from_spec(spec, 120)
    runner = target.adapter.runner
    iterator, step = runner.batches, 1
    for epoch in (0, 3, 1, 2):
        run = target.adapter.run_epoch(epoch, step)
        planned = plan.batches(epoch)
        assert len(run.ids) == len(run.losses) == len(planned)
        for got, batch in zip(run.ids, planned, strict=True):
            np.testing.assert_array_equal(got, batch.ids)
        step += len(planned)
    assert runner.program.experimental_get_tracing_count() == 1 and runner.batches is iterator
    graph = runner.program.get_concrete_function(*runner.plan_inputs(0, step)).graph
    assert not [op.type for op in graph.get_operations() if "Dataset" in op.type or "Iterator" in op.type]


@pytest.mark.parametrize(
    "sections",
    [
        dict(
            optimizer={"name": "adam"},
            regularization={"weight_decay": 1e-2, "l1": 1e-3},
            batching={"last_batch": "keep"},
        ),
        dict(
            optimizer={"name": "adamw"},
            regularization={"weight_decay": 1e-2, "decay": "decoupled", "l2": 1e-3},
            batching={"last_batch": "pad"},
        ),
        dict(
            optimizer={"momentum": 0.9, "nesterov": True},
            model={"hidden": [16, 8], "activation": "tanh"},
            regularization={"l1": 1e-3, "l1_reduction": "sum", "regularize_bias": True},
            batching={"last_batch": "drop"},
        ),
    ],
)
def test_reference_trains_the_same_model(sections):
    """Without shuffle and dropout the reference's batches are the plan's: its parameters after two epochs equal
    the adapter's (same init, sizes, optimizer, lr, penalties, batch size and last-batch handling)."""
    batching = {"batch_size": 32, "shuffle": False, **sections["batching"]}
    spec = make_spec(dtype="float64", train={"epochs": 2}, **{**sections, "batching": batching})
    reference = make_reference(spec, load_dataset(spec), "cpu", "graph")
    reference.sync(reference.epoch())
    reference.sync(reference.epoch())
    final = run_in_process("tf", spec)[1]
    for name, value in zip(reference.names, reference.params, strict=True):
        np.testing.assert_allclose(value.numpy(), final[f"final/{name}"], rtol=1e-9, atol=1e-12)


def test_unknown_mode_loader_and_missing_gpu_are_clear_errors(data):
    with pytest.raises(ValueError, match="no execution mode 'graphs'"):
        make_target(SPEC, data, "graphs", "cpu")
    with pytest.raises(ValueError, match="no loader 'grain'"):
        make_target(SPEC, data, "eager", "cpu").loader_epoch("grain")
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(RuntimeError, match="'compiled' cannot run on device 'gpu'"):
            make_target(SPEC, data, "compiled", "gpu")


@pytest.mark.parametrize("sequence", [{"buckets": [4, 10], "pad": "pre"}, {"max_len": 6, "truncate": "pre"}])
def test_sequence_target_loaders_and_equivalence(sequence):
    """The target is kind-agnostic: an RNN on token batches (bucketed / pad_sequences), both loaders delivering the
    same padded epoch, and its end-to-end epoch and equivalence check going through the adapter's run_epoch."""
    spec = seq_spec(
        model={"kind": "rnn", "hidden": [5]}, sequence=sequence, train={"epochs": 1}, regularization={"dropout": 0.3}
    )
    data = load_dataset(spec)
    target = make_target(spec, data, "compiled", "cpu")
    fast, naive = (
        [{k: t.numpy() for k, t in b.items()} for b in ds]
        for ds in (target.pipeline.dataset(1), target.pipeline.naive(1))
    )
    assert len(fast) == len(naive) == target.plan.steps_per_epoch
    for a, b in zip(fast, naive, strict=True):
        assert set(a) == set(b) == {"x", "y", "weights", "lengths", "ids"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_allclose(
        target.equivalence_losses(1),
        run_in_process("tf", spec)[1]["losses"],
        rtol=tolerance_for("float64", "exact").rtol,
        atol=0,
    )
    losses = target.epoch()
    assert losses.shape == (target.plan.steps_per_epoch,) and np.all(np.isfinite(losses))
    _smoke(target.step, target.sync, spec.batching.batch_size)


def _without_dropout(stack: list, **replace_kind) -> list:
    """CNN_STACK without its dropout layers, a kind's table replaced (e.g. max_pool={...})."""
    return [replace_kind.get(t["kind"], t) for t in stack if t["kind"] != "dropout"]


@pytest.mark.parametrize(
    ("run", "stack", "last_batch"),
    [
        # asymmetric "same" pads (0, 1) at stride 2: a −∞-padded max pool; the filler rows out of BN's statistics
        (
            "adam-l2-bias",
            _without_dropout(CNN_STACK, max_pool={"kind": "max_pool", "size": 3, "stride": 2, "padding": "same"}),
            "pad",
        ),
        # avg pool dividing by the real pixels of a padded window; the ragged last batch as its own step
        (
            "sgd-momentum-wd",
            _without_dropout(CNN_STACK, max_pool={"kind": "avg_pool", "size": 3, "stride": 2, "padding": "same"}),
            "keep",
        ),
        # the bench's CNN shape: biased conv, BN on images, global average pool
        (
            "adam-l2-bias",
            [
                {"kind": "conv2d", "filters": 4, "kernel": 3, "padding": "same"},
                {"kind": "batch_norm", "running_var": "unbiased"},
                {"kind": "relu"},
                {"kind": "max_pool", "size": 2},
                {"kind": "conv2d", "filters": 6, "kernel": 3, "padding": "valid", "activation": "tanh"},
                {"kind": "global_avg_pool"},
                {"kind": "dense"},
            ],
            "drop",
        ),
    ],
    ids=["max-pool-same-pad", "avg-pool-same-keep", "global-avg-pool-drop"],
)
def test_reference_trains_the_same_cnn(run, stack, last_batch):
    """The image kinds and batch_norm: without shuffle and dropout the reference's parameters AND batch_norm
    running statistics after two epochs equal the adapter's (conv without bias, BN on images and on features with
    both running-variance estimators, padded pools, every last-batch handling)."""
    batching = {"batch_size": 64, "shuffle": False, "last_batch": last_batch}
    spec = cnn_spec(run, stack=stack, batching=batching, train={"epochs": 2})
    reference = make_reference(spec, load_dataset(spec), "cpu", "xla")
    reference.sync(reference.epoch())
    reference.sync(reference.epoch())
    final = run_in_process("tf", spec)[1]
    variables = reference.variables()
    assert set(variables) == {k.removeprefix("final/") for k in final if k.startswith("final/")}
    for name, value in variables.items():
        np.testing.assert_allclose(value.numpy(), final[f"final/{name}"], rtol=1e-9, atol=1e-12, err_msg=name)


def test_reference_keeps_batch_norm_state_out_of_training():
    """bn{i}.mean / .var are non-trainable variables: not among the trained params, no optimizer slots, no penalty;
    a layer without bias has none. Dropout on images (CNN_STACK's) runs on the activation's shape."""
    spec = cnn_spec("adam-l2-bias", batching={"batch_size": 64})
    data = load_dataset(spec)
    reference = make_reference(spec, data, "cpu", "xla")
    assert reference.state_names == ["bn0.mean", "bn0.var", "bn1.mean", "bn1.var"]
    assert not any(is_state(n) for n in reference.names) and "conv0.bias" not in reference.names
    assert all(len(slot) == len(reference.names) for slot in reference.slots) and len(reference.slots) == 2
    assert not any(v.trainable for v in reference.state.values())
    before = {n: v.numpy().copy() for n, v in reference.state.items()}
    assert np.all(np.isfinite(reference.epoch().numpy()))
    for name, value in reference.state.items():
        assert np.all(np.isfinite(value.numpy())) and not np.allclose(value.numpy(), before[name]), name
    assert np.all(reference.state["bn0.var"].numpy() > 0)


def test_the_peak_probe_measures_a_gemm_in_each_dtype():
    """The MFU denominator (common.flops): the fastest 64² GEMM here, in both dtypes, a positive finite FLOP/s."""
    for dtype in ("float32", "float64"):
        peak = peak_flops("cpu", dtype, n=64)
        assert 0 < peak < float("inf"), (dtype, peak)
