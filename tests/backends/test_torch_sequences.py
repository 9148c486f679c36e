"""PyTorch sequence models (seq_pool, rnn): exact-mode agreement with the numpy oracle, the pad_sequence collate_fn
against common.padding.pad_batch, the frozen bias_hh and the canonical mapping, packed sequences as the masking
mechanism, NaN-free all-padded rows and batches, the compiled execution mode and native mode."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from backends.torch_backend import sequence  # noqa: E402
from backends.torch_backend.adapter import make_adapter  # noqa: E402
from backends.torch_backend.core import Flow  # noqa: E402
from backends.torch_backend.data import PadCollate, TokenRowsDataset, make_loader  # noqa: E402
from backends.torch_backend.model import build  # noqa: E402
from common.batching import BatchPlan  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import canonical_init, model_layers  # noqa: E402
from common.layers import stack  # noqa: E402
from common.padding import kept_lengths, loss_weights, pad_batch, resolve_sides  # noqa: E402
from tests.support import compare_with_oracle, divergences, run_in_process, seq_spec, worst_tolerance_used  # noqa: E402

RNN_MODEL = {"kind": "rnn", "hidden": [5]}

EXACT = {
    # masked, both models × both sides
    "pool-post": {},
    "pool-pre": {"sequence": {"pad": "pre"}},
    "rnn-post": {"model": RNN_MODEL},
    "rnn-pre": {"model": RNN_MODEL, "sequence": {"pad": "pre"}},
    # unmasked: pads are read (the result depends on the side for the rnn)
    "pool-pre-unmasked": {"sequence": {"pad": "pre", "mask": False}},
    "rnn-pre-unmasked": {"model": RNN_MODEL, "sequence": {"pad": "pre", "mask": False}},
    "rnn-post-unmasked-drop": {"model": RNN_MODEL, "sequence": {"mask": False}, "batching": {"last_batch": "drop"}},
    # truncation below the longest sequence (10), both sides
    "rnn-pre-trunc-pre": {"model": RNN_MODEL, "sequence": {"pad": "pre", "truncate": "pre", "max_len": 6}},
    "pool-post-trunc-post-per-token": {"sequence": {"truncate": "post", "max_len": 6, "loss_norm": "per_token"}},
    "rnn-post-trunc-pre-unmasked": {"model": RNN_MODEL, "sequence": {"truncate": "pre", "max_len": 7, "mask": False}},
    # length buckets, keep and pad
    "rnn-buckets-keep": {"model": RNN_MODEL, "sequence": {"buckets": [4, 10]}},
    "pool-buckets-pad-pre": {"sequence": {"buckets": [4, 10], "pad": "pre"}, "batching": {"last_batch": "pad"}},
    "rnn-buckets-pad-truncating-per-token": {
        "model": RNN_MODEL,
        "sequence": {"buckets": [4, 8], "loss_norm": "per_token", "pad": "pre", "truncate": "pre"},
        "batching": {"last_batch": "pad"},
    },
    # regularization and optimizers
    "pool-dropout-l2-momentum": {
        "model": {"hidden": [6, 5]},
        "regularization": {"dropout": 0.3, "l2": 1e-3},
        "optimizer": {"momentum": 0.9},
    },
    "rnn-dropout-wd-l1-bias": {
        "model": RNN_MODEL,
        "regularization": {"dropout": 0.3, "weight_decay": 1e-3, "l1": 1e-3, "regularize_bias": True},
    },
    "rnn-adam-l2-glorot": {
        "model": {**RNN_MODEL, "init": "glorot_uniform"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "regularization": {"l2": 1e-3},
    },
    "pool-adamw-l1sum-lecun-tanh": {
        "model": {"init": "lecun_normal", "activation": "tanh"},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "regularization": {"weight_decay": 1e-2, "decay": "decoupled", "l1": 1e-4, "l1_reduction": "sum"},
    },
    "rnn-sgd-decoupled-eval-batches": {
        "model": RNN_MODEL,
        "batching": {"eval_batch_size": 8},
        "regularization": {"weight_decay": 1e-2, "decay": "decoupled", "regularize_bias": True},
    },
}


def _assert_plan_followed(spec, rec):
    """Batch ids and padded lengths of every recorded step equal the plan's."""
    data = load_dataset(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    planned = [b for e in range(spec.train.epochs) for b in plan.batches(e)]
    assert [s["batch_ids"] for s in rec["steps"]] == [b.real_ids.tolist() for b in planned]
    assert [s["padded_length"] for s in rec["steps"]] == [b.length for b in planned]


@pytest.mark.parametrize("case", sorted(EXACT))
def test_float64_exact_mode_agrees_with_oracle(case):
    spec = seq_spec("float64", **EXACT[case])
    cmp = compare_with_oracle("torch", spec)
    assert divergences(cmp) == []
    assert cmp["tolerance"]["rtol"] <= 1e-9
    assert worst_tolerance_used(cmp) < 0.1
    pairs = {p["metric"]: p for p in cmp["pairs"]}
    assert pairs["loss"]["first_divergent_step"] is None and not pairs["padded_length"]["divergent"]


@pytest.mark.parametrize(
    "sections",
    [
        {
            "model": RNN_MODEL,
            "sequence": {"pad": "pre"},
            "optimizer": {"name": "adam", "lr": 0.01},
            "regularization": {"dropout": 0.3},
        },
        {"sequence": {"buckets": [4, 10]}, "batching": {"last_batch": "pad"}, "regularization": {"l2": 1e-3}},
    ],
    ids=["rnn-pre-adam-dropout", "pool-buckets-pad-l2"],
)
def test_float32_exact_mode_agrees_within_float32_tolerance(sections):
    spec = seq_spec("float32", **sections)
    cmp = compare_with_oracle("torch", spec)
    assert cmp["tolerance"]["rtol"] == 1e-4
    assert divergences(cmp) == []
    rec, npz = run_in_process("torch", spec)
    assert npz["final/embed.weight"].dtype == np.float32
    _assert_plan_followed(spec, rec)


@pytest.mark.parametrize(
    "sections",
    [
        {"sequence": {"pad": "pre", "truncate": "pre", "max_len": 6}},
        {"sequence": {"buckets": [4, 10], "pad": "pre"}, "batching": {"last_batch": "pad"}},
        {"sequence": {"buckets": [3, 7], "truncate": "pre"}, "batching": {"last_batch": "keep"}},
        {"sequence": {"pad": "native", "truncate": "native", "max_len": 12}},
    ],
)
def test_collate_pads_like_pad_batch_and_follows_the_plan(sections):
    spec = seq_spec("float64", **{**sections, "sequence": {**sections["sequence"], "loss_norm": "per_token"}})
    data = load_dataset(spec)
    seq = spec.sequence
    pad, truncate = resolve_sides(spec, "torch")
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    collate = PadCollate.from_spec(spec, torch.float64, "cpu", train=True)
    loader = make_loader(TokenRowsDataset(data.train_x, data.train_lengths, data.train_y), plan, 0, collate)
    before = torch.get_rng_state()
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(plan.batches(epoch))
        for got, planned in zip(batches, plan.batches(epoch), strict=True):
            tokens, _, lengths = pad_batch(data.sequences("train", planned.ids), pad, truncate, planned.length)
            assert np.array_equal(got.ids, planned.ids) and got.length == planned.length
            assert got.x.dtype == torch.int64 and np.array_equal(got.x.numpy(), tokens)
            assert np.array_equal(got.lengths.numpy(), lengths)
            kept = kept_lengths(data.train_lengths[planned.ids], seq.max_len, seq.buckets)
            assert np.array_equal(lengths, kept)
            assert np.array_equal(got.weights.numpy(), loss_weights(planned.weights, kept, "per_token"))
            assert np.array_equal(got.weights.numpy() / kept, planned.weights)  # m = w·L: the plan's weights
            assert np.array_equal(got.y.numpy(), data.train_y[planned.ids])
    assert torch.equal(torch.get_rng_state(), before)  # the loader's own Generator


def _models(mask, pad, dtype="float64"):
    """A seq_pool and an rnn stack over a 7-token vocabulary (embedding 3, width 4, 2 classes), native init."""
    torch.manual_seed(0)
    out = []
    for kind in ("seq_pool", "rnn"):
        spec = seq_spec(dtype, model={"kind": kind, "embed_dim": 3, "hidden": [4]}, sequence={"mask": mask, "pad": pad})
        out.append(build(stack(spec, 7, 2), spec))
    return out


def _masked_loss(logits, y, m):
    rows = F.cross_entropy(logits, y, reduction="none")
    return (rows * m).sum() / m.sum().clamp_min(1.0)


@pytest.mark.parametrize("pad", ["post", "pre"])
@pytest.mark.parametrize("mask", [True, False])
def test_all_padded_rows_and_batches_are_finite(pad, mask):
    tokens = (
        torch.tensor([[3, 4, 0, 0], [0, 0, 0, 0], [5, 6, 1, 2]])
        if pad == "post"
        else torch.tensor([[0, 0, 3, 4], [0, 0, 0, 0], [5, 6, 1, 2]])
    )
    lengths = torch.tensor([2, 0, 4])
    y = torch.tensor([0, 1, 1])
    for model in _models(mask, pad):
        # a batch with one all-padded row (length 0, weight 0)
        m = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
        loss = _masked_loss(model(tokens, lengths), y, m)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
        if mask and hasattr(model, "rnn"):  # an all-padded row's final state is exactly 0
            flow = Flow(lengths)
            assert torch.equal(model.rnn(model.embed(tokens), flow)[1], torch.zeros(4, dtype=torch.float64))
        model.zero_grad()
        # an all-padded batch: Σm = 0 → loss 0, zero (not NaN, not missing) gradients
        empty = (torch.zeros((2, 4), dtype=torch.long), torch.zeros(2, dtype=torch.long))
        loss = _masked_loss(model(*empty), torch.tensor([0, 1]), torch.zeros(2, dtype=torch.float64))
        loss.backward()
        assert loss.item() == 0.0
        for p in model.parameters():
            if p.requires_grad:
                assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p.grad))


