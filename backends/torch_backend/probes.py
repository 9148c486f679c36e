"""PyTorch's side of the trap catalogue (common.traps): one probe per trap torch takes part in.

Each probe MEASURES what the installed torch does and returns a JSON-able dict; `tests/test_conformance.py`
compares it with `common.traps.TRAPS[id].expected["torch"]` and `parity conformance` builds the matrix from it.
Probes leave global state as they found it: RNG use goes through `torch.random.fork_rng`, the TF32 defaults
are read in a fresh interpreter (the adapter switches TF32 off on CUDA), and the BatchNorm-under-DDP probes bring up
a 1-rank gloo process group (FileStore in a fresh temporary directory) that they destroy again.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from common import schedules
from common import traps as T
from common.traps.inputs import (
    ACCUMULATE,
    ACCUMULATOR,
    AVG_POOL_SAME,
    BN_EPS_INPUT,
    BN_INPUT,
    BN_MOMENTUM,
    BN_REPLICAS,
    BN_SPLIT,
    CLIP_BOUNDARY,
    CLIP_DECAY,
    CLIP_SCOPE,
    CONV_KERNEL,
    CONV_SAME,
    FLATTEN_HWC,
    LAYOUT,
    PER_EPOCH,
    POOL_DEFAULT,
    SAMPLER,
    SCHEDULE,
    SCHEDULE_FLOAT32,
    STEP_FIRST,
    bn_large_mean_input,
    conv_ramp,
)
from common.traps.reference import (
    accumulation_measurement,
    batch_norm_reference,
    clip_boundary_norm,
    clip_decay_order,
    clip_factor,
    clip_scope,
    conv2d_reference,
    named_match,
    pool_reference,
    schedule_table,
    split_statistics_name,
    window_pads,
)


def versions() -> dict[str, str]:
    return {"torch": torch.__version__}


def _fresh(code: str) -> dict:
    """Run `code` (which prints one JSON line) in a fresh interpreter: defaults untouched by this process."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _linear(*args, **kwargs) -> nn.Linear:
    """nn.Linear built without consuming the caller's global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        return nn.Linear(*args, **kwargs)


def shuffle_order() -> dict:
    """torch.randperm(N) from a Generator seeded with SEED."""
    return {"order": torch.randperm(T.ORDER_N, generator=torch.Generator().manual_seed(T.SEED)).tolist()}


def dataloader_global_rng() -> dict:
    """How many int64 draws of the global torch RNG one DataLoader epoch consumes (shuffle=False, no workers).

    The global stream after 2 epochs is matched against k manual `random_()` draws, k = 0..6; draws/epoch = k/2.
    """

    def marker_after(consume) -> float:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(T.SEED)
            consume()
            return torch.rand(1).item()

    def epochs(generator=None):
        loader = DataLoader(list(range(4)), batch_size=2, shuffle=False, generator=generator)
        return lambda: [list(loader) for _ in range(2)]

    def draws(k):
        return lambda: [torch.empty((), dtype=torch.int64).random_() for _ in range(k)]

    refs = [marker_after(draws(k)) for k in range(7)]
    per_epoch = [refs.index(marker_after(e)) // 2 for e in (epochs(), epochs(torch.Generator().manual_seed(1)))]
    return {"draws_per_epoch": per_epoch[0], "draws_per_epoch_own_generator": per_epoch[1]}


def repeat_batch_epochs() -> dict:
    """Two epochs of DataLoader(range(5), batch_size=3): batches never cross the epoch boundary."""
    loader = DataLoader(list(range(T.ORDER_N_SMALL)), batch_size=3, shuffle=False)
    return {"batches": [b.tolist() for _ in range(2) for b in loader]}


def ragged_recompile() -> dict:
    """torch.compile (a counting backend, no inductor) over batch sizes 4, 4, 2, 3: number of graph compiles."""
    import torch._dynamo

    count = [0]

    def backend(gm, example_inputs):
        count[0] += 1
        return gm.forward

    def step(x):
        return (x * x).sum()

    compiled = torch.compile(step, backend=backend)
    for n in (4, 4, 2, 3):
        compiled(torch.ones(n, 3))
    torch._dynamo.reset()
    return {"compiles": count[0]}


def torch_pad_sequence() -> dict:
    """pad_sequence on SEQUENCES: default layout (T×B) and batch_first."""
    from torch.nn.utils.rnn import pad_sequence

    seqs = [torch.tensor(s) for s in T.SEQUENCES]
    return {"default": pad_sequence(seqs).tolist(), "batch_first": pad_sequence(seqs, batch_first=True).tolist()}


def masked_mean_loss() -> dict:
    """F.cross_entropy with ignore_index on the masked rows: partial and all-ignored."""
    z = torch.from_numpy(T.LOSS_LOGITS)
    y = torch.from_numpy(T.MASK_LABELS)
    per_row = F.cross_entropy(z, y, reduction="none").numpy()
    ignored = torch.where(torch.from_numpy(T.LOSS_MASK) > 0, y, torch.full_like(y, -100))
    value = F.cross_entropy(z, ignored, ignore_index=-100)
    everything = F.cross_entropy(z, torch.full_like(y, -100), ignore_index=-100)
    return {
        "reduction": T.classify_reduction(value.item(), per_row, T.LOSS_MASK),
        "all_masked": T.finite_or_name(everything.item()),
    }


def sample_weight_reduction() -> dict:
    """torch has no sample_weight; CrossEntropyLoss(weight=class weights (1, 1, 0)) gives row weights LOSS_MASK."""
    z = torch.from_numpy(T.LOSS_LOGITS)
    y = torch.from_numpy(T.WEIGHT_LABELS)
    per_row = F.cross_entropy(z, y, reduction="none").numpy()
    value = F.cross_entropy(z, y, weight=torch.tensor([1.0, 1.0, 0.0]))
    return {"default": T.classify_reduction(value.item(), per_row, T.LOSS_MASK)}


def dropout_scale() -> dict:
    """F.dropout on float32 inputs at each of DROPOUT_RATES: the kept values' scaling rule."""
    x = T.dropout_input()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(T.SEED)
        outputs = {p: F.dropout(torch.from_numpy(x), p).numpy() for p in T.DROPOUT_RATES}
    return T.classify_dropout(x, outputs)


