"""PyTorch backend: exact-mode agreement with the numpy oracle (layer_norm stacks included, and the ε each mode
passes to nn.LayerNorm), dropout handling, the DataLoader's RNG, a replay of a torch record by a plain hand-written
PyTorch loop, native mode (common.native's torch column), and the execution modes (eager, torch.compile, CUDA
graph) each reproducing the oracle."""

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from backends.torch_backend.adapter import make_adapter  # noqa: E402
from backends.torch_backend.data import RowsDataset, make_loader  # noqa: E402
from backends.torch_backend.execution import CompiledStep, GraphStep  # noqa: E402
from common import record  # noqa: E402
from common.batching import BatchPlan, eval_batches  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import canonical_init, model_layers, train  # noqa: E402
from common.metrics import cross_entropy  # noqa: E402
from tests.support import (  # noqa: E402
    EXACT_MATRIX,
    LAYER_NORM_RUNS,
    LAYER_NORM_STACK,
    base_spec,
    compare_with_oracle,
    divergences,
    matrix_spec,
    run_in_process,
)

# Together these cover every last_batch policy, shuffle on/off, sgd+momentum, sgd+nesterov, plain sgd, adam,
# adamw, l1 mean and sum, l2, coupled and decoupled decay, regularize_bias on/off, dropout 0.3 / 0.5, relu/tanh,
# all three init schemes, one and two hidden layers.


_spec = base_spec


@pytest.mark.parametrize("name", sorted(EXACT_MATRIX))
def test_float64_exact_mode_agrees_with_oracle(name):
    spec = matrix_spec(name)
    cmp = compare_with_oracle("torch", spec)
    assert divergences(cmp) == []
    loss = next(p for p in cmp["pairs"] if p["metric"] == "loss")
    assert loss["first_divergent_step"] is None
    steps = BatchPlan.from_spec(spec, 120).steps_per_epoch * spec.train.epochs
    assert steps >= 100


def test_float32_exact_mode_agrees_within_float32_tolerance():
    spec = _spec(
        dtype="float32",
        batching={"last_batch": "pad"},
        optimizer={"name": "adam", "lr": 0.005},
        regularization={"dropout": 0.3, "l2": 0.001},
    )
    cmp = compare_with_oracle("torch", spec)
    assert cmp["tolerance"]["rtol"] == 1e-4
    assert divergences(cmp) == []
    _, npz = run_in_process("torch", spec)
    assert npz["final/layer0.weight"].dtype == np.float32


# ------------------------------------------------------------------------------------------------------ layer_norm


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 1e-4)])
@pytest.mark.parametrize("case", sorted(LAYER_NORM_RUNS))
def test_layer_norm_stack_agrees_with_oracle_at_every_step(case, dtype, rtol):
    spec = _spec(dtype=dtype, model={"layers": LAYER_NORM_STACK}, **LAYER_NORM_RUNS[case])
    cmp = compare_with_oracle("torch", spec)
    assert cmp["tolerance"]["rtol"] == rtol
    assert divergences(cmp) == []
    pairs = {p["metric"]: p for p in cmp["pairs"]}
    assert pairs["loss"]["first_divergent_step"] is None and not pairs["batch_ids"]["divergent"]
    assert {"final/ln0.scale", "final/ln0.offset", "final/ln1.scale", "final/ln1.offset"} <= set(pairs)
    rec, npz = run_in_process("torch", spec)
    assert len(rec["steps"]) == 18 * 6  # every step of the 6 epochs compared
    assert not np.array_equal(npz["init/ln0.scale"], npz["final/ln0.scale"])  # γ and β train


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_layer_norm_eps_is_the_spec_in_exact_mode_and_torch_default_in_native_mode(eps):
    """Exact mode passes the canonical ε (the table's eps, else model.norm_eps); native mode writes
    nn.LayerNorm(width) as a hand port does, so torch's default 1e-5 whatever the spec says."""
    table = {"kind": "layer_norm"} if eps is None else {"kind": "layer_norm", "eps": eps}
    model = {"layers": [{"kind": "dense", "units": 8}, table, {"kind": "dense"}], "norm_eps": 2e-4}
    for mode, want in (("exact", eps or 2e-4), ("native", 1e-5)):
        adapter, _, _ = _prepared(_spec(mode=mode, model=model))
        norms = [m for m in adapter.model.modules() if isinstance(m, nn.LayerNorm)]
        assert norms == [adapter.model.ln0] and norms[0].eps == want, mode
    assert nn.LayerNorm(8).eps == 1e-5  # torch's default