def test_masked_seq_pool_of_an_all_padded_row_is_zero():
    pool, _ = _models(True, "post")
    e = pool.embed(torch.zeros((1, 3), dtype=torch.long))
    assert torch.isfinite(e).all()
    captured = {}
    pool.layer0.register_forward_pre_hook(lambda mod, inp: captured.update(x=inp[0]))
    pool(torch.zeros((1, 3), dtype=torch.long), torch.tensor([0]))
    assert torch.equal(captured["x"], torch.zeros_like(captured["x"]))


def test_rnn_mapping_freezes_bias_hh_and_round_trips():
    spec = seq_spec("float64", model=RNN_MODEL, regularization={"weight_decay": 1e-2, "regularize_bias": True})
    data = load_dataset(spec)
    init = canonical_init(spec, data)
    adapter = make_adapter(spec)
    adapter.prepare(
        spec, data, BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths), model_layers(spec, data), init
    )
    rnn = adapter.model.rnn
    assert adapter.model.embed.padding_idx is None
    assert torch.equal(rnn.weight_ih_l0.detach(), torch.as_tensor(init["rnn.input.weight"]).T)
    assert torch.equal(rnn.weight_hh_l0.detach(), torch.as_tensor(init["rnn.recurrent.weight"]).T)
    assert torch.equal(rnn.bias_ih_l0.detach(), torch.as_tensor(init["rnn.bias"]))
    assert not rnn.bias_hh_l0.requires_grad and not rnn.bias_hh_l0.any()
    optimized = {id(p) for g in adapter.optimizer.opt.param_groups for p in g["params"]}
    assert id(rnn.bias_hh_l0) not in optimized and len(optimized) == len(init)
    assert {n for n, _ in adapter.optimizer.regularized} == set(init)  # canonical names, biases included
    exported = adapter.parameters()
    assert set(exported) == set(init) and all(np.array_equal(exported[k], init[k]) for k in init)
    adapter.run_epoch(0, 1)
    assert not rnn.bias_hh_l0.any()  # weight decay and the step never touch it
    assert not np.array_equal(adapter.parameters()["rnn.bias"], init["rnn.bias"])


