"""The idiom registry: every native-mode difference as a named switch (docs/design.md, "Native mode", "Idioms").

An idiom is one thing a hand port writes differently from the canonical rule: its id, the frameworks whose
adapters change when it is on, whether it changes the result deterministically or only the random draw, the
trap (common.traps) that measures it, and the one-line fix exact mode applies. Adapters ask `on(spec, id)`;
they never read `spec.mode` for a native behaviour.

Which idioms are on (`active`): `mode = "native"` turns on every idiom of the native set (`NATIVE_SET`: what a
port writes by default); `mode = "exact"` turns on the ids listed in `native.idioms` (none by default; "all" is
the native set). Two idioms are mistakes rather than defaults (`scheduler_step_first`, `per_epoch_schedule`): they
are on only when listed.

Deterministic idioms keep the per-step comparison meaningful: with only those on, the records are compared step by
step and a divergence is exact (common.tolerance). A random idiom (order, init, dropout draw, the framework's own
split of a step) makes the comparison statistical, over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import InputError

if TYPE_CHECKING:
    from common.spec import Spec

DETERMINISTIC, RANDOM = "deterministic", "random"


@dataclass(frozen=True)
class Idiom:
    id: str
    frameworks: tuple[str, ...]  # the backends whose runs change when it is on
    kind: str  # DETERMINISTIC or RANDOM
    trap: str  # the common.traps entry that measures it
    fix: str  # what exact mode does instead, in one line
    applies: Callable[[Spec], bool]  # whether this spec gives it anything to change
    default: bool = True  # part of the native set (mode = "native", idioms = "all")
    narrows: Callable[[Spec], tuple[str, ...]] | None = None  # the frameworks it changes for this spec, if fewer

    def affects(self, spec: Spec) -> tuple[str, ...]:
        """The frameworks whose runs this idiom changes for `spec` (none when it does not apply)."""
        if not self.applies(spec):
            return ()
        return self.frameworks if self.narrows is None else self.narrows(spec)


def _reg(spec: Spec):
    return spec.regularization


def _has(kind: str) -> Callable[[Spec], bool]:
    return lambda spec: any(t["kind"] == kind for t in _tables(spec))


def _split(spec: Spec) -> bool:
    from common.distributed import Layout

    return Layout.from_spec(spec).is_split


def _scheduled(spec: Spec) -> bool:
    return spec.schedule.kind != "constant"


def _clipped(spec: Spec) -> bool:
    return spec.optimizer.clip_norm > 0.0


def _coupled(spec: Spec) -> bool:
    r = _reg(spec)
    return r.l2 > 0.0 or (r.decay == "coupled" and r.weight_decay > 0.0)


def _decoupled(spec: Spec) -> bool:
    return _reg(spec).decay == "decoupled" and _reg(spec).weight_decay > 0.0


def _as_written(spec: Spec) -> tuple[str, ...]:
    """l2 as written halves torch's and optax's coefficient (λ·w for 2·l2·w); a coupled wd as written doubles
    Keras's (L2(wd): 2·wd·w)."""
    r = _reg(spec)
    halved = ("torch", "jax") if r.l2 > 0.0 else ()
    return halved + (("tf",) if r.decay == "coupled" and r.weight_decay > 0.0 else ())


def _bias_decayed(spec: Spec) -> tuple[str, ...]:
    """torch's one parameter group decays biases by every knob; Keras's weight_decay and optax's unmasked decay
    only by the decoupled one."""
    return ALL if _decoupled(spec) else ("torch",)


def _differs(key: str) -> Callable[[Spec], tuple[str, ...]]:
    def narrows(spec: Spec) -> tuple[str, ...]:
        from common.native import differs

        return differs(spec, key)

    return narrows