def _prepared(spec):
    """An adapter prepared as the driver does: canonical parameters in exact mode, none in native mode."""
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
    adapter.prepare(
        spec, data, plan, model_layers(spec, data), canonical_init(spec, data) if spec.mode == "exact" else None
    )
    return adapter, data, plan


@pytest.mark.parametrize("mode", ["exact", "native"])
def test_dropout_is_off_in_evaluate(mode):
    spec = _spec(mode=mode, regularization={"dropout": 0.5})
    adapter, data, _ = _prepared(spec)
    adapter.run_epoch(0, 1)  # shared masks (exact) or nn.Dropout (native); leaves the model in training mode
    batches = eval_batches(data.test_x.shape[0], 5)
    first, second = adapter.evaluate("test", batches), adapter.evaluate("test", batches)
    assert first == second
    p = adapter.parameters()
    hidden = np.maximum(data.test_x @ p["layer0.weight"] + p["layer0.bias"], 0.0)
    logits = hidden @ p["layer1.weight"] + p["layer1.bias"]
    losses, correct = cross_entropy(logits, data.test_y), np.argmax(logits, axis=1) == data.test_y
    for got, b in zip(first, batches, strict=True):
        assert got[0] == pytest.approx(losses[b.ids].sum(), rel=1e-12)
        assert got[1] == correct[b.ids].sum()
        assert got[2] == b.n_real