def _mode(fn, x) -> str:
    return "active" if not torch.equal(fn(x), x) else "inactive"


def dropout_default_mode() -> dict:
    """F.dropout without `training` and a fresh nn.Dropout module (train mode by default)."""
    x = torch.ones(1000)
    with torch.random.fork_rng(devices=[]):
        return {"default_call": _mode(lambda v: F.dropout(v, 0.5), x), "nn.Dropout": _mode(nn.Dropout(0.5), x)}


def _outcome(fn) -> str:
    try:
        out = fn()
    except Exception as exc:  # the outcome is the exception's type
        return type(exc).__name__
    return "zeros" if not out.any() else "nonzero"


def dropout_rate_one() -> dict:
    x = torch.ones(8)
    return {"layer": _outcome(lambda: nn.Dropout(1.0)(x)), "functional": _outcome(lambda: F.dropout(x, 1.0))}


def l2_vs_weight_decay() -> dict:
    """SGD(lr, weight_decay=λ) on a zero loss gradient: the step's gradient divided by λ·w."""
    lam, lr = 0.25, 0.5
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr, weight_decay=lam)
    w.grad = torch.zeros_like(w)
    before = w.detach().clone()
    opt.step()
    grad = (before - w.detach()) / lr
    return {"grad_per_lambda": float((grad / (lam * before)).mean())}


def penalty_in_loss() -> dict:
    """The loss SGD(weight_decay).step(closure) reports equals the plain criterion (no penalty added)."""
    model = _linear(3, 3, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, weight_decay=0.5)
    z = torch.from_numpy(T.LOSS_LOGITS).double()
    y = torch.from_numpy(T.MASK_LABELS)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(z), y)
        loss.backward()
        return loss

    reported = opt.step(closure).item()
    plain = F.cross_entropy(model(z), y).item()
    penalty = 0.5 / 2 * sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    return {
        "reported_loss_includes_penalty": bool(abs(reported - (plain + penalty)) < abs(reported - plain)),
        "penalty": penalty,
    }


def optimizer_weight_decay() -> dict:
    """SGD(momentum, weight_decay) on a Linear's weight and bias, zero loss gradient, DECAY's steps."""
    d = T.DECAY
    layer = _linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.fill_(d["w0"])
        layer.bias.fill_(d["w0"])
    opt = torch.optim.SGD(layer.parameters(), lr=d["lr"], momentum=d["momentum"], weight_decay=d["wd"])
    for _ in range(d["steps"]):
        for p in layer.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    return {
        "sgd_has_weight_decay": True,
        "kernel": T.classify_decay(layer.weight.item()),
        "bias": T.classify_decay(layer.bias.item()),
    }


def _adam_run(make_opt, dtype=torch.float64) -> list[float]:
    p = T.ADAM
    w = torch.tensor(p["w0"], dtype=dtype, requires_grad=True)
    a, b = torch.tensor(p["a"], dtype=dtype), torch.tensor(p["b"], dtype=dtype)
    opt = make_opt([w])
    for _ in range(p["steps"]):
        w.grad = (a * w + b).detach()
        opt.step()
    return w.detach().tolist()


def adam_weight_decay_equivalence() -> dict:
    """Adam(weight_decay) and AdamW on g = a·w + b: float64 end points (checked), float32 ones beside them."""
    p = T.ADAM
    kw = dict(lr=p["lr"], betas=(p["b1"], p["b2"]), eps=p["eps"], weight_decay=p["wd"])
    out = {}
    for suffix, dtype in (("", torch.float64), ("_f32", torch.float32)):
        out["adam_coupled" + suffix] = _adam_run(lambda ps: torch.optim.Adam(ps, **kw), dtype)
        out["adamw" + suffix] = _adam_run(lambda ps: torch.optim.AdamW(ps, **kw), dtype)
    return out


def abs_subgradient() -> dict:
    x = torch.zeros((), dtype=torch.float64, requires_grad=True)
    torch.abs(x).backward()
    return {"grad_abs_at_0": x.grad.item()}


def adam_eps_default() -> dict:
    return {"eps": torch.optim.Adam([torch.zeros(1, requires_grad=True)]).defaults["eps"]}


def keras_epsilon_hat() -> dict:
    """torch Adam(eps=1e-8)'s first update vs common.optim's formula: max relative error."""
    p = T.EPS_HAT
    w = torch.zeros(len(p["grad"]), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=p["lr"], betas=(p["b1"], p["b2"]), eps=p["eps"])
    w.grad = torch.tensor(p["grad"], dtype=torch.float64)
    opt.step()
    return {"eps_1e-8": T.rel_diff(w.detach().numpy(), T.adam_first_update_reference())}


def sgd_momentum_schedule() -> dict:
    """SGD(momentum) under a constant gradient; the lr changes (param_groups) before step `change_at`."""
    m = T.MOMENTUM
    out = {}
    for key, change in (("constant_lr", False), ("lr_changed", True)):
        w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=m["lr"], momentum=m["momentum"])
        for t in range(1, m["steps"] + 1):
            if change and t == m["change_at"]:
                opt.param_groups[0]["lr"] = m["lr_after"]
            w.grad = torch.full_like(w, m["grad"])
            opt.step()
        out[key] = w.item()
    return out