ALL = ("torch", "tf", "jax")
IDIOMS: dict[str, Idiom] = {
    i.id: i
    for i in (
        # random: each framework's own draw
        Idiom("order", ALL, RANDOM, "shuffle_order", "one shared order (common.batching's plan)", lambda s: True),
        Idiom("default_init", ALL, RANDOM, "default_init", "one shared init (common.initializers)", lambda s: True),
        Idiom(
            "dropout_rng",
            ("numpy", *ALL),
            RANDOM,
            "dropout_scale",
            "shared dropout masks (common.dropout)",
            lambda s: s.regularization.dropout > 0.0 or any(t["kind"] == "dropout" for t in _tables(s)),
        ),
        Idiom(
            "split_step",
            ALL,
            RANDOM,
            "mean_of_means",
            "the plan's split and the spec's reduction (common.distributed)",
            _split,
        ),
        # deterministic: the spec's numbers as written into each framework's knob
        Idiom(
            "l2_as_written",
            ALL,
            DETERMINISTIC,
            "l2_vs_weight_decay",
            "convert λ: torch/optax weight_decay = 2·l2 + wd, Keras L2((2·l2 + wd)/2) (common.regularization)",
            _coupled,
            narrows=_as_written,
        ),
        Idiom(
            "bias_decay",
            ALL,
            DETERMINISTIC,
            "optimizer_weight_decay",
            "decay only what common.regularization.applies names (two torch groups, Keras exclusion, optax mask)",
            lambda s: not s.regularization.regularize_bias and (_coupled(s) or s.regularization.weight_decay > 0.0),
            narrows=_bias_decayed,
        ),
        Idiom(
            "keras_adam_eps",
            ("tf",),
            DETERMINISTIC,
            "keras_epsilon_hat",
            "the spec's ε as Keras's per-step ε̂_t = ε·√(1 − β2ᵗ) (common.optim.keras_epsilon_hat)",
            lambda s: s.optimizer.name != "sgd",
        ),
        Idiom(
            "keras_l1_sum",
            ("tf",),
            DETERMINISTIC,
            "penalty_in_loss",
            "Keras L1(f_t) with f_t = l1/size for l1_reduction = mean (common.regularization)",
            lambda s: s.regularization.l1 > 0.0 and s.regularization.l1_reduction == "mean",
        ),
        Idiom(
            "abs_subgradient",
            ("jax",),
            DETERMINISTIC,
            "abs_subgradient",
            "L1 as an optax transform adding f·sign(w), sign(0) = 0",
            lambda s: s.regularization.l1 > 0.0,
        ),
        Idiom(
            "float32_hyper",
            ("tf", "jax"),
            DETERMINISTIC,
            "schedule_float32",
            "hand Keras and optax numpy/jnp float64 scalars in float64 runs",
            lambda s: s.dtype == "float64",
            narrows=lambda s: ("tf", "jax") if _scheduled(s) else ("tf",),  # optax keeps a constant lr in float64
        ),
        Idiom(
            "sparse_embedding_adam",
            ("tf",),
            DETERMINISTIC,
            "sparse_embedding_adam",
            "densify IndexedSlices gradients before apply_gradients",
            lambda s: s.optimizer.name != "sgd" and _has("embedding")(s),
        ),
        Idiom(
            "fit_epoch_loss",
            ALL,
            DETERMINISTIC,
            "fit_epoch_loss",
            "evaluate the epoch's train loss after the epoch",
            lambda s: True,
        ),
        # layer defaults (common.native.LAYER_DEFAULTS)
        Idiom(
            "bn_momentum",
            ALL,
            DETERMINISTIC,
            "bn_momentum_convention",
            "the spec's momentum in each convention",
            _has("batch_norm"),
            narrows=_differs("bn_momentum"),
        ),
        Idiom(
            "bn_eps",
            ALL,
            DETERMINISTIC,
            "bn_eps_default",
            "the spec's eps",
            _has("batch_norm"),
            narrows=_differs("bn_eps"),
        ),
        Idiom(
            "bn_running_var",
            ALL,
            DETERMINISTIC,
            "bn_running_var",
            "convert the running variance to the spec's estimator",
            _has("batch_norm"),
            narrows=_differs("running_var"),
        ),
        Idiom(
            "bn_fast_variance",
            ("jax",),
            DETERMINISTIC,
            "bn_fast_variance",
            "flax BatchNorm(use_fast_variance=False): the two-pass variance",
            _has("batch_norm"),
        ),
        Idiom(
            "layer_norm_eps",
            ALL,
            DETERMINISTIC,
            "layer_norm_eps",
            "pass the spec's ε (model.norm_eps or the layer's eps)",
            _has("layer_norm"),
            narrows=_differs("ln_eps"),
        ),
        Idiom(
            "rnn_two_biases",
            ("torch",),
            DETERMINISTIC,
            "rnn_bias_vectors",
            "freeze nn.RNN's bias_hh at zero: one trained bias, as Keras and flax",
            _has("rnn"),
        ),
        Idiom("flatten_order", ("torch",), DETERMINISTIC, "flatten_order", "flatten NHWC", _has("flatten")),
        Idiom(
            "same_padding",
            ("torch",),
            DETERMINISTIC,
            "conv_same_stride2",
            "TF's 'same' pads (common.layers.image.same_pads)",
            lambda s: any(t.get("padding") == "same" and t.get("stride", 1) > 1 for t in _tables(s)),
        ),
        Idiom(
            "avg_pool_count",
            ("torch", "jax"),
            DETERMINISTIC,
            "avg_pool_same_count",
            "divide by the real cells of a padded window",
            lambda s: any(t["kind"] == "avg_pool" and t.get("padding") == "same" for t in _tables(s)),
        ),
        # gradient clipping (common.clipping)
        Idiom(
            "clip_epsilon",
            ("torch",),
            DETERMINISTIC,
            "clip_epsilon",
            "scale by min(1, c/n): get_total_norm and a foreach multiply, no 1e-6",
            _clipped,
        ),
        Idiom(
            "clip_before_decay",
            ("torch", "jax"),
            DETERMINISTIC,
            "clip_before_decay",
            "clip the regularized gradient: coupled decay as a loss term (torch), before the clip in the chain (optax)",
            lambda s: _clipped(s) and _coupled(s),
        ),
        Idiom(
            "keras_clipnorm_per_variable",
            ("tf",),
            DETERMINISTIC,
            "keras_clipnorm_per_variable",
            "global clipping is Keras's global_clipnorm; clipnorm clips each variable",
            lambda s: _clipped(s) and s.optimizer.clip == "global",
        ),
        Idiom(
            "keras_clip_per_replica",
            ("tf",),
            DETERMINISTIC,
            "keras_clip_per_replica",
            "all-reduce the replicas' gradients before Keras clips them (a ReducedClip optimizer)",
            lambda s: _clipped(s) and s.distributed.replicas > 1,
        ),
        # learning-rate schedules (common.schedules)
        Idiom(
            "keras_sgd_momentum",
            ("tf",),
            DETERMINISTIC,
            "sgd_momentum_schedule",
            "an SGD subclass keeping torch's b ← μ·b + g, w ← w − lr_t·b",
            lambda s: _scheduled(s) and s.optimizer.name == "sgd" and s.optimizer.momentum > 0.0,
        ),
        Idiom(
            "torch_cosine_annealing",
            ("torch",),
            DETERMINISTIC,
            "cosine_annealing_period",
            "LambdaLR over common.schedules.lr: the cosine stays at final_lr after decay_steps",
            lambda s: s.schedule.kind in ("cosine", "warmup_cosine"),
        ),
        Idiom(
            "optax_warmup_decay_steps",
            ("jax",),
            DETERMINISTIC,
            "warmup_decay_steps",
            "optax's decay_steps counts the warmup: pass warmup_steps + decay_steps",
            lambda s: s.schedule.kind == "warmup_cosine" and s.schedule.warmup_steps > 0,
        ),
        # mistakes a port makes, on only when listed
        Idiom(
            "scheduler_step_first",
            ("torch",),
            DETERMINISTIC,
            "scheduler_step_first",
            "call scheduler.step() after optimizer.step()",
            _scheduled,
            default=False,
        ),
        Idiom(
            "per_epoch_schedule",
            ("torch",),
            DETERMINISTIC,
            "per_epoch_schedule",
            "step the scheduler after every optimizer step: t counts optimizer steps",
            _scheduled,
            default=False,
        ),
    )
}
NATIVE_SET = frozenset(i.id for i in IDIOMS.values() if i.default)


