"""PyTorch's side of the trap catalogue (common.traps): one probe per trap torch takes part in.

Each probe MEASURES what the installed torch does and returns a JSON-able dict; `tests/test_conformance.py`
compares it with `common.traps.TRAPS[id].expected["torch"]` and `parity conformance` builds the matrix from it.
Probes leave global state as they found it: RNG use goes through `torch.random.fork_rng`, and the TF32 defaults
are read in a fresh interpreter (the adapter switches TF32 off on CUDA).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from common import traps as T


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
}