def test_loader_yields_plan_batches_and_keeps_global_rng():
    spec = _spec(batching={"last_batch": "pad"})
    data = load_dataset(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
    dataset = RowsDataset(torch.as_tensor(data.train_x), torch.as_tensor(data.train_y))
    loader = make_loader(dataset, plan, spec.seed)
    before = torch.get_rng_state()
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        got = list(loader)
        assert len(got) == len(plan.batches(epoch))
        for native, planned in zip(got, plan.batches(epoch), strict=True):
            assert np.array_equal(native.ids, planned.ids)
            assert np.array_equal(native.weights.numpy(), planned.weights)
            assert np.array_equal(native.x.numpy(), data.train_x[planned.ids])
            assert np.array_equal(native.y.numpy(), data.train_y[planned.ids])
    assert torch.equal(torch.get_rng_state(), before)
    # The trap this guards against: a loader on the global generator moves the global RNG.
    list(torch.utils.data.DataLoader(dataset, batch_sampler=loader.batch_sampler, collate_fn=lambda b: b))
    assert not torch.equal(torch.get_rng_state(), before)


def test_plain_torch_loop_replays_the_record(tmp_path):
    spec = _spec(
        optimizer={"lr": 0.05, "momentum": 0.9},
        regularization={"weight_decay": 0.01, "regularize_bias": True},
        train={"epochs": 3},
    )
    rec, arrays = run_in_process("torch", spec)
    record.write(tmp_path, rec, arrays)
    saved = json.loads((tmp_path / "torch.json").read_text())
    with np.load(tmp_path / "torch.npz") as npz:
        init = {k[len("init/") :]: npz[k] for k in npz.files if k.startswith("init/")}
        x, y = torch.from_numpy(npz["train_x"]), torch.from_numpy(npz["train_y"])

    widths = [init["layer0.weight"].shape[0], init["layer0.weight"].shape[1], init["layer1.weight"].shape[1]]
    first, second = (
        nn.Linear(widths[0], widths[1], dtype=torch.float64),
        nn.Linear(widths[1], widths[2], dtype=torch.float64),
    )
    with torch.no_grad():
        for i, layer in enumerate((first, second)):
            layer.weight.copy_(torch.from_numpy(init[f"layer{i}.weight"]).T)
            layer.bias.copy_(torch.from_numpy(init[f"layer{i}.bias"]))
    net = nn.Sequential(first, nn.ReLU(), second)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    losses = []
    for s in saved["steps"]:
        ids = torch.tensor(s["batch_ids"])
        opt.zero_grad()
        loss = F.cross_entropy(net(x[ids]), y[ids])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    np.testing.assert_allclose(losses, [s["loss"] for s in saved["steps"]], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------- native mode


def _native(**sections):
    return _spec(mode="native", **sections)


def _epochs(body_or_rec, n):
    return [[s["batch_ids"] for s in body_or_rec["steps"] if s["epoch"] == e] for e in range(1, n + 1)]


def test_native_mode_is_reproducible_and_seeded():
    spec = _native(train={"epochs": 2}, regularization={"dropout": 0.3})
    (rec, npz), (again, npz_again) = run_in_process("torch", spec), run_in_process("torch", spec)
    assert rec["steps"] == again["steps"]  # order, sizes and losses (dropout included)
    for key in npz:
        np.testing.assert_array_equal(npz[key], npz_again[key])
    other, npz_other = run_in_process("torch", replace(spec, seed=1))
    assert _epochs(other, 2) != _epochs(rec, 2)
    assert not np.array_equal(npz_other["init/layer0.weight"], npz["init/layer0.weight"])
    assert not np.array_equal(npz_other["losses"], npz["losses"])


def test_native_mode_uses_torch_dropout():
    spec = _native(regularization={"dropout": 0.5}, train={"epochs": 1})
    adapter, _, _ = _prepared(spec)
    assert [m.p for m in adapter.model.modules() if isinstance(m, nn.Dropout)] == [0.5]
    with_dropout, npz = run_in_process("torch", spec)
    without, npz_without = run_in_process("torch", _native(train={"epochs": 1}))
    # Same seed: the same init and order, so step 1 differs only by nn.Dropout's mask.
    assert with_dropout["steps"][0]["batch_ids"] == without["steps"][0]["batch_ids"]
    np.testing.assert_array_equal(npz["init/layer0.weight"], npz_without["init/layer0.weight"])
    assert npz["losses"][0] != npz_without["losses"][0]


@pytest.mark.parametrize("hidden", [[32], [16, 8]])
def test_native_init_is_nn_linear_default(hidden):
    """kaiming_uniform(a=√5) weights and U(±1/√fan_in) biases from torch.manual_seed(seed), whatever model.init
    says, and not common's canonical init."""
    spec = _native(seed=3, model={"hidden": hidden, "init": "glorot_uniform"})
    adapter, data, _ = _prepared(spec)
    init = adapter.parameters()
    canonical = canonical_init(spec, data)
    torch.manual_seed(3)
    by_hand = [
        nn.Linear(fan_in, fan_out, dtype=torch.float64)
        for fan_in, fan_out in zip([4, *hidden], [*hidden, 3], strict=True)
    ]
    for i, layer in enumerate(by_hand):
        w, b = init[f"layer{i}.weight"], init[f"layer{i}.bias"]
        bound = 1.0 / np.sqrt(w.shape[0])
        assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
        assert np.all(b != 0)
        assert np.abs(w).max() > 0.9 * bound  # the full U(±1/√fan_in) range, not a narrower scheme
        np.testing.assert_array_equal(w, layer.weight.detach().numpy().T)
        np.testing.assert_array_equal(b, layer.bias.detach().numpy())
        assert not np.allclose(w, canonical[f"layer{i}.weight"])


@pytest.mark.parametrize("last_batch", ["keep", "drop", "pad"])
def test_native_order_is_the_dataloader_shuffle(last_batch):
    spec = _native(train={"epochs": 3}, batching={"last_batch": last_batch})
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    body = train(adapter, spec, data)
    epochs = _epochs(body, 3)
    plan = BatchPlan.from_spec(spec, 120)
    by_hand = torch.utils.data.DataLoader(
        range(120),
        batch_size=7,
        shuffle=True,
        drop_last=last_batch == "drop",
        generator=torch.Generator().manual_seed(spec.seed),
    )
    for e, batches in enumerate(epochs):
        assert batches == [b.tolist() for b in by_hand]  # torch's own RandomSampler, reshuffled each epoch
        order = np.concatenate(batches)
        assert not np.array_equal(order, plan.order(e)[: order.shape[0]])
        if last_batch == "drop":
            assert [len(b) for b in batches] == [7] * 17 and len(set(order)) == 119
        else:  # keep, and pad kept ragged (no filler ids): every row exactly once
            assert sorted(order) == list(range(120)) and len(batches[-1]) == 120 % 7
    assert epochs[0] != epochs[1] != epochs[2]


def test_native_order_without_shuffle_and_loader_leaves_global_rng():
    spec = _native(train={"epochs": 1}, batching={"shuffle": False})
    adapter, _, _ = _prepared(spec)
    before = torch.get_rng_state()
    batches = [b.ids.tolist() for b in adapter.pipeline.epoch(0)]
    assert np.concatenate(batches).tolist() == list(range(120))
    assert torch.equal(torch.get_rng_state(), before)  # the loader's own Generator: nn.Dropout's RNG untouched
    shuffled, _, _ = _prepared(_native())
    before = torch.get_rng_state()
    list(shuffled.pipeline.epoch(0))
    assert torch.equal(torch.get_rng_state(), before)


def _one_step(spec):
    """One update: an epoch of a single batch (every training row, in the native loader's shuffled order)."""
    adapter, _, _ = _prepared(spec)
    before = adapter.parameters()
    run = adapter.run_epoch(0, 1)
    assert len(run.ids) == 1
    return before, adapter.parameters(), run.ids[0]


LAMBDA, LR = 0.03, 0.1
ONE_BATCH = {"batch_size": 120}


@pytest.mark.parametrize(
    "regularization",
    [
        {"l2": LAMBDA},
        {"weight_decay": LAMBDA},
        {"l2": LAMBDA / 3, "weight_decay": 2 * LAMBDA / 3},
        {"weight_decay": LAMBDA, "decay": "decoupled"},  # no decoupled SGD in torch: the one knob, coupled
    ],
)
def test_native_l2_is_torch_weight_decay_as_written(regularization):
    """SGD(weight_decay=λ): one step moves w by lr·(g + λ·w), not the spec's lr·(g + 2·l2·w); biases too."""
    spec = _native(optimizer={"lr": LR}, regularization={"dropout": 0.0, **regularization}, batching=ONE_BATCH)
    w0, with_l2, ids = _one_step(spec)
    w0_plain, plain, ids_plain = _one_step(
        _native(optimizer={"lr": LR}, regularization={"dropout": 0.0}, batching=ONE_BATCH)
    )
    assert np.array_equal(ids, ids_plain)
    for name in w0:
        np.testing.assert_array_equal(w0[name], w0_plain[name])  # the same native init
        np.testing.assert_allclose(plain[name] - with_l2[name], LR * LAMBDA * w0[name], rtol=0, atol=1e-12)


def test_native_l1_is_a_loss_term_as_the_spec_says():
    spec = _native(optimizer={"lr": LR}, regularization={"dropout": 0.0, "l1": LAMBDA}, batching=ONE_BATCH)
    w0, with_l1, _ = _one_step(spec)
    _, plain, _ = _one_step(_native(optimizer={"lr": LR}, regularization={"dropout": 0.0}, batching=ONE_BATCH))
    for name in w0:
        expected = LR * LAMBDA / w0[name].size * np.sign(w0[name]) if name.endswith(".weight") else 0.0
        np.testing.assert_allclose(plain[name] - with_l1[name], expected, rtol=0, atol=1e-12)


def test_native_optimizers_take_the_spec_numbers_as_written():
    adam, _, _ = _prepared(
        _native(optimizer={"name": "adam", "eps": 1e-6}, regularization={"l2": 0.01, "weight_decay": 0.002})
    )
    opt = adam.optimizer.opt
    assert type(opt) is torch.optim.Adam and len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.012) and opt.param_groups[0]["eps"] == 1e-6
    assert len(opt.param_groups[0]["params"]) == 4  # biases decayed too: torch's weight_decay has no mask
    adamw, _, _ = _prepared(
        _native(
            optimizer={"name": "adamw", "eps": 1e-6},
            regularization={"l2": 0.01, "weight_decay": 0.05, "decay": "decoupled"},
        )
    )
    opt = adamw.optimizer.opt
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups[0]["params"]) == 4
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[0]["eps"] == 1e-6
    # AdamW has no coupled slot: l2 is written into the loss as the spec says, l2·Σw² over the weights.
    p = adamw.parameters()
    expected = 0.01 * sum(np.square(p[k]).sum() for k in p if k.endswith(".weight"))
    assert adamw.optimizer.penalty().item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------------ execution modes