def _tables(spec: Spec) -> list[dict]:
    from common.layers import tables

    return tables(spec)


def check(mode: str, chosen) -> None:
    """Refuse unknown ids and a list beside mode = "native" (which turns every idiom on), naming the key."""
    if chosen == "all":
        return
    if isinstance(chosen, str):
        raise InputError(f"spec key 'native.idioms': {chosen!r} must be \"all\" or a list of idiom ids")
    unknown = [i for i in chosen if not isinstance(i, str) or i not in IDIOMS]
    if unknown:
        raise InputError(f"spec key 'native.idioms': unknown idiom {unknown[0]!r} (known: {', '.join(IDIOMS)})")
    if mode == "native" and chosen:
        raise InputError(
            'spec key \'native.idioms\': mode = "native" turns every idiom on; list idioms with mode = "exact"'
        )


# On split steps (common.distributed) a framework's own split of a step brings its own order and its own dropout
# draw: a port that uses tf.distribute's rebatching or a DistributedSampler cannot keep the shared plan's order or
# masks. These idioms switch together there.
SPLIT_BUNDLE = frozenset({"split_step", "order", "dropout_rng"})


def bundled(spec: Spec) -> frozenset[str]:
    """The idioms that switch together for this spec (SPLIT_BUNDLE on split steps; dropout_rng only with dropout)."""
    if not _split(spec):
        return frozenset()
    return SPLIT_BUNDLE if IDIOMS["dropout_rng"].applies(spec) else SPLIT_BUNDLE - {"dropout_rng"}


