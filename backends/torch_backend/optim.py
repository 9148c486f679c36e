"""torch.optim built from common.regularization.Regularization (the conversions are decided there; DESIGN §5).

The optimizer sees the trainable parameters only, under their canonical names (`trainable_named`): the MLP's own
names, a sequence model's `canonical_named_parameters()` (nn.RNN's weight_ih_l0 is `rnn.input.weight`, …; the
exact-mode frozen bias_hh_l0 is left out, so no decay or step ever touches it).

Two parameter groups, regularized (`Regularization.applies`) and not, so that weight decay never touches the
biases unless `regularize_bias`:
- coupled c (= 2·l2 + coupled wd) → the group's native `weight_decay=c` of `SGD` / `Adam` (grad += c·w);
- decoupled d under adamw → `AdamW(weight_decay=d)`. torch has no decoupled SGD, so for SGD AdamW's own line
  `p.mul_(1 − lr·d)` is applied to the regularized group just before `SGD.step()`;
- when decoupled decay is on, the coupled part (from l2) cannot ride in `weight_decay`: AdamW has no coupled slot,
  and SGD's would read the weights after the decoupled line shrank them. It becomes the loss term (c/2)·Σw²,
  whose gradient c·w is taken at the pre-update weights, as the canonical rule says;
- L1 has no torch mechanism: the loss term Σ_t f_t·Σ|w_t| (f_t = `Regularization.l1_coefficient`); autograd
  differentiates |w| at 0 to 0, the canonical sign(0) = 0.
Penalty terms enter the backward pass only; the recorded loss stays the cross-entropy.

Implementation knobs, the same update up to rounding: `capturable=True` (the adapter's fused mode) keeps
Adam/AdamW's step count on the device so that the step can be captured in a CUDA graph (SGD needs none);
`fused=True` (the hand-fused reference loop) selects torch.optim's single-kernel implementation.

Native mode (`NativeTorchOptimizer`, common.native's torch column) converts nothing; it is what a user porting the
spec by hand writes, with every parameter passed to the optimizer in one group:
- coupled: `SGD/Adam(model.parameters(), weight_decay=λ)`, λ = `common.native.l2_as_written` (gradient λ·w, half the
  spec's 2·l2·w: the "L2 is weight_decay" trap), and, like any torch weight_decay, biases included;
- decoupled under adamw: `AdamW(model.parameters(), weight_decay=wd)`, biases included. AdamW has no coupled slot,
  so an l2 next to it is written into the loss as the spec says, l2·Σw² over the regularized tensors;
- decoupled under sgd: torch has no decoupled SGD, so the one knob a user has takes it, coupled:
  `SGD(weight_decay=λ + wd)` (the same update without momentum, a different one with it);
- L1: the loss term Σ_t f_t·Σ|w_t| as the spec says (mean or sum, biases per regularize_bias), autograd's |x|'(0) = 0;
- Adam / AdamW ε: the spec's eps.
"""

from __future__ import annotations

import torch
from torch import nn

from common.native import l2_as_written
from common.regularization import Regularization


