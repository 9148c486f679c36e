"""torch.optim built from common.regularization.Regularization, with gradient clipping and an LRScheduler
(docs/design.md, "Optimisers", "Regularisation", "Gradient clipping", "Learning-rate schedules").

The optimizer sees the model's trainable parameters under their canonical names (model.trainable; the exact-mode
frozen nn.RNN bias_hh is left out), in two parameter groups: the decayed tensors and the rest, or one group of all
of them in stack order when both would have weight_decay 0 and no decoupled SGD line needs the decayed group
(what a port writes: `SGD(model.parameters(), ...)`; the per-tensor update is the same). One construction
path; the idioms (common.idioms) only choose coefficients, masks and where a term sits:
- which tensors are decayed: common.regularization's (`applies`); `bias_decay` on: every trainable tensor (one
  knob over `model.parameters()`, as a port writes it);
- the coupled coefficient c: canonical 2·l2 + coupled wd; `l2_as_written` on: λ = l2 + coupled wd
  (common.native.l2_as_written), and under SGD a decoupled wd folded into that one knob (no decoupled step);
- where c sits: the group's `weight_decay=c` of `SGD` / `Adam` (grad += c·w inside step), or the loss term
  (c/2)·Σw² (gradient taken at the pre-update weights, in p.grad) when something must come between the gradient
  and the step: the SGD decoupled line below, or clipping (the clipped gradient is the regularized one);
  `clip_before_decay` on: c stays in `weight_decay` under clipping (not clipped, as a torch port's knob);
- decoupled d → `AdamW(weight_decay=d)`; torch has no decoupled SGD, so AdamW's line `p.mul_(1 − lr_t·d)` (lr_t the
  group's current lr) is applied to the decayed group just before `SGD.step()`;
- AdamW's coupled part (2·l2, an l2 beside decoupled decay) is always a loss term, l2·Σw² over the regularized
  tensors, as a port writes it; L1 is the loss term Σ_t f_t·Σ|w_t| (autograd's |x|′(0) = 0, the canonical
  sign(0) = 0). Penalty terms enter the backward pass only (`with_penalty`: the loss itself when there are none, no
  `+ 0.0` op).
Clipping (common.clipping), in `step()` after the backward passes (after DDP's all-reduce and the accumulation),
before the decoupled line and `optimizer.step()`: n = `torch.nn.utils.get_total_norm` of the grads (global) or
each grad's norm (per_tensor), the grads times clamp(c/n, max=1) with `torch._foreach_mul_` (no ε; n = 0 → 1);
`clip_epsilon` on: `clip_grad_norm_(params, c)` (per_tensor: a loop of `clip_grad_norm_([p], c)`), ε = 1e-6.
Schedules (common.schedules): `LambdaLR(lambda t: lr(t)/lr₀)`, stepped once after each `optimizer.step()`
(`event`), so the (t + 1)-th step uses lr(t). Idioms: `torch_cosine_annealing` → `CosineAnnealingLR(T_max = D,
eta_min = final_lr)` (warmup_cosine: `SequentialLR([LinearLR(start_factor = s, total_iters = W),
CosineAnnealingLR], milestones = [W])`, s = common.schedules.TORCH_WARMUP_START since torch refuses 0; the lr is
common.schedules.cosine_annealing's); `scheduler_step_first` → scheduler.step()
before optimizer.step(); `per_epoch_schedule` → once per epoch (at its end, or its start with step_first).
A scheduled lr is a float64 0-d tensor on the parameters' device, so that torch.compile's and a CUDA graph's step
read the current value without recompiling (a Python float is a constant there); the scheduler `fill_`s it. A CUDA
graph of SGD then takes `fused=True` (foreach SGD would `.item()` the tensor lr inside the capture).
`capturable=True` keeps Adam's step count on the device (CUDA graphs, compiled on CUDA); `fused=True` selects
torch.optim's single-kernel SGD (`fused_supported`: the device has one); Adam and AdamW keep their multi-tensor
implementation and its float64 step count (`_float64_step_count`), which the fused kernels do not take.
"""

from __future__ import annotations

import torch
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from backends.torch_backend.model import Stack, trainable
from common import schedules
from common.idioms import on
from common.native import l2_as_written
from common.regularization import Regularization
from common.spec import Spec


def fused_supported(device: torch.device) -> bool:
    """Whether torch.optim has single-kernel (`fused=True`) optimizers for `device`'s type."""
    return device.type in _get_fused_kernels_supported_devices()