def check_bundle(spec: Spec) -> None:
    """Refuse a list that turns on part of a bundle (`bundled`), naming the key."""
    together, on_now = bundled(spec), active(spec)
    if together & on_now and not together <= on_now:
        raise InputError(
            f"spec key 'native.idioms': on split steps {', '.join(sorted(together))} switch together (a framework's "
            "own split of a step brings its own order and dropout draw); list all or none of them"
        )


def active(spec: Spec) -> frozenset[str]:
    """The ids on in this run (see the module docstring)."""
    chosen = spec.native.idioms
    if spec.mode == "native" or chosen == "all":
        return NATIVE_SET
    return frozenset(chosen)


def on(spec: Spec, idiom: str) -> bool:
    """Whether `idiom` is on in this run (a KeyError for an id the registry does not have)."""
    return IDIOMS[idiom].id in active(spec)


def statistical(spec: Spec) -> bool:
    """Whether the run must be compared over seeds: a random idiom is on."""
    return any(IDIOMS[i].kind == RANDOM for i in active(spec))


def plan_order(spec: Spec) -> bool:
    """Whether the run walks the shared plan (common.batching), which the driver then checks step by step: neither
    the framework's own order nor its own split of a step is on."""
    return not (on(spec, "order") or on(spec, "split_step"))


def comparison(spec: Spec) -> str:
    """The tolerance regime (common.tolerance.tolerance_for): "native" (over seeds) when a random idiom is on."""
    return "native" if statistical(spec) else "exact"


def record_comparison(rec: dict) -> str | None:
    """`comparison` for a record (common.record): from the idioms it lists (a record written before idioms were
    switches has its spec's mode)."""
    if "idioms" not in rec:
        return rec["spec"].get("mode")
    return "native" if any(IDIOMS[i].kind == RANDOM for i in rec["idioms"] if i in IDIOMS) else "exact"