def trainable_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(canonical name, parameter) of the parameters the optimizer updates: a model's own
    `canonical_named_parameters()` when it has one (sequence models: canonical names for nn.RNN's tensors, frozen
    parameters such as the exact-mode bias_hh left out), else `named_parameters()` (the MLP's names are canonical)."""
    if hasattr(model, "canonical_named_parameters"):
        return list(model.canonical_named_parameters())
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def penalty_terms(named: list, reg, l2_factor: float) -> torch.Tensor | float:
    """Σ_t f_t·Σ|w_t| + l2_factor·Σ_t Σw_t² over the regularized (name, tensor) pairs; f_t from common."""
    total = 0.0
    for name, p in named:
        f = reg.l1_coefficient(name, p.numel())
        if f:
            total = total + f * p.abs().sum()
        if l2_factor:
            total = total + l2_factor * p.square().sum()
    return total

class TorchOptimizer:
    """A torch.optim optimizer plus the penalty terms and the pre-step decoupled decay torch lacks natively."""

    def __init__(self, spec: dict, model: nn.Module, capturable: bool = False, fused: bool | None = None):
        o = spec["optimizer"]
        self.reg = reg = Regularization.from_spec(spec)
        self.lr = o["lr"]
        named = trainable_named(model)
        self.regularized = [(n, p) for n, p in named if reg.applies(n)]
        plain = [p for n, p in named if not reg.applies(n)]
        decoupled = reg.decoupled > 0.0
        native_wd = reg.decoupled if o["name"] == "adamw" else (0.0 if decoupled else reg.coupled)
        self.loss_l2 = reg.coupled if decoupled else 0.0  # c carried as a loss term (see module docstring)
        self.sgd_decay = reg.decoupled if o["name"] == "sgd" else 0.0
        groups = [g for g in ({"params": [p for _, p in self.regularized], "weight_decay": native_wd},
                              {"params": plain, "weight_decay": 0.0}) if g["params"]]
        if o["name"] == "sgd":
            self.opt = torch.optim.SGD(groups, lr=self.lr, momentum=o["momentum"], nesterov=o["nesterov"], fused=fused)
        else:
            cls = torch.optim.Adam if o["name"] == "adam" else torch.optim.AdamW
            self.opt = cls(groups, lr=self.lr, betas=(o["beta1"], o["beta2"]), eps=o["eps"], capturable=capturable,
                           fused=fused)
            if not fused:
                self._float64_step_count(capturable)

    def _float64_step_count(self, capturable: bool) -> None:
        """Adam/AdamW state created up front, as torch.optim creates it lazily, but with a float64 step count.

        Eager torch reads the count as a Python float (`.item()`) and forms 1 − β^t in double precision. Under
        torch.compile, and with `capturable=True` (CUDA graphs), it stays a tensor, which torch makes float32
        unless the default dtype is float64: 1 − β2^t at t = 2 is then off by ~3e-5 relative, a divergence from
        step 2 on even in float64. A float64 count keeps every execution mode on the eager arithmetic.
        """
        for group in self.opt.param_groups:
            for p in group["params"]:
                self.opt.state[p] = {
                    "step": torch.zeros((), dtype=torch.float64, device=p.device if capturable else "cpu"),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def penalty(self) -> torch.Tensor | float:
        """The loss terms for what torch.optim cannot express: L1, and (c/2)·Σw² under decoupled decay."""
        return penalty_terms(self.regularized, self.reg, self.loss_l2 / 2.0)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        """Decoupled decay for SGD (AdamW's line, before the step), then the native optimizer step."""
        if self.sgd_decay:
            for _, p in self.regularized:
                p.mul_(1.0 - self.lr * self.sgd_decay)
        self.opt.step()


class NativeTorchOptimizer:
    """Native mode: torch.optim as a user writes it (see the module docstring); same interface as TorchOptimizer."""

    def __init__(self, spec: dict, model: nn.Module, capturable: bool = False):
        o, r = spec["optimizer"], spec["regularization"]
        self.reg = Regularization.from_spec(spec)
        named = trainable_named(model)
        self.regularized = [(n, p) for n, p in named if self.reg.applies(n)]
        params = [p for _, p in named]
        decoupled = r["weight_decay"] if r["decay"] == "decoupled" else 0.0
        self.loss_l2 = 0.0
        if o["name"] == "adamw":
            self.opt = torch.optim.AdamW(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                                         weight_decay=decoupled, capturable=capturable)
            self.loss_l2 = r["l2"]
        elif o["name"] == "adam":
            self.opt = torch.optim.Adam(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                                        weight_decay=l2_as_written(spec), capturable=capturable)
        else:
            self.opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                                       weight_decay=l2_as_written(spec) + decoupled)

    def penalty(self) -> torch.Tensor | float:
        """The hand-written loss terms: L1 as the spec says, and l2·Σw² next to AdamW."""
        return penalty_terms(self.regularized, self.reg, self.loss_l2)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.opt.step()