@pytest.mark.parametrize("pad", ["post", "pre"])
def test_masked_rnn_packs_only_the_real_tokens(pad, monkeypatch):
    """Packed sequences are the mechanism: pack_padded_sequence is called with the kept lengths, and the packed
    data holds exactly the real tokens' embeddings, in order (pre-padded rows rotated to the front)."""
    _, model = _models(True, pad)
    real = [torch.tensor([3, 4]), torch.tensor([5, 6, 1, 2]), torch.tensor([2])]
    tokens = torch.nn.utils.rnn.pad_sequence(real, batch_first=True, padding_side="right" if pad == "post" else "left")
    seen = {}
    original = sequence.pack_padded_sequence

    def spy(x, lengths, **kwargs):
        seen["x"], seen["lengths"], seen["kwargs"] = x, lengths, kwargs
        return original(x, lengths, **kwargs)

    monkeypatch.setattr(sequence, "pack_padded_sequence", spy)
    h = model.rnn(model.embed(tokens), Flow(torch.tensor([2, 4, 1])))
    assert seen["lengths"].tolist() == [2, 4, 1] and seen["kwargs"]["enforce_sorted"] is False
    for i, seq in enumerate(real):
        assert torch.equal(seen["x"][i, : len(seq)], model.embed(seq))
        _, alone = torch.nn.RNN.forward(model.rnn, model.embed(seq)[None])  # the row run alone over its real tokens
        torch.testing.assert_close(h[i], alone[0, 0], rtol=1e-12, atol=1e-12)


