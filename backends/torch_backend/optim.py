"""torch.optim built from common.regularization.Regularization (docs/design.md, "Optimisers", "Regularisation").

The optimizer sees the model's trainable parameters under their canonical names (model.trainable; the exact-mode
frozen nn.RNN bias_hh is left out). Exact mode (`TorchOptimizer`), two parameter groups, regularized or not:
- coupled c (= 2·l2 + coupled wd) → the group's `weight_decay=c` of `SGD` / `Adam` (grad += c·w);
- decoupled d → `AdamW(weight_decay=d)`; torch has no decoupled SGD, so AdamW's line `p.mul_(1 − lr·d)` is applied
  to the regularized group just before `SGD.step()`. The coupled part then rides as the loss term (c/2)·Σw², whose
  gradient is taken at the pre-update weights as the canonical rule says;
- L1: the loss term Σ_t f_t·Σ|w_t| (autograd's |x|′(0) = 0, the canonical sign(0) = 0).
Penalty terms enter the backward pass only. `capturable=True` keeps Adam's step count on the device (CUDA graphs,
compiled on CUDA); `fused=True` (the hand-fused reference) selects torch.optim's single-kernel implementation.
Native mode (`NativeTorchOptimizer`, common.native's torch column): one group, the spec's numbers as written —
`weight_decay=λ` (λ = common.native.l2_as_written, biases included), `AdamW(weight_decay=wd)` with an l2 beside it
written into the loss as l2·Σw², decoupled wd under SGD folded into SGD's one coupled knob, L1 as a loss term.
"""

from __future__ import annotations

import torch

from backends.torch_backend.model import Stack, trainable
from common.native import l2_as_written
from common.regularization import Regularization
from common.spec import Spec


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

    def __init__(self, spec: Spec, model: Stack, capturable: bool = False, fused: bool | None = None):
        o = spec.optimizer
        self.reg = reg = Regularization.from_spec(spec)
        self.lr = o.lr
        named = trainable(model)
        self.regularized = [(n, p) for n, p in named if reg.applies(n)]
        plain = [p for n, p in named if not reg.applies(n)]
        decoupled = reg.decoupled > 0.0
        native_wd = reg.decoupled if o.name == "adamw" else (0.0 if decoupled else reg.coupled)
        self.loss_l2 = reg.coupled if decoupled else 0.0  # c carried as a loss term (see module docstring)
        self.sgd_decay = reg.decoupled if o.name == "sgd" else 0.0
        groups = [
            g
            for g in (
                {"params": [p for _, p in self.regularized], "weight_decay": native_wd},
                {"params": plain, "weight_decay": 0.0},
            )
            if g["params"]
        ]
        if o.name == "sgd":
            self.opt = torch.optim.SGD(groups, lr=self.lr, momentum=o.momentum, nesterov=o.nesterov, fused=fused)
        else:
            cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
            self.opt = cls(groups, lr=self.lr, betas=(o.beta1, o.beta2), eps=o.eps, capturable=capturable, fused=fused)
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
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }

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

    def __init__(self, spec: Spec, model: Stack, capturable: bool = False):
        o, r = spec.optimizer, spec.regularization
        self.reg = Regularization.from_spec(spec)
        named = trainable(model)
        self.regularized = [(n, p) for n, p in named if self.reg.applies(n)]
        params = [p for _, p in named]
        decoupled = r.weight_decay if r.decay == "decoupled" else 0.0
        self.loss_l2 = 0.0
        if o.name == "adamw":
            self.opt = torch.optim.AdamW(
                params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=decoupled, capturable=capturable
            )
            self.loss_l2 = r.l2
        elif o.name == "adam":
            self.opt = torch.optim.Adam(
                params,
                lr=o.lr,
                betas=(o.beta1, o.beta2),
                eps=o.eps,
                weight_decay=l2_as_written(spec),
                capturable=capturable,
            )
        else:
            self.opt = torch.optim.SGD(
                params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=l2_as_written(spec) + decoupled
            )

    def penalty(self) -> torch.Tensor | float:
        """The hand-written loss terms: L1 as the spec says, and l2·Σw² next to AdamW."""
        return penalty_terms(self.regularized, self.reg, self.loss_l2)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.opt.step()