def default_init() -> dict:
    """nn.Linear(fan_in, fan_out)'s default init: weight std and max|w|, max|b|, each · √fan_in."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(T.SEED)
        layer = nn.Linear(T.INIT_FAN_IN, T.INIT_FAN_OUT)
    w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    r = np.sqrt(T.INIT_FAN_IN)
    return {
        "weight_std": float(w.std() * r),
        "weight_max": float(np.abs(w).max() * r),
        "bias_max": float(np.abs(b).max() * r),
    }


def weight_layout() -> dict:
    return {"weight_shape": list(_linear(3, 2).weight.shape)}


def loss_input_defaults() -> dict:
    """F.cross_entropy reads its input as logits; a zero-probability label (logit −inf) costs inf."""
    read = F.cross_entropy(torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64), torch.tensor([2])).item()
    zero = F.cross_entropy(torch.tensor([[-float("inf"), 0.0, -float("inf")]]), torch.tensor([0])).item()
    return {"input": T.classify_loss_input(read), "zero_prob_loss": T.finite_or_name(zero)}


def float64_conversion() -> dict:
    return {"dtype": str(torch.as_tensor(np.zeros(2)).dtype).replace("torch.", "")}


def tf32_defaults() -> dict:
    """The TF32 switches of a fresh interpreter (the torch adapter changes them on CUDA)."""
    return _fresh(
        "import json, torch\n"
        "print(json.dumps({'matmul_tf32': torch.backends.cuda.matmul.allow_tf32,"
        " 'cudnn_tf32': torch.backends.cudnn.allow_tf32,"
        " 'float32_matmul_precision': torch.get_float32_matmul_precision(),"
        " 'cuda_available': torch.cuda.is_available()}))"
    )


def last_batch_default() -> dict:
    loader = DataLoader(list(range(10)), batch_size=4)
    return {"keeps_partial": [len(b) for b in loader] == [4, 4, 2]}


def _probe_rnn():
    torch.manual_seed(T.SEED)
    return torch.nn.RNN(1, T.RNN_WIDTH, batch_first=True)


def rnn_padded_outputs() -> dict:
    """nn.RNN over RNN_INPUT packed with its real length, unpacked back to 3 steps."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    packed = pack_padded_sequence(torch.tensor(T.RNN_INPUT), torch.tensor([2]), batch_first=True)
    out, _ = pad_packed_sequence(_probe_rnn()(packed)[0], batch_first=True, total_length=3)
    return {"padded_output": T.classify_padded_output(out.detach().numpy())}


def pack_padded_pre() -> dict:
    """h_n of the pre-padded row packed with length 2, against h_n of its two real steps."""
    from torch.nn.utils.rnn import pack_padded_sequence

    rnn = _probe_rnn()
    _, pre = rnn(pack_padded_sequence(torch.tensor(T.RNN_INPUT_PRE), torch.tensor([2]), batch_first=True))
    _, real = rnn(torch.tensor(T.RNN_INPUT)[:, :2])
    return {"pre_padded_equals_real": bool(torch.allclose(pre, real))}


def rnn_bias_vectors() -> dict:
    """Bias tensors of nn.RNN, and how far one SGD step moves the effective bias b_ih + b_hh, in units of
    lr·∂L/∂b (both biases receive the full gradient)."""
    rnn = _probe_rnn().double()
    biases = [p for n, p in rnn.named_parameters() if "bias" in n]
    before = sum(b.detach().clone() for b in biases)
    out, _ = rnn(torch.tensor(T.RNN_INPUT, dtype=torch.float64))
    out.sum().backward()
    lr = 0.5
    torch.optim.SGD(rnn.parameters(), lr=lr).step()
    after = sum(b.detach() for b in biases)
    step = ((before - after) / (lr * biases[0].grad)).mean().item()
    return {"bias_vectors": len(biases), "effective_bias_step": step}


def sparse_embedding_adam() -> dict:
    """nn.Embedding (default dense gradient) + Adam: v of row 0 after one step of Σ c_k·E[token_k]."""
    embed = torch.nn.Embedding(2, 1, dtype=torch.float64)
    optimizer = torch.optim.Adam(embed.parameters(), lr=0.1)
    (embed(torch.tensor(T.EMBED_TOKENS))[:, 0] * torch.tensor(T.EMBED_COEF, dtype=torch.float64)).sum().backward()
    optimizer.step()
    return {"second_moment": T.classify_second_moment(optimizer.state[embed.weight]["exp_avg_sq"][0, 0].item())}


def layer_norm_eps() -> dict:
    """nn.LayerNorm's default eps, read from the layer, and ε and the variance recovered from its float64 output
    on LAYER_NORM_INPUT (T.classify_layer_norm; γ = 1, β = 0 at construction, no RNG drawn); "explicit_eps": ε
    recovered from nn.LayerNorm(eps=NORM_EPS), the conversion."""

    def run(**kwargs):
        layer = nn.LayerNorm(T.LAYER_NORM_INPUT.shape[1], dtype=torch.float64, **kwargs)
        with torch.no_grad():
            return layer, T.classify_layer_norm(layer(torch.from_numpy(T.LAYER_NORM_INPUT)).numpy())

    layer, measured = run()
    return {"eps": float(layer.eps), **measured, "explicit_eps": run(eps=T.NORM_EPS)[1]["measured_eps"]}


