"""How the adapter runs one training step, as `spec.execution` says (docs/design.md, "Execution modes").

A step: zero the grads, the training forward pass and loss (`loss_fn(x, y, w, lengths, masks, real)` → (recorded
loss, loss + penalties); `real` as core.Flow), `backward()`, the optimizer step; the model's buffers (BatchNorm's
running statistics) are updated in place by the forward pass. The optimizer step (optim.TorchOptimizer.step: clipping,
the decoupled decay line, torch.optim) runs inside the mode's mechanism; its LRScheduler is stepped in Python around
it (`opt_step`, `optimizer.event`), never inside a compiled graph or a CUDA graph: a scheduled lr is a float64
tensor the step reads, so a new lr neither recompiles nor needs a new capture. Modes differ only in the native
mechanism running the step:
- eager:    torch's eager autograd and `torch.optim`, op by op.
- compiled: `torch.compile` of forward + loss (AOTAutograd compiles its backward) and of the optimizer step, unless
            that step is torch.optim's fused kernel (SGD where the device has one), which runs as is: torch.compile
            does not trace into it, and on a small model it is the faster step (docs/design.md, "Performance
            methodology"); the compiled reference does the same;
            `dynamic=False` (one graph per batch shape) for static shapes, `None` (automatic dynamic shapes) for
            token batches whose T varies; it specialises on `real` (a padded batch compiles once more). Buffers
            mutate in place as in eager. The recompile limit is raised and hitting it is an error, so eager code can
            never pass for "compiled".
- fused:    a CUDA graph of the whole step, one per input signature (shapes, masks or not, `real`), replayed per
            step (CUDA only; static shapes only). Before a capture the step is warmed up on a side stream, then
            parameters, buffers, optimizer state and the CUDA RNG are restored (state the warm-up created zeroed:
            the first-step state), so the replayed run is the eager run. Each replay's loss is copied out of the
            graph's static output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EXECUTIONS = ("eager", "compiled", "fused")
RECOMPILE_LIMIT = 64

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def check_execution(execution: str, device: torch.device) -> None:
    """A clear error for a mode that does not exist, or that this device cannot run (fused needs CUDA)."""
    if execution not in EXECUTIONS:
        raise ValueError(f"torch: unknown execution mode '{execution}' (modes: {', '.join(EXECUTIONS)})")
    if execution == "fused" and device.type != "cuda":
        raise RuntimeError(
            f"torch fused mode (CUDA-graph step) needs a CUDA device; this run is on {device.type} "
            f"(torch.cuda.is_available() = {torch.cuda.is_available()})"
        )


class EagerStep:
    """eager: autograd and torch.optim op by op. `raw_step` is the optimizer step of the mode (clipping, decay,
    torch.optim); `opt_step` wraps it in the optimizer's scheduler events (LRScheduler.step() in Python, outside
    any compiled or captured step)."""

    def __init__(self, loss_fn: LossFn, optimizer):
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.raw_step = optimizer.step

    def opt_step(self) -> None:
        self.optimizer.event("before_step")
        self.raw_step()
        self.optimizer.event("after_step")

    def _train(self, x, y, w, lengths, masks, real) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss, total = self.loss_fn(x, y, w, lengths, masks, real)
        total.backward()
        self.raw_step()
        return loss.detach()

    def __call__(self, x, y, w, lengths, masks, real) -> torch.Tensor:
        self.optimizer.event("before_step")
        loss = self._train(x, y, w, lengths, masks, real)
        self.optimizer.event("after_step")
        return loss


class CompiledStep(EagerStep):
    """compiled: torch.compile of the forward + loss (AOTAutograd compiles its backward) and of the optimizer step
    (a fused optimizer step runs as is)."""

    def __init__(self, loss_fn: LossFn, optimizer, dynamic: bool | None = False):
        super().__init__(torch.compile(loss_fn, dynamic=dynamic), optimizer)
        self.raw_step = optimizer.step if optimizer.fused else torch.compile(optimizer.step, dynamic=False)
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        config.fail_on_recompile_limit_hit = True


class GraphStep(EagerStep):
    """fused: one CUDA graph per input signature, replayed per step (see the module docstring)."""

    WARMUP = 3

    def __init__(self, loss_fn: LossFn, optimizer, state: list[torch.Tensor]):
        super().__init__(loss_fn, optimizer)
        self.state = state
        self.graphs: dict[tuple, tuple[list[torch.Tensor], torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @staticmethod
    def _flat(x, y, w, masks) -> list[torch.Tensor]:
        return [x, y, w, *(masks or [])]

    @staticmethod
    def _unflat(flat: list[torch.Tensor], with_masks: bool, real: int | None):
        return (*flat[:3], None, flat[3:] if with_masks else None, real)

    def __call__(self, x, y, w, lengths, masks, real) -> torch.Tensor:
        key = (tuple(x.shape), masks is not None, real)
        if key not in self.graphs:
            self.graphs[key] = self._capture(self._flat(x, y, w, masks), masks is not None, real)
        static, graph, loss = self.graphs[key]
        for dst, src in zip(static, self._flat(x, y, w, masks), strict=True):
            dst.copy_(src)
        self.optimizer.event("before_step")  # a scheduler fill_s the lr tensor the graph reads
        graph.replay()
        self.optimizer.event("after_step")
        return loss.clone()

    def _capture(self, inputs: list[torch.Tensor], with_masks: bool, real: int | None):
        static = [t.clone() for t in inputs]
        args = self._unflat(static, with_masks, real)
        graph, loss = capture(lambda: self._train(*args), self.state, self.optimizer, self.WARMUP)
        return static, graph, loss


def capture(run: Callable[[], torch.Tensor], state: list[torch.Tensor], optimizer, warmup: int):
    """A CUDA graph of `run()` (training steps on static inputs) and its static output: `warmup` runs on a side
    stream first, then `state` (parameters, buffers), the optimizer's state and the CUDA RNG restored (state the
    warm-up created zeroed), so that replaying the graph continues the run as if the warm-up had not happened."""
    saved = _snapshot(state, optimizer)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(side)
    _restore(saved, state, optimizer)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # zero_grad(set_to_none) inside: the grads live in the graph's pool
        out = run()
    return graph, out


@torch.no_grad()
def _snapshot(state: list[torch.Tensor], optimizer) -> tuple:
    kept = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in optimizer.opt.state.items()}
    return [t.detach().clone() for t in state], kept, torch.cuda.get_rng_state()


@torch.no_grad()
def _restore(saved: tuple, state: list[torch.Tensor], optimizer) -> None:
    tensors, kept, rng = saved
    for t, value in zip(state, tensors, strict=True):
        t.copy_(value)
    for p, s in optimizer.opt.state.items():
        before = kept.get(id(p), {})
        for k, v in s.items():
            if not torch.is_tensor(v):
                raise RuntimeError(f"torch CUDA graph: optimizer state '{k}' is not a tensor (not capturable)")
            v.copy_(before[k]) if k in before else v.zero_()
    torch.cuda.set_rng_state(rng)


def make_step(execution: str, loss_fn: LossFn, optimizer, state: list[torch.Tensor], static_shapes: bool) -> EagerStep:
    """The step of `execution` for batches of static shapes (the plan's: features, images) or not (token batches:
    compiled with automatic dynamic shapes, which recompile once with a symbolic size when a shape changes).
    `state`: every tensor a step changes besides the optimizer's state (the trainable parameters and the model's
    buffers), which a CUDA graph's warm-up must leave as it found them."""
    if execution == "compiled":
        return CompiledStep(loss_fn, optimizer, False if static_shapes else None)
    if execution == "fused":
        if not static_shapes:
            raise RuntimeError(
                "torch fused mode (CUDA graph) needs batches of static shapes; token batches vary "
                'in length (use execution = "compiled" or "eager")'
            )
        return GraphStep(loss_fn, optimizer, state)
    return EagerStep(loss_fn, optimizer)
