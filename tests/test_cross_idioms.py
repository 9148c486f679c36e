"""One deterministic idiom at a time (docs/design.md, "Idioms"): exact mode with `native.idioms = [id]` moves exactly
the frameworks the idiom changes for that spec (common.idioms `affects`), from the step it predicts, and no other
backend leaves the oracle.

A step's recorded loss is taken before its update, so an update that differs first at step s shows at step s + 1;
a forward pass that differs shows at step 1. Idioms that change only what evaluation reads (a BatchNorm's running
statistics) leave every step loss equal and part the test metrics ("eval"); `fit_epoch_loss` changes only the
reported epoch train loss ("train_loss"). The predictions are derived by hand from the spec (8 optimizer steps an
epoch: 120 iris training rows in batches of 16) and the idiom's rule. `bn_fast_variance` is not here: flax's
E[x²] − μ² differs from the two-pass variance by rounding only at these inputs in float64 (its trap measures
|μ|/σ = 1e4). Each framework trains every case in one worker process. Needs torch, tensorflow and jax together
(tox -e parity).
"""

import pytest

from backends import FRAMEWORKS
from common.compare import compare
from common.idioms import IDIOMS
from common.tolerance import tolerance_for
from tests.support import make_spec, needs_all_frameworks, run_in_process, worker_records

pytestmark = [pytest.mark.cross, needs_all_frameworks]

_BASE = {"dtype": "float64", "batching": {"batch_size": 16}, "train": {"epochs": 3}}
# SGD + momentum, l2 (coupled), an L1 mean, a global clip active at step 1 (gradient norm 1.0 > 0.5), a step
# schedule halving lr after 8 steps: lr(0) = 0.1, so every update from the first one moves the weights.
_SGD = {
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "clip_norm": 0.5},
    "regularization": {"l2": 0.01, "l1": 0.001},
    "schedule": {"kind": "step", "step_size": 8, "gamma": 0.5},
}
_ADAM = {"optimizer": {"name": "adam", "lr": 0.01}}
_COSINE = {
    "optimizer": {"name": "sgd", "lr": 0.1},
    "schedule": {"kind": "cosine", "decay_steps": 12, "final_lr": 0.001},
}
_WARMUP = {
    "optimizer": {"name": "sgd", "lr": 0.1},
    "schedule": {"kind": "warmup_cosine", "warmup_steps": 4, "decay_steps": 12, "final_lr": 0.001},
}
_CNN = {  # digits images, 180 training rows: a stride-2 'same' conv (pads 0/1 by TF's rule, 1/1 by torch's k // 2),
    # batch_norm with the spec's defaults (momentum 0.9, eps 1e-5, biased), a 'same' avg_pool with padded windows
    "data": {"name": "digits", "images": True, "test_fraction": 0.9},
    "model": {
        "layers": [
            {"kind": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
            {"kind": "batch_norm"},
            {"kind": "relu"},
            {"kind": "avg_pool", "size": 3, "stride": 2, "padding": "same"},
            {"kind": "flatten"},
            {"kind": "dense", "units": 10},
        ]
    },
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batching": {"batch_size": 32},
    "train": {"epochs": 2},
}
_LAYER_NORM = {  # layer_norm with the spec's ε = model.norm_eps = 1e-5 (torch's default)
    "model": {"layers": [{"kind": "dense", "units": 8}, {"kind": "layer_norm"}, {"kind": "relu"}, {"kind": "dense"}]},
    "optimizer": {"name": "sgd", "lr": 0.1},
}
_RNN = {
    "data": {"name": "sequences"},
    "model": {"kind": "rnn", "hidden": [8]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2},
}
_REPLICAS = {  # two replicas of 8 rows each step, a global clip active at step 1
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "clip_norm": 0.5},
    "distributed": {"replicas": 2},
    "train": {"epochs": 2},
}
_MOMENTUM = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
_ZERO_BIASES = {  # glorot_uniform starts every bias at 0, where JAX's |x|′ is +1 and sign(0) is 0
    "model": {"init": "glorot_uniform"},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "regularization": {"l1": 0.01, "regularize_bias": True},
}