# ------------------------------------------------------------------------------------- images and BatchNorm
def _nchw(image: np.ndarray) -> torch.Tensor:
    """One (H, W) float64 image as a (1, 1, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, np.float64))[None, None]


def _raised(fn) -> str | None:
    """ "raises: <ExceptionClass>" when fn() raises, else None."""
    try:
        fn()
    except Exception as exc:  # the outcome is the exception's type
        return f"raises: {type(exc).__name__}"
    return None


def conv_same_stride2() -> dict:
    """The pads a port's nn.Conv2d(padding=1) reaches at stride 2 (window_pads against the numpy conv), its
    output size, whether padding='same' accepts stride 2, and the exact-mode form F.pad(TF's pads) + padding=0."""
    p = CONV_SAME
    n, k, s = p["n"], p["kernel"], p["stride"]
    x = conv_ramp(n)

    def pads_of(conv, pre=lambda t: t):
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(CONV_KERNEL)[None, None])
            y = conv(pre(_nchw(x)))[0, 0].numpy()
        return window_pads(y, lambda pads: conv2d_reference(x, CONV_KERNEL, s, pads), k), y.shape[0]

    def conv(padding):
        with torch.random.fork_rng(devices=[]):  # the init draws from the global RNG
            return nn.Conv2d(1, 1, k, stride=s, padding=padding, bias=False, dtype=torch.float64)

    pads, size = pads_of(conv(1))
    exact, _ = pads_of(conv(0), lambda t: F.pad(t, (0, 1, 0, 1)))
    return {
        "pads": pads,
        "out_size": size,
        "declared_padding": 1,
        "same_at_stride_2": _raised(lambda: conv("same")) or "accepted",
        "exact_pads": exact,
    }


def flatten_order() -> dict:
    """nn.Flatten() after the NHWC → NCHW permute a port makes: the NHWC flat index of each output position;
    "exact": permuting back to NHWC before flattening (exact mode's order)."""
    x = torch.arange(int(np.prod(FLATTEN_HWC))).reshape(1, *FLATTEN_HWC)
    nchw = x.permute(0, 3, 1, 2)
    return {"order": nn.Flatten()(nchw)[0].tolist(), "exact": nchw.permute(0, 2, 3, 1).flatten(1)[0].tolist()}


def _bn(**kwargs) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(BN_INPUT.shape[1], dtype=torch.float64, **kwargs)