def test_unmasked_runs_read_the_pads_and_train_the_pad_embedding():
    spec = seq_spec("float64", model=RNN_MODEL, sequence={"pad": "pre", "mask": False})
    rec, npz = run_in_process("torch", spec)
    assert not np.array_equal(npz["init/embed.weight"][0], npz["final/embed.weight"][0])  # no padding_idx
    masked, npz_masked = run_in_process("torch", seq_spec("float64", model=RNN_MODEL, sequence={"pad": "pre"}))
    assert np.array_equal(npz_masked["init/embed.weight"][0], npz_masked["final/embed.weight"][0])  # never read
    assert [s["loss"] for s in rec["steps"]] != [s["loss"] for s in masked["steps"]]


def test_compiled_execution_agrees_with_oracle():
    spec = seq_spec(
        "float64",
        model=RNN_MODEL,
        sequence={"pad": "pre", "buckets": [4, 10]},
        batching={"last_batch": "pad"},
        execution="compiled",
        train={"epochs": 1},
    )
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    cmp = compare_with_oracle("torch", spec)
    assert divergences(cmp) == []
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # Dynamo graphs ran, not plain eager


def test_native_mode_is_reproducible_and_trains_both_rnn_biases():
    spec = seq_spec(
        "float64", mode="native", model=RNN_MODEL, regularization={"dropout": 0.3}, sequence={"loss_norm": "per_token"}
    )
    a, _ = run_in_process("torch", spec)
    b, _ = run_in_process("torch", spec)
    assert [s["loss"] for s in a["steps"]] == [s["loss"] for s in b["steps"]]
    assert all(np.isfinite(s["loss"]) for s in a["steps"])
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    adapter.prepare(
        spec, data, BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths), model_layers(spec, data), None
    )
    rnn = adapter.model.rnn
    assert rnn.bias_hh_l0.requires_grad and rnn.bias_hh_l0.any()  # the user's nn.RNN: two trainable biases
    optimized = {id(p) for g in adapter.optimizer.opt.param_groups for p in g["params"]}
    assert id(rnn.bias_hh_l0) in optimized
    exported = adapter.parameters()["rnn.bias"]
    assert np.allclose(exported, (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy(), rtol=0, atol=0)