# keep (a ragged last batch: a second shape to compile / capture) + AdamW + bias decay + masks, and pad + SGD
# momentum + decoupled decay (optim.py's pre-step line inside the compiled / captured optimizer step) + L1 sum + masks,
# and a layer_norm stack (nn.LayerNorm with the canonical ε inside the compiled / captured step)
EXECUTION_CASES = [
    "keep-ordered-adamw-bias-drop0.3-lecun",
    "pad-shuffle-sgd-decoupled-l1sum-drop0.5",
    "keep-shuffle-adam-l2-layernorm-drop0.3",
]
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="fused = CUDA graph: needs a CUDA device")


@pytest.mark.parametrize("case", EXECUTION_CASES)
@pytest.mark.parametrize("execution", ["eager", "compiled", pytest.param("fused", marks=NEEDS_CUDA)])
def test_execution_modes_agree_with_oracle(execution, case):
    spec = replace(matrix_spec(case), execution=execution)
    assert divergences(compare_with_oracle("torch", spec)) == []


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_compiled_mode_runs_dynamo_graphs_not_eager(optimizer):
    """Forward + loss compiled at B = 7 and at the ragged 1; Adam's multi-tensor step compiled too, SGD's fused
    kernel (which torch.compile does not trace into) run as is."""
    from torch._dynamo.utils import counters

    sections = {"batching": {"last_batch": "keep"}, "train": {"epochs": 1}, "optimizer": {"name": optimizer}}
    spec = replace(_spec(**sections), execution="compiled")
    adapter, data, _ = _prepared(spec)
    assert isinstance(adapter.run_step, CompiledStep)
    fused = optimizer == "sgd"  # the CPU has torch.optim's fused SGD
    assert adapter.optimizer.fused is fused and (adapter.run_step.raw_step == adapter.optimizer.step) is fused
    torch._dynamo.reset()  # graphs this process compiled for the same code would be reused, not counted
    before = counters["stats"]["unique_graphs"]
    train(adapter, spec, data)
    assert counters["stats"]["unique_graphs"] - before >= (2 if fused else 3)


def test_fused_mode_without_cuda_is_a_clear_error():
    spec = replace(_spec(), execution="fused")
    with pytest.raises(RuntimeError, match=r"fused mode .*needs a CUDA device; this run is on cpu"):
        make_adapter(spec, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="fused mode"):
            make_adapter(spec)
        with pytest.raises(RuntimeError, match="device 'gpu' requested"):
            make_adapter(_spec(), "gpu")


@NEEDS_CUDA
def test_fused_mode_captures_one_graph_per_batch_shape():
    spec = replace(
        _spec(batching={"last_batch": "keep"}, train={"epochs": 2}, optimizer={"name": "adam"}), execution="fused"
    )
    adapter, data, _ = _prepared(spec)
    train(adapter, spec, data)
    assert isinstance(adapter.run_step, GraphStep)
    assert sorted(adapter.run_step.graphs) == [((1, 4), False, None), ((7, 4), False, None)]