def _running(layer, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training forward of `layer` on x: (output, running_mean, running_var)."""
    layer.train()
    with torch.no_grad():
        y = layer(torch.from_numpy(np.asarray(x, np.float64)))
    return y.numpy(), layer.running_mean.numpy().copy(), layer.running_var.numpy().copy()


def bn_momentum_convention() -> dict:
    """The fraction of the batch mean entering running_mean (from 0) in one training step: with the default
    momentum and with momentum=BN_MOMENTUM."""
    mu = BN_INPUT.mean(axis=0)
    layer = _bn()
    default = _running(layer, BN_INPUT)[1] / mu
    at = _running(_bn(momentum=BN_MOMENTUM), BN_INPUT)[1] / mu
    return {
        "default_momentum": float(layer.momentum),
        "default_fraction": float(default.mean()),
        "fraction_at_0.9": float(at.mean()),
    }


def bn_eps_default() -> dict:
    """nn.BatchNorm1d's default eps, read from the layer, and ε and the variance recovered from its float64
    training output on BN_EPS_INPUT (columns [0, d]; T.classify_layer_norm on the transpose; γ = 1, β = 0);
    "explicit_eps": ε recovered from nn.BatchNorm1d(eps=NORM_EPS)."""

    def run(**kwargs):
        layer = nn.BatchNorm1d(BN_EPS_INPUT.shape[1], dtype=torch.float64, **kwargs)
        return layer, T.classify_layer_norm(_running(layer, BN_EPS_INPUT)[0].T)

    layer, measured = run()
    return {"eps": float(layer.eps), **measured, "explicit_eps": run(eps=T.NORM_EPS)[1]["measured_eps"]}


def bn_running_var() -> dict:
    """momentum=1.0 (running_var ← the batch's estimate) on BN_INPUT's n rows: running_var / biased batch
    variance, and which variance the training output was normalised with (batch_norm_reference, ddof 0 or 1)."""
    layer = _bn(momentum=1.0)
    y, _, var = _running(layer, BN_INPUT)
    n = BN_INPUT.shape[0]
    factor = float((var / BN_INPUT.var(axis=0)).mean())
    refs = {name: batch_norm_reference(BN_INPUT, layer.eps, ddof) for name, ddof in (("biased", 0), ("unbiased", 1))}
    return {
        "n": n,
        "running_var_factor": factor,
        "estimator": named_match(factor, {"biased": 1.0, "unbiased": n / (n - 1)}),
        "normalisation": named_match(y, refs),
    }


def bn_batch_of_one() -> dict:
    """A training step of BatchNorm1d on one row (B = 1, F features); the error text; and BatchNorm2d on one
    2×2 image (4 values per channel)."""
    layer = _bn()
    message = ""
    try:
        _running(layer, BN_INPUT[:1])
        outcome = "returns"
    except ValueError as exc:
        outcome, message = f"raises: {type(exc).__name__}", str(exc)
    image = nn.BatchNorm2d(2, dtype=torch.float64)
    return {
        "outcome": outcome,
        "message_names_rule": message.startswith("Expected more than 1 value per channel when training"),
        "conv_batch_of_one": _raised(lambda: image(torch.ones(1, 2, 2, 2, dtype=torch.float64))) or "returns",
    }


def bn_fast_variance() -> dict:
    """The float32 batch variance of data with |μ|/σ = 1e4 (bn_large_mean_input), read from running_var with
    momentum=1.0 (unbiased, rescaled by (n − 1)/n), against the float64 two-pass variance of the same values."""
    x = bn_large_mean_input()
    layer = nn.BatchNorm1d(x.shape[1], momentum=1.0)
    with torch.no_grad():
        layer(torch.from_numpy(x))
    n = x.shape[0]
    var = layer.running_var.numpy().astype(np.float64) * (n - 1) / n
    exact = x.astype(np.float64).var(axis=0)
    error = float(np.max(np.abs(var - exact) / exact))
    return {"rel_error": error, "error_large": error > 1e-3}


def avg_pool_same_count() -> dict:
    """nn.AvgPool2d(3, 1, padding=1) (TF's "same" pads here) on a ones image: the corner and edge values, the
    count_include_pad default, and the corner with count_include_pad=False (right for this symmetric pad only;
    exact mode divides by each window's real-pixel count itself, since TF's odd pad has no symmetric form)."""
    p = AVG_POOL_SAME
    ones = _nchw(np.ones((p["n"], p["n"])))
    layer = nn.AvgPool2d(p["size"], p["stride"], padding=p["size"] // 2)
    y = layer(ones)[0, 0]
    exact = nn.AvgPool2d(p["size"], p["stride"], padding=p["size"] // 2, count_include_pad=False)(ones)[0, 0]
    return {
        "corner": float(y[0, 0]),
        "edge": float(y[0, 1]),
        "count_include_pad": bool(layer.count_include_pad),
        "corner_count_include_pad_false": float(exact[0, 0]),
    }


def default_layout() -> dict:
    """nn.Conv2d(C, F, k): which input layout it accepts (NCHW or NHWC, every axis a different size), its weight
    shape, and the padding its default gives ("valid": H − k + 1; "same": H)."""
    p = LAYOUT
    c, h, w = p["channels"], p["height"], p["width"]
    with torch.random.fork_rng(devices=[]):
        conv = nn.Conv2d(c, p["filters"], p["kernel"])
    shapes = {"NCHW": (1, c, h, w), "NHWC": (1, h, w, c)}
    accepted = [name for name, shape in shapes.items() if not _raised(lambda shape=shape: conv(torch.zeros(shape)))]
    out = conv(torch.zeros(1, c, h, w)).shape
    return {
        "layout": " ".join(accepted) or "none",
        "kernel_shape": list(conv.weight.shape),
        "default_padding": "same" if out[2] == h else "valid" if out[2] == h - p["kernel"] + 1 else "other",
    }


def max_pool_same_padding() -> dict:
    """nn.MaxPool2d(3, 2, padding=1) (a port's "same") on the ramp: the pads its windows reach (pool_reference
    with −∞ pads), output size, the corner of a −1 image (a pad never wins), and padding=2 (> kernel/2)."""
    p = CONV_SAME
    n, k, s = p["n"], p["kernel"], p["stride"]
    x = conv_ramp(n)
    y = nn.MaxPool2d(k, s, padding=1)(_nchw(x))[0, 0].numpy()
    negative = nn.MaxPool2d(k, s, padding=1)(_nchw(-np.ones((n, n))))[0, 0]
    return {
        "pads": window_pads(y, lambda pads: pool_reference(x, k, s, pads, "max"), k),
        "out_size": y.shape[0],
        "negative_corner": float(negative[0, 0]),
        "padding_2": _raised(lambda: nn.MaxPool2d(k, s, padding=2)(_nchw(x))) or "accepted",
    }


def pool_default_stride() -> dict:
    """nn.MaxPool2d(size) without a stride on an n×n image: output size and the stride it implies."""
    p = POOL_DEFAULT
    layer = nn.MaxPool2d(p["size"])
    m = layer(_nchw(conv_ramp(p["n"]))).shape[-1]
    return {"out_size": m, "default_stride": (p["n"] - p["size"]) // (m - 1), "stride_attribute": layer.stride}


def bn_masked_statistics() -> dict:
    """torch's BatchNorm has no mask argument: a padded batch's filler rows must be left out by the caller."""
    return {"mask_argument": "mask" in inspect.signature(nn.BatchNorm1d.forward).parameters}


def bn_statistics_dtype() -> dict:
    """The dtype of the running statistics of BatchNorm1d(dtype=float64)."""
    return {"stats_dtype": str(_bn().running_var.dtype).replace("torch.", "")}


# ------------------------------------------------------------------------- data parallelism and accumulation
def _sampler(replicas: int, rank: int, **kwargs) -> DistributedSampler:
    """A DistributedSampler over SAMPLER's n rows, num_replicas and rank given (no process group needed)."""
    return DistributedSampler(list(range(SAMPLER["n"])), num_replicas=replicas, rank=rank, **kwargs)


def sampler_padding() -> dict:
    """DistributedSampler(shuffle=False) over n rows and R ranks: each rank's indices, the rows fed in all, which
    rows are fed more than once and the stride of a rank's indices; with drop_last=True the total and the ids no
    rank gets. Every fed row counts (a sampler has no weights)."""
    n, r = SAMPLER["n"], SAMPLER["replicas"]

    def ranks(**kwargs):
        return [list(_sampler(r, rank, shuffle=False, **kwargs)) for rank in range(r)]

    per_rank, dropped = ranks(), ranks(drop_last=True)
    fed = [i for ids in per_rank for i in ids]
    kept = {i for ids in dropped for i in ids}
    return {
        "per_rank": per_rank,
        "total": len(fed),
        "counted": len(fed),
        "repeated_ids": sorted({i for i in fed if fed.count(i) > 1}),
        "stride": per_rank[0][1] - per_rank[0][0],
        "drop_last_total": sum(len(ids) for ids in dropped),
        "drop_last_missing": sorted(set(range(n)) - kept),
    }


def sampler_same_order() -> dict:
    """One rank's order over two epochs of DistributedSampler(shuffle=True, seed=SEED), without and with
    set_epoch(e), and whether the set_epoch orders are torch.randperm(n) from a Generator seeded seed + epoch,
    strided by rank."""
    n, r, rank = SAMPLER["n"], SAMPLER["order_replicas"], SAMPLER["rank"]

    def epochs(set_epoch: bool) -> list[list[int]]:
        sampler, orders = _sampler(r, rank, shuffle=True, seed=T.SEED), []
        for epoch in range(2):
            if set_epoch:
                sampler.set_epoch(epoch)
            orders.append(list(sampler))
        return orders

    plain, reseeded = epochs(False), epochs(True)
    seed_plus_epoch = [
        torch.randperm(n, generator=torch.Generator().manual_seed(T.SEED + e)).tolist()[rank::r] for e in range(2)
    ]
    return {
        "without_set_epoch": plain,
        "with_set_epoch": reseeded,
        "same_order_each_epoch": plain[0] == plain[1],
        "set_epoch_same_order": reseeded[0] == reseeded[1],
        "set_epoch_seeds_seed_plus_epoch": reseeded == seed_plus_epoch,
    }


def mean_of_means() -> dict:
    """The common accumulation loop on a bias-free nn.Linear(1, 1) from w = 0, per-row loss ℓ = w·x: for each of
    ACCUMULATE's K micro-batches (loss.mean() / K).backward(), then one SGD(lr) step; beside it one step on all
    rows at once (the global mean, the single-device step); the update named by accumulated_updates."""
    lr, micro = ACCUMULATE["lr"], ACCUMULATE["micro"]

    def step(batches, divide_by: int) -> float:
        model = _linear(1, 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            model.weight.zero_()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for x in batches:
            (model(torch.tensor(x, dtype=torch.float64)[:, None]).mean() / divide_by).backward()
        opt.step()
        return model.weight.item()

    update, global_mean = step(micro, len(micro)), step([[v for m in micro for v in m]], 1)
    return accumulation_measurement([update], global_mean)  # one step after the loop: applied at "call" 1


def accumulator_dtype() -> dict:
    """The loop's accumulator for float64 gradients: w.grad summed by autograd over ACCUMULATOR's K backward passes
    of (g·w / K) (the loss/K loop on ∇ = g); its dtype and relative error against Σg/K in float64."""
    grads = np.asarray(ACCUMULATOR["grads"], np.float64)
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    for g in grads:
        (w * g / len(grads)).sum().backward()
    mean = float(np.mean(grads))
    return {
        "accumulator_dtype": str(w.grad.dtype).replace("torch.", ""),
        "rel_error": abs(w.grad.item() - mean) / mean,
    }


# ------------------------------------------------------------------------------ BatchNorm under split steps
@contextlib.contextmanager
def _one_rank_group():
    """A 1-rank gloo process group in this process (a FileStore in a fresh temporary directory), destroyed after;
    refuses to run over a group someone else brought up."""
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialised in this process")
    tmp = tempfile.mkdtemp(prefix="parity-probe-")
    try:
        dist.init_process_group("gloo", store=dist.FileStore(os.path.join(tmp, "store"), 1), rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replica_rows(r: int) -> torch.Tensor:
    """Replica r's c rows of BN_SPLIT (float64, CPU)."""
    return torch.from_numpy(BN_SPLIT.reshape(BN_REPLICAS, -1, BN_SPLIT.shape[1])[r].copy())


def sync_batchnorm_cpu() -> dict:
    """nn.SyncBatchNorm in training on a CPU tensor (replica 0's rows of BN_SPLIT, float64): without a process
    group (its output against F.batch_norm of the local rows), under a 1-rank gloo group (the outcome, and whether
    the error names the GPU), DDP of a CPU module holding one, and torch.batch_norm_stats on CPU (the kernel
    SyncBatchNorm's synchronised path calls)."""
    x = _replica_rows(0)
    layer = nn.SyncBatchNorm(x.shape[1], dtype=torch.float64).train()
    local = F.batch_norm(x, None, None, training=True, eps=layer.eps)
    outputs = []
    with torch.no_grad():
        alone = _raised(lambda: outputs.append(layer(x)))
    message = ""
    with _one_rank_group():
        try:
            with torch.no_grad():
                layer(x)
            grouped = "runs"
        except ValueError as exc:
            grouped, message = f"raises: {type(exc).__name__}", str(exc)
        ddp = _raised(lambda: DistributedDataParallel(nn.SyncBatchNorm(x.shape[1], dtype=torch.float64)))
    return {
        "device": str(x.device),
        "cpu_training": grouped,
        "message_names_gpu": "expected input tensor to be on GPU" in message,
        "no_group": alone or "runs",
        "no_group_equals_local_batch_norm": bool(outputs and torch.equal(outputs[0], local)),
        "ddp_cpu_module": ddp or "accepted",
        "batch_norm_stats_cpu": _raised(lambda: torch.batch_norm_stats(x, layer.eps)) or "runs",
    }


def bn_jit_global_batch() -> dict:
    """What each DDP process's plain BatchNorm normalises with: nn.BatchNorm1d(momentum=1.0) in training on replica
    0's rows of BN_SPLIT only (running_mean ← the batch mean; the unbiased running_var rescaled by (c − 1)/c), named
    by split_statistics_name: torch has no step that sees the global batch unless SyncBatchNorm all-reduces."""
    x = _replica_rows(0)
    _, mean, var = _running(_bn(momentum=1.0), x.numpy())
    c = x.shape[0]
    return {
        "running_mean": mean.tolist(),
        "statistics": split_statistics_name(mean, var * (c - 1) / c, replica_0="per_replica"),
    }


def bn_replica_stats() -> dict:
    """Which replica's buffers DDP keeps: the installed DistributedDataParallel signature's broadcast_buffers (and,
    where present, forward_sync_buffers) defaults; under a 1-rank gloo group, a default DDP(BatchNorm1d): whether it
    syncs its buffers before each forward, and the source rank of the broadcasts two forward calls make."""
    params = inspect.signature(DistributedDataParallel).parameters

    def default(name):
        return params[name].default if name in params else "absent"

    sources: list[int] = []
    with _one_rank_group():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ddp = DistributedDataParallel(_bn())
        broadcast = getattr(ddp, "_distributed_broadcast_coalesced", None)
        if broadcast is not None:

            def recording(tensors, buffer_size, authoritative_rank=0):
                sources.append(int(authoritative_rank))
                return broadcast(tensors, buffer_size, authoritative_rank)

            ddp._distributed_broadcast_coalesced = recording
        for _ in range(2):
            ddp(_replica_rows(0))
        syncs = bool(ddp.will_sync_module_buffers())
    first = syncs and sources == [0, 0]
    return {
        "broadcast_buffers_default": default("broadcast_buffers"),
        "forward_sync_buffers_default": default("forward_sync_buffers"),
        "effective_broadcast_buffers": bool(ddp.broadcast_buffers),
        "syncs_buffers_before_forward": syncs,
        "broadcast_sources": sources,
        "kept": "first_replica" if first else "each_replica" if not syncs else "other",
    }


# --------------------------------------------------------------------- gradient clipping and learning-rate schedules
def _grads(values: dict) -> dict[str, torch.Tensor]:
    """float64 parameters (zeros) whose .grad holds `values` (name → list)."""
    params = {}
    for name, v in values.items():
        p = torch.zeros(len(v), dtype=torch.float64, requires_grad=True)
        p.grad = torch.tensor(v, dtype=torch.float64)
        params[name] = p
    return params


def _clipped(values: dict, max_norm: float) -> dict[str, list[float]]:
    """The gradients after torch.nn.utils.clip_grad_norm_(params, max_norm)."""
    params = _grads(values)
    torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
    return {k: p.grad.tolist() for k, p in params.items()}


def clip_epsilon() -> dict:
    """clip_grad_norm_'s factor on CLIP_BOUNDARY (global norm n = 5) at max_norm = n and n/2: g'/g, exact (powers
    of 2); "exact_form_at_c": get_total_norm and a clamp(c/n, max=1) multiply, exact mode's conversion."""
    grads = {k: CLIP_BOUNDARY[k] for k in ("a", "b")}
    n = clip_boundary_norm()
    params = _grads(grads)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params.values()])
    torch._foreach_mul_([p.grad for p in params.values()], torch.clamp(n / norm, max=1.0))
    return {
        "factor_at_c": clip_factor(_clipped(grads, n), grads),
        "factor_at_2c": clip_factor(_clipped(grads, n / 2), grads),
        "exact_form_at_c": clip_factor({k: p.grad.tolist() for k, p in params.items()}, grads),
    }


def keras_clipnorm_per_variable() -> dict:
    """clip_grad_norm_(params, c) on CLIP_SCOPE's two tensors: the scope of the clip (reference.clip_scope) and the
    clipped values."""
    clipped = _clipped({k: CLIP_SCOPE[k] for k in ("a", "b")}, CLIP_SCOPE["c"])
    return {"scope": clip_scope(clipped["a"], clipped["b"]), **clipped}


def clip_before_decay() -> dict:
    """CLIP_DECAY's SGD step: clip_grad_norm_ on the data gradient, then SGD(weight_decay=λ) (a port's loop), and
    exact mode's: λw added to .grad (the loss term's gradient), clipped by get_total_norm and a clamp(c/n, max=1)
    multiply, then SGD without weight_decay. Δw of each, and its order (reference.clip_decay_order)."""
    p = CLIP_DECAY

    def step(decay_in_grad: bool) -> list[float]:
        w = torch.tensor(p["w"], dtype=torch.float64, requires_grad=True)
        w.grad = torch.tensor(p["grad"], dtype=torch.float64)
        if decay_in_grad:  # exact mode: the loss term's gradient, and the clip without ε
            w.grad += p["wd"] * w.detach()
            norm = torch.nn.utils.get_total_norm([w.grad])
            torch._foreach_mul_([w.grad], torch.clamp(p["c"] / norm, max=1.0))
        else:
            torch.nn.utils.clip_grad_norm_([w], p["c"])
        opt = torch.optim.SGD([w], lr=p["lr"], weight_decay=0.0 if decay_in_grad else p["wd"])
        opt.step()
        return (w.detach() - torch.tensor(p["w"], dtype=torch.float64)).tolist()

    native, in_grad = step(False), step(True)
    return {
        "update": native,
        "order": clip_decay_order(native),
        "loss_term_update": in_grad,
        "loss_term_order": clip_decay_order(in_grad),
    }


def _used_lrs(make_scheduler, steps: int, base: float, step_first: bool = False, per_epoch: int = 0) -> list[float]:
    """The lr each of `steps` SGD steps used (g = 1 from w = 0, w reset after each step: Δw = −lr exactly), the
    scheduler stepped after each optimizer step, before it (`step_first`), or every `per_epoch` optimizer steps."""
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=base)
    scheduler = make_scheduler(opt)
    used = []
    for t in range(steps):
        if step_first:
            scheduler.step()
        w.grad = torch.ones_like(w)
        opt.step()
        used.append(-w.item())
        with torch.no_grad():
            w.zero_()
        if not step_first and (not per_epoch or (t + 1) % per_epoch == 0):
            scheduler.step()
    return used


def cosine_annealing_period() -> dict:
    """CosineAnnealingLR(T_max = D, eta_min = f): the lr SGD used at t = 0, D, 1.5·D, 2·D (read back from the
    steps, scheduler.step() after optimizer.step()); "lambda_lr": exact mode's LambdaLR over common.schedules.lr."""
    s = SCHEDULE
    table = schedule_table("cosine", decay_steps=s["decay_steps"], final_lr=s["final_lr"])
    last = max(s["cosine_at"]) + 1
    annealing = _used_lrs(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s["decay_steps"], eta_min=s["final_lr"]),
        last,
        s["lr"],
    )
    exact = _used_lrs(
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedules.lr(table, s["lr"], t) / s["lr"]),
        last,
        s["lr"],
    )
    return {"lr": [annealing[t] for t in s["cosine_at"]], "lambda_lr": [exact[t] for t in s["cosine_at"]]}