class TorchOptimizer:
    """A torch.optim optimizer, its LRScheduler, the penalty terms and what torch.optim lacks (module docstring)."""

    def __init__(self, spec: Spec, model: Stack, capturable: bool = False, fused: bool = False, graph: bool = False):
        o, s = spec.optimizer, spec.schedule
        self.spec, self.reg = spec, (reg := Regularization.from_spec(spec))
        named = trainable(model)
        self.params = [p for _, p in named]
        self.regularized = [(n, p) for n, p in named if reg.applies(n)]
        decayed = [p for n, p in named if on(spec, "bias_decay") or reg.applies(n)]
        rest = [p for p in self.params if all(p is not q for q in decayed)]
        self.clip_norm, self.per_tensor, self.clip_eps = o.clip_norm, o.clip == "per_tensor", on(spec, "clip_epsilon")
        sgd, adamw = o.name == "sgd", o.name == "adamw"
        as_written = on(spec, "l2_as_written") and not adamw
        coupled = l2_as_written(spec) + (reg.decoupled if sgd else 0.0) if as_written else reg.coupled
        self.sgd_decay = reg.decoupled if sgd and not as_written else 0.0
        clip_coupled = self.clip_norm > 0.0 and not on(spec, "clip_before_decay")
        in_loss = adamw or self.sgd_decay > 0.0 or clip_coupled
        knob = reg.decoupled if adamw else (0.0 if in_loss else coupled)
        # the loss terms: (name, tensor, h) for h·Σw² beside the L1 of `name` (AdamW's l2 over the regularized
        # tensors; a coupled c moved out of weight_decay over the decayed ones), the tensors with a nonzero term
        squares = {id(p): reg.coupled / 2.0 for _, p in self.regularized} if adamw else {}
        if in_loss and not adamw:
            squares = {id(p): coupled / 2.0 for p in decayed}
        self.penalized = [
            (n, p, half) for n, p in named if (half := squares.get(id(p), 0.0)) or reg.l1_coefficient(n, p.numel())
        ]
        self.scheduled = s.kind != "constant"
        lr = o.lr
        if self.scheduled:  # read by compiled / captured steps as a tensor (module docstring)
            lr = torch.tensor(o.lr, dtype=torch.float64, device=self.params[0].device if capturable else "cpu")
        split = [(decayed, knob), (rest, 0.0)] if knob or self.sgd_decay else [(self.params, 0.0)]
        groups = [  # a tensor lr of its own per group (one shared tensor aliased by both trips torch.compile)
            {"params": params, "weight_decay": wd, "lr": lr.clone() if torch.is_tensor(lr) else lr}
            for params, wd in split
            if params
        ]
        if sgd:
            fused = fused or (graph and self.scheduled)
            self.opt = torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov, fused=fused or None)
            if o.momentum:  # created up front: torch.compile of SGD's lazy creation fails with a tensor lr and two
                # groups (dynamo's SpeculationLogDivergence); μ·0 + g = g, the first step is unchanged
                for p in self.params:
                    self.opt.state[p] = {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}
        else:
            cls = torch.optim.AdamW if adamw else torch.optim.Adam
            self.opt = cls(groups, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, capturable=capturable)
            self._float64_step_count(capturable)
        self.fused = bool(self.opt.defaults.get("fused"))  # torch.optim's single-kernel step
        self.decayed_group = self.opt.param_groups[0] if decayed and len(split) == 2 else None
        self.scheduler = self._scheduler(o.lr) if self.scheduled else None
        every = "epoch" if on(spec, "per_epoch_schedule") else "step"
        self.schedule_at = f"{'before' if on(spec, 'scheduler_step_first') else 'after'}_{every}"

    def _scheduler(self, base: float) -> torch.optim.lr_scheduler.LRScheduler:
        """LambdaLR over common.schedules.lr, or the CosineAnnealingLR a port writes (`torch_cosine_annealing`)."""
        s, opt = self.spec.schedule, self.opt
        if on(self.spec, "torch_cosine_annealing") and s.kind in ("cosine", "warmup_cosine"):
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.decay_steps, eta_min=s.final_lr)
            if s.kind == "cosine":
                return cosine
            warmup = torch.optim.lr_scheduler.LinearLR(
                opt, start_factor=schedules.TORCH_WARMUP_START, total_iters=s.warmup_steps
            )
            return torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[s.warmup_steps])
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedules.lr(s, base, t) / base)

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
        """The loss terms for what torch.optim cannot express: Σ_t f_t·Σ|w_t| and the h·Σw² of `penalized`."""
        total = 0.0
        for name, p, half in self.penalized:
            f = self.reg.l1_coefficient(name, p.numel())
            if f:
                total = total + f * p.abs().sum()
            if half:
                total = total + half * p.square().sum()
        return total

    def with_penalty(self, loss: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """loss + scale · `penalty()`; `loss` itself when no penalty term exists (no op added to the graph)."""
        if not self.penalized:
            return loss
        return loss + self.penalty() * scale

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def event(self, when: str) -> None:
        """Step the scheduler if it is stepped at `when` ("before_step", "after_step", "before_epoch",
        "after_epoch"); the execution mode calls the step events around each optimizer step, the adapter the
        epoch events."""
        if self.scheduler is not None and when == self.schedule_at:
            self.scheduler.step()

    @torch.no_grad()
    def clip(self) -> None:
        """Scale the gradients by min(1, c/n) (common.clipping), or torch's clip_grad_norm_ (`clip_epsilon`)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        c, per_tensor = self.clip_norm, self.per_tensor
        if self.clip_eps:
            for group in [[p] for p in self.params] if per_tensor else [self.params]:
                torch.nn.utils.clip_grad_norm_(group, c)
            return
        if per_tensor:
            for g, n in zip(grads, torch._foreach_norm(grads), strict=True):
                g.mul_(torch.clamp(c / n, max=1.0))
        else:
            torch._foreach_mul_(grads, torch.clamp(c / torch.nn.utils.get_total_norm(grads), max=1.0))

    @torch.no_grad()
    def step(self) -> None:
        """Clipping, the decoupled decay for SGD (AdamW's line, before the step), then the native optimizer step."""
        if self.clip_norm > 0.0:
            self.clip()
        if self.sgd_decay and self.decayed_group is not None:
            factor = 1.0 - self.decayed_group["lr"] * self.sgd_decay
            for p in self.decayed_group["params"]:
                p.mul_(factor)
        self.opt.step()
