"""PyTorch backend: exact-mode agreement with the numpy oracle, dropout handling, the DataLoader's RNG, and a
replay of a torch record by a plain hand-written PyTorch loop."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from backends.torch_backend.adapter import make_adapter  # noqa: E402
from backends.torch_backend.data import RowsDataset, make_loader  # noqa: E402
from common import record  # noqa: E402
from common.batching import BatchPlan, eval_batches  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import canonical_init  # noqa: E402
from common.dropout import shared_masks  # noqa: E402
from common.metrics import cross_entropy  # noqa: E402
from tests.support import compare_with_oracle, divergences, make_spec, run_in_process  # noqa: E402

BASE = {"dtype": "float64", "batching": {"batch_size": 7}, "train": {"epochs": 7}}

# Together these cover every last_batch policy, shuffle on/off, sgd+momentum, sgd+nesterov, plain sgd, adam,
# adamw, l1 mean and sum, l2, coupled and decoupled decay, regularize_bias on/off, dropout 0.3 / 0.5, relu/tanh,
# all three init schemes, one and two hidden layers.
CONFIGS = {
    "keep-shuffle-momentum-l2-drop0.3": dict(
        batching={"last_batch": "keep", "shuffle": True}, optimizer={"momentum": 0.9},
        regularization={"l2": 0.01, "dropout": 0.3}),
    "drop-noshuffle-nesterov-wd-l1mean-bias-glorot": dict(
        batching={"last_batch": "drop", "shuffle": False}, optimizer={"momentum": 0.9, "nesterov": True},
        regularization={"weight_decay": 0.01, "l1": 0.01, "regularize_bias": True, "dropout": 0.5},
        model={"activation": "tanh", "init": "glorot_uniform"}),
    "pad-shuffle-adam-l1mean": dict(
        batching={"last_batch": "pad"}, optimizer={"name": "adam", "lr": 0.005},
        regularization={"l1": 0.01, "dropout": 0.3}),
    "keep-adamw-decoupled-bias": dict(
        optimizer={"name": "adamw", "lr": 0.005},
        regularization={"weight_decay": 0.05, "decay": "decoupled", "regularize_bias": True, "dropout": 0.5}),
    "pad-noshuffle-sgd-l1sum-bias": dict(
        batching={"last_batch": "pad", "shuffle": False}, optimizer={"lr": 0.05},
        regularization={"l1": 0.001, "l1_reduction": "sum", "regularize_bias": True}),
    "drop-sgd-momentum-decoupled-plus-l2": dict(
        batching={"last_batch": "drop"}, optimizer={"momentum": 0.9},
        regularization={"weight_decay": 0.01, "decay": "decoupled", "l2": 0.005, "dropout": 0.3}),
    "keep-adam-coupled-wd-l2-two-hidden": dict(
        optimizer={"name": "adam", "lr": 0.005}, model={"hidden": [16, 8], "init": "glorot_uniform"},
        regularization={"weight_decay": 0.01, "l2": 0.002, "dropout": 0.5}),
    "pad-adamw-l2-l1sum-lecun": dict(
        batching={"last_batch": "pad"}, optimizer={"name": "adamw", "lr": 0.005},
        model={"init": "lecun_normal", "activation": "tanh"},
        regularization={"weight_decay": 0.02, "decay": "decoupled", "l2": 0.001, "l1": 0.0005,
                        "l1_reduction": "sum", "dropout": 0.3}),
}


def _spec(**sections):
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return make_spec(**merged)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float64_exact_mode_agrees_with_oracle(name):
    spec = _spec(**CONFIGS[name])
    cmp = compare_with_oracle("torch", spec)
    assert divergences(cmp) == []
    loss = next(p for p in cmp["pairs"] if p["metric"] == "loss")
    assert loss["first_divergent_step"] is None
    steps = BatchPlan.from_spec(spec, 120).steps_per_epoch * spec["train"]["epochs"]
    assert steps >= 100


def test_float32_exact_mode_agrees_within_float32_tolerance():
    spec = _spec(dtype="float32", batching={"last_batch": "pad"}, optimizer={"name": "adam", "lr": 0.005},
                 regularization={"dropout": 0.3, "l2": 0.001})
    cmp = compare_with_oracle("torch", spec)
    assert cmp["tolerance"]["rtol"] == 1e-4
    assert divergences(cmp) == []
    rec, npz = run_in_process("torch", spec)
    assert npz["final/layer0.weight"].dtype == np.float32


def _prepared(spec):
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
    adapter.prepare(spec, data, plan, canonical_init(spec, data))
    return adapter, data, plan


@pytest.mark.parametrize("mode", ["exact", "native"])
def test_dropout_is_off_in_evaluate(mode):
    spec = _spec(mode=mode, regularization={"dropout": 0.5})
    adapter, data, plan = _prepared(spec)
    batch = next(iter(adapter.epoch_batches(0)))
    masks = shared_masks(spec["seed"], 1, 0.5, batch.x.shape[0], spec["model"]["hidden"], np.float64)
    adapter.train_step(batch, 1, masks if mode == "exact" else None)  # leaves the model in training mode
    batches = eval_batches(data.test_x.shape[0], 5)
    first, second = adapter.evaluate("test", batches), adapter.evaluate("test", batches)
    assert first == second
    p = adapter.parameters()
    hidden = np.maximum(data.test_x @ p["layer0.weight"] + p["layer0.bias"], 0.0)
    logits = hidden @ p["layer1.weight"] + p["layer1.bias"]
    losses, correct = cross_entropy(logits, data.test_y), np.argmax(logits, axis=1) == data.test_y
    for got, b in zip(first, batches):
        assert got[0] == pytest.approx(losses[b.ids].sum(), rel=1e-12)
        assert got[1] == correct[b.ids].sum()
        assert got[2] == b.n_real


def test_native_mode_uses_torch_dropout():
    exact = _spec(regularization={"dropout": 0.5}, train={"epochs": 1})
    native = _spec(mode="native", regularization={"dropout": 0.5}, train={"epochs": 1})
    adapter, _, _ = _prepared(native)
    layers = [m for m in adapter.model.modules() if isinstance(m, nn.Dropout)]
    assert [m.p for m in layers] == [0.5]
    losses = {name: [s["loss"] for s in run_in_process("torch", s)[0]["steps"]]
              for name, s in (("exact", exact), ("native", native))}
    assert losses["native"][0] != pytest.approx(losses["exact"][0], rel=1e-6)
    again = [s["loss"] for s in run_in_process("torch", native)[0]["steps"]]
    assert again == losses["native"]  # torch's own RNG, seeded from the spec seed
    other = [s["loss"] for s in run_in_process("torch", {**native, "seed": 1})[0]["steps"]]
    assert other != losses["native"]


def test_loader_yields_plan_batches_and_keeps_global_rng():
    spec = _spec(batching={"last_batch": "pad"})
    data = load_dataset(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
    dataset = RowsDataset(torch.as_tensor(data.train_x), torch.as_tensor(data.train_y))
    loader = make_loader(dataset, plan, spec["seed"])
    before = torch.get_rng_state()
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        got = list(loader)
        assert len(got) == len(plan.batches(epoch))
        for native, planned in zip(got, plan.batches(epoch)):
            assert np.array_equal(native.ids, planned.ids)
            assert np.array_equal(native.weights.numpy(), planned.weights)
            assert np.array_equal(native.x.numpy(), data.train_x[planned.ids])
            assert np.array_equal(native.y.numpy(), data.train_y[planned.ids])
    assert torch.equal(torch.get_rng_state(), before)
    # The trap this guards against: a loader on the global generator moves the global RNG.
    list(torch.utils.data.DataLoader(dataset, batch_sampler=loader.batch_sampler, collate_fn=lambda b: b))
    assert not torch.equal(torch.get_rng_state(), before)


def test_plain_torch_loop_replays_the_record(tmp_path):
    spec = _spec(optimizer={"lr": 0.05, "momentum": 0.9},
                 regularization={"weight_decay": 0.01, "regularize_bias": True}, train={"epochs": 3})
    rec, arrays = run_in_process("torch", spec)
    record.write(tmp_path, rec, arrays)
    saved = json.loads((tmp_path / "torch.json").read_text())
    with np.load(tmp_path / "torch.npz") as npz:
        init = {k[len("init/"):]: npz[k] for k in npz.files if k.startswith("init/")}
        x, y = torch.from_numpy(npz["train_x"]), torch.from_numpy(npz["train_y"])

    widths = [init["layer0.weight"].shape[0], init["layer0.weight"].shape[1], init["layer1.weight"].shape[1]]
    first, second = nn.Linear(widths[0], widths[1], dtype=torch.float64), nn.Linear(widths[1], widths[2],
                                                                                      dtype=torch.float64)
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