def scheduler_step_first() -> dict:
    """StepLR(step_size = 1, γ = 1/2): the lrs of STEP_FIRST's steps with scheduler.step() before
    optimizer.step() and after it; the start of the UserWarning the first order emits (up to its first period)."""
    p = STEP_FIRST

    def make(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=p["step_size"], gamma=p["gamma"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _used_lrs(make, p["steps"], p["lr"], step_first=True)
    after = _used_lrs(make, p["steps"], p["lr"])
    texts = [str(c.message) for c in caught if issubclass(c.category, UserWarning)]
    return {
        "step_first": first,
        "step_after": after,
        "warning": texts[0].split(". ")[0] if texts else None,
        "warnings": len(texts),
    }


def per_epoch_schedule() -> dict:
    """StepLR(step_size = 2, γ = 1/2) over PER_EPOCH's epochs of 3 optimizer steps: the lrs the steps used with
    scheduler.step() once per epoch (the tutorial loop) and once per optimizer step."""
    p = PER_EPOCH
    steps = p["steps_per_epoch"] * p["epochs"]

    def make(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=p["step_size"], gamma=p["gamma"])

    return {
        "lrs": _used_lrs(make, steps, p["lr"], per_epoch=p["steps_per_epoch"]),
        "per_step_lrs": _used_lrs(make, steps, p["lr"]),
    }


def schedule_float32() -> dict:
    """ExponentialLR(γ)'s lr with a Python-float lr₀ = 0.1: the scheduler's value at t = 0 and its type (torch's
    schedulers keep Python floats: float64), and the lr the first SGD step on a float64 parameter used."""
    p = SCHEDULE_FLOAT32
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=p["lr"])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=p["decay_rate"])
    lr = scheduler.get_last_lr()[0]
    used = _used_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=p["decay_rate"]), 1, p["lr"])[0]
    return {"lr": lr, "dtype": type(lr).__name__, "sgd_lr": used}