# idiom → (spec sections, {framework: first divergent step}); frameworks not listed must stay equal to the oracle.
CASES = {
    # torch SGD(weight_decay = l2) and optax add_decayed_weights(l2): gradient l2·w, not 2·l2·w; Keras L2(l2) is
    # the canonical 2·l2·w (no coupled wd here). Update 1 differs.
    "l2_as_written": (_SGD, {"torch": 2, "jax": 2}),
    # torch's one parameter group decays the biases by the coupled knob; Keras's regularizers and optax's mask
    # still follow regularize_bias for coupled decay.
    "bias_decay": (_SGD, {"torch": 2}),
    # Keras L1(l1) is the sum form: f = l1, not l1/size.
    "keras_l1_sum": (_SGD, {"tf": 2}),
    # torch clip_grad_norm_: c/(n + 1e-6), active at step 1.
    "clip_epsilon": (_SGD, {"torch": 2}),
    # the coupled l2 term left out of the clip (torch weight_decay, optax chain order); Keras's L2 is in the loss.
    "clip_before_decay": (_SGD, {"torch": 2, "jax": 2}),
    # Keras clipnorm clips each variable by its own norm at step 1 (global norm 1.0, largest tensor 0.89).
    "keras_clipnorm_per_variable": (_SGD, {"tf": 2}),
    # Keras m = μm − lr·g against torch's b = μb + g: apart once lr changes, at update 9 (t = 8, lr 0.1 → 0.05).
    "keras_sgd_momentum": (_SGD, {"tf": 10}),
    # scheduler.step() first: update t + 1 uses lr(t + 1); lr(7) = 0.1 but lr(8) = 0.05, so update 8 differs.
    "scheduler_step_first": (_SGD, {"torch": 9}),
    # stepped per epoch: update t + 1 uses lr(epoch) = 0.1 for epochs 0-2, while lr(8) = 0.05: update 9 differs.
    "per_epoch_schedule": (_SGD, {"torch": 10}),
    # Keras's default ε = 1e-7 in the ε-hat form: update 1 differs (first-step relative error ~0.2 on ε's term).
    "keras_adam_eps": (_ADAM, {"tf": 2}),
    # CosineAnnealingLR past T_max = 12: lr(13) climbs while the canonical lr stays at final_lr: update 14.
    "torch_cosine_annealing": (_COSINE, {"torch": 15}),
    # optax's cosine over decay_steps − W = 8 steps from t = 4: lr(4) is the peak in both, lr(5) differs: update 6.
    "optax_warmup_decay_steps": (_WARMUP, {"jax": 7}),
    # JAX's |x|′(0) = +1 on the zero biases: update 1 differs.
    "abs_subgradient": (_ZERO_BIASES, {"jax": 2}),
    # Keras and flax keep momentum 0.99 where the spec says 0.9 (torch's default): the running statistics only.
    "bn_momentum": (_CNN, {"tf": "eval", "jax": "eval"}),
    # Keras's ε = 1e-3 (torch and flax default to the spec's 1e-5): the training forward pass, step 1.
    "bn_eps": (_CNN, {"tf": 1}),
    # torch keeps the unbiased running variance where the spec says biased: the running statistics only.
    "bn_running_var": (_CNN, {"torch": "eval"}),
    # torch flattens NCHW: the dense layer reads the canonical weights in another order, step 1.
    "flatten_order": (_CNN, {"torch": 1}),
    # torch's padding = k // 2 shifts the stride-2 windows by a pixel, step 1.
    "same_padding": (_CNN, {"torch": 1}),
    # torch and flax divide a padded window by k², step 1.
    "avg_pool_count": (_CNN, {"torch": 1, "jax": 1}),
    # Keras's ε = 1e-3 and flax's 1e-6 against the spec's 1e-5 (torch's), step 1.
    "layer_norm_eps": (_LAYER_NORM, {"tf": 1, "jax": 1}),
    # torch's nn.RNN trains a second bias, bias_hh, drawn by torch's own init: step 1.
    "rnn_two_biases": (_RNN, {"torch": 1}),
    # Keras's Adam squares an embedding's sparse gradient per occurrence: update 1 differs.
    "sparse_embedding_adam": (_RNN, {"tf": 2}),
    # Keras clips each replica's gradient before the all-reduce, at step 1: update 1 differs.
    "keras_clip_per_replica": (_REPLICAS, {"tf": 2}),
    # μ = 0.9 through float32 (0.89999998) in Keras; optax keeps a constant lr and μ in float64. The first update
    # reads no μ (b₁ = g), the second does: step 3.
    "float32_hyper": (_MOMENTUM, {"tf": 3}),
    # the running mean of the step losses as the epoch's train loss, in every framework (the oracle evaluates).
    "fit_epoch_loss": (_MOMENTUM, {"torch": "train_loss", "tf": "train_loss", "jax": "train_loss"}),
}


def _spec(idiom: str):
    sections = {**_BASE, **CASES[idiom][0]}
    return make_spec(**sections, native={"idioms": [idiom]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idioms")
    jobs = {(idiom,): _spec(idiom) for idiom in CASES}
    by_backend = {backend: worker_records(backend, jobs, folder / backend) for backend in FRAMEWORKS}
    return {idiom: {backend: by_backend[backend][(idiom,)] for backend in FRAMEWORKS} for idiom in CASES}


def _found(comparison: dict, backend: str) -> int | str | None:
    """The first divergent step loss; else "eval" when the test loss parts, "train_loss" when only the epoch train
    loss does; None when the backend stays with the oracle."""
    apart = {
        p["metric"]: p["first_divergent_step"]
        for p in comparison["pairs"]
        if p["a"] == "numpy" and p["b"] == backend and p["divergent"]
    }
    if "loss" in apart:
        return apart["loss"]
    if "test_loss" in apart:
        return "eval"
    return "train_loss" if set(apart) == {"train_loss"} else (None if not apart else sorted(apart)[0])


@pytest.mark.parametrize("idiom", CASES)
def test_one_idiom_moves_its_frameworks_from_the_predicted_step(idiom, runs):
    oracle = run_in_process("numpy", _spec(idiom))
    comparison = compare({"numpy": oracle, **runs[idiom]}, "numpy", tolerance_for("float64", "exact"))
    found = {backend: _found(comparison, backend) for backend in FRAMEWORKS}
    expected = {backend: CASES[idiom][1].get(backend) for backend in FRAMEWORKS}
    assert found == expected
    spec = _spec(idiom)
    assert {b for b, step in expected.items() if step} == set(IDIOMS[idiom].affects(spec))
    for backend in FRAMEWORKS:
        assert runs[idiom][backend][0]["idioms"] == [idiom]