PROBES = {
    "sparse_embedding_adam": sparse_embedding_adam,
    "rnn_padded_outputs": rnn_padded_outputs,
    "pack_padded_pre": pack_padded_pre,
    "rnn_bias_vectors": rnn_bias_vectors,
    "shuffle_order": shuffle_order,
    "dataloader_global_rng": dataloader_global_rng,
    "repeat_batch_epochs": repeat_batch_epochs,
    "ragged_recompile": ragged_recompile,
    "torch_pad_sequence": torch_pad_sequence,
    "masked_mean_loss": masked_mean_loss,
    "sample_weight_reduction": sample_weight_reduction,
    "dropout_scale": dropout_scale,
    "dropout_default_mode": dropout_default_mode,
    "dropout_rate_one": dropout_rate_one,
    "l2_vs_weight_decay": l2_vs_weight_decay,
    "penalty_in_loss": penalty_in_loss,
    "optimizer_weight_decay": optimizer_weight_decay,
    "adam_weight_decay_equivalence": adam_weight_decay_equivalence,
    "abs_subgradient": abs_subgradient,
    "adam_eps_default": adam_eps_default,
    "keras_epsilon_hat": keras_epsilon_hat,
    "sgd_momentum_schedule": sgd_momentum_schedule,
    "default_init": default_init,
    "weight_layout": weight_layout,
    "loss_input_defaults": loss_input_defaults,
    "float64_conversion": float64_conversion,
    "tf32_defaults": tf32_defaults,
    "last_batch_default": last_batch_default,
    "layer_norm_eps": layer_norm_eps,
    "conv_same_stride2": conv_same_stride2,
    "flatten_order": flatten_order,
    "bn_momentum_convention": bn_momentum_convention,
    "bn_eps_default": bn_eps_default,
    "bn_running_var": bn_running_var,
    "bn_batch_of_one": bn_batch_of_one,
    "bn_fast_variance": bn_fast_variance,
    "avg_pool_same_count": avg_pool_same_count,
    "default_layout": default_layout,
    "max_pool_same_padding": max_pool_same_padding,
    "pool_default_stride": pool_default_stride,
    "bn_masked_statistics": bn_masked_statistics,
    "bn_statistics_dtype": bn_statistics_dtype,
    "sampler_padding": sampler_padding,
    "sampler_same_order": sampler_same_order,
    "mean_of_means": mean_of_means,
    "accumulator_dtype": accumulator_dtype,
    "sync_batchnorm_cpu": sync_batchnorm_cpu,
    "bn_jit_global_batch": bn_jit_global_batch,
    "bn_replica_stats": bn_replica_stats,
    "clip_epsilon": clip_epsilon,
    "keras_clipnorm_per_variable": keras_clipnorm_per_variable,
    "clip_before_decay": clip_before_decay,
    "cosine_annealing_period": cosine_annealing_period,
    "scheduler_step_first": scheduler_step_first,
    "per_epoch_schedule": per_epoch_schedule,
    "schedule_float32": schedule_float32,
}
