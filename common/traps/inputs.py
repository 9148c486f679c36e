"""The probe inputs: every framework's probe of a trap is asked the same question with these values.

Shared by `backends/<fw>_backend/probes.py`, the references (reference.py) and the classifiers (judge.py).
"""

from __future__ import annotations

import numpy as np

SEED = 0
ORDER_N = 10  # ids shuffled by the order probes
ORDER_N_SMALL = 5  # the repeat/batch probe's dataset size
SHUFFLE_BUFFER, SHUFFLE_EPOCHS = 2, 200
LOSS_LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3], [-1.5, 0.0, 1.0], [0.3, 2.5, -0.7]], np.float32)
MASK_LABELS = np.array([0, 1, 2, 1])  # masked-mean probe: rows 2, 3 masked out
LOSS_MASK = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
WEIGHT_LABELS = np.array([0, 1, 2, 2])  # sample-weight probe: class weights (1, 1, 0) ≡ row weights LOSS_MASK
DROPOUT_RATES = (0.3, 0.45)  # 0.3 as asked; at 0.45 fl(1/(1−p)) ≠ fl(1/fl(1−p)) in float32
SEQUENCES = [[1], [2, 3, 4]]  # padding probes
RNN_INPUT = [[[0.5], [-1.0], [0.0]]]  # RNN probes: one row, 3 steps, 2 real (post-padded), 1 feature
RNN_INPUT_PRE = [[[0.0], [0.5], [-1.0]]]  # the same row pre-padded
RNN_WIDTH = 2
EMBED_TOKENS, EMBED_COEF = [0, 0], [1.0, 2.0]  # sparse-Adam probe: loss = Σ_k c_k·E[token_k], token 0 seen twice
INIT_FAN_IN, INIT_FAN_OUT = 100, 2000
DECAY = dict(w0=1.0, lr=0.5, wd=0.25, momentum=0.5, steps=2)  # binary fractions: every result exact
MOMENTUM = dict(lr=0.5, lr_after=0.25, momentum=0.5, grad=1.0, steps=3, change_at=3)
ADAM = dict(
    w0=[0.5, -1.0, 2.0, 0.0],
    a=[1.0, 2.0, 0.5, 3.0],
    b=[0.1, -0.2, 0.3, 1e-3],
    lr=0.1,
    wd=0.1,
    steps=5,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
)  # gradient g = a·w + b (float64)
EPS_HAT = dict(grad=[1e-6, 1e-3, 1.0], lr=0.25, b1=0.9, b2=0.999, eps=1e-8)
# LayerNorm probe (float64, γ = 1, β = 0): rows [0, d]; the small row's variance d²/4 is of the order of the
# defaults' ε, the large row's swamps ε, so the two outputs give ε and the variance's divisor apart
LAYER_NORM_INPUT = np.array([[0.0, 1e-3], [0.0, 1.0]], np.float64)


def dropout_input(n: int = 20000) -> np.ndarray:
    """float32 values in [0.5, 1.5): x·s and x/(1−p) round differently for ~10% of them at p = 0.3."""
    return (np.random.default_rng(11).random(n) + 0.5).astype(np.float32)


# Images and BatchNorm probes (float64 unless stated; images single-channel, square)
CONV_SAME = dict(n=8, kernel=3, stride=2)  # "same" at stride 2: TF pads (0, 1); a torch port writes padding=1
CONV_KERNEL = np.arange(1.0, 10.0).reshape(3, 3) / 10.0  # distinct taps: an output fixes the window's offset
POOL_DEFAULT = dict(n=8, size=2)  # a pooling window given without its stride
AVG_POOL_SAME = dict(n=4, size=3, stride=1)  # a ones image: the corner window overlaps 5 pad pixels of 9
FLATTEN_HWC = (2, 2, 3)  # (H, W, C) of one image whose values are their NHWC flat index
LAYOUT = dict(channels=3, height=5, width=7, filters=4, kernel=3)  # every axis a different size
# BatchNorm probes: 4 rows × 2 features (n = 4 values per channel; means 2, 2; biased variances 2.5, 3.5)
BN_INPUT = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 4.0], [4.0, 3.0]], np.float64)
BN_MOMENTUM = 0.9  # the `momentum` argument passed to read what it means in each framework
BN_EPS_INPUT = LAYER_NORM_INPUT.T.copy()  # columns [0, d]: batch statistics over the rows, as layer_norm's over a row
BN_MASK = np.array([True, True, True, False])  # masked statistics: the first 3 rows real, the last a filler
BN_LARGE_MEAN = dict(rows=64, features=2, mean=1e4, std=1.0, seed=5)  # float32, |μ|/σ = 1e4: E[x²] − μ² cancels


def conv_ramp(n: int) -> np.ndarray:
    """An n×n float64 image x[i, j] = 1 + i·n + j: every pixel distinct and nonzero (a zero pad shows)."""
    return np.arange(1.0, n * n + 1.0).reshape(n, n)


def bn_large_mean_input() -> np.ndarray:
    """BN_LARGE_MEAN's (rows, features) float32 values: mean + std·N(0, 1)."""
    p = BN_LARGE_MEAN
    noise = np.random.default_rng(p["seed"]).normal(size=(p["rows"], p["features"]))
    return (p["mean"] + p["std"] * noise).astype(np.float32)


# Data parallelism and accumulation probes (binary fractions, every sum, mean and update exact; ACCUMULATOR aside)
SAMPLER = dict(n=10, replicas=4, order_replicas=2, rank=0)  # DistributedSampler: 10 rows over 4 ranks pads to 12
ACCUMULATE = dict(micro=([0.5, 1.0, 1.5], [2.0]), lr=0.5)  # K = 2 micro-batches of 3 and 1 rows; loss ℓ = w·x
AVERAGE_LOSS = dict(losses=[0.5, 1.0, 1.5], global_batch=4)  # a ragged step: n = 3 real rows of G = 4
PENALTY = dict(l2=0.25, kernel=[[1.0, -2.0]])  # a Keras L2(λ) kernel penalty λ·Σw² = 1.25
ACCUMULATOR = dict(grads=[0.1, 0.2, 0.4])  # K = 3 float64 gradients, not binary fractions: a float32 sum rounds
# BatchNorm under split steps: R = 2 replicas of c = 4 rows (one float64 micro-batch of R·c rows, replica-major).
# Replica 0's rows are BN_INPUT (means 2, 2; biased variances 2.5, 3.5), replica 1's 2·BN_INPUT + (0, −8) (means
# 4, −4; variances 10, 14): the first replica's statistics, the replicas' averaged ones (mean 3, −1; variance 6.25,
# 8.75) and the pooled R·c rows' (mean 3, −1; variance 7.25, 17.75) all differ, and every one is a binary fraction
BN_REPLICAS = 2
BN_SPLIT = np.concatenate([BN_INPUT, 2.0 * BN_INPUT + np.array([0.0, -8.0])])


# Gradient clipping and learning-rate schedules (float64). Two tensors a, b per clipping probe; lrs read back from
# SGD steps with g = 1 from w = 0 (Δw = −lr exactly) or the update itself (optax)
CLIP_BOUNDARY = dict(a=[1.0, 2.0, 2.0], b=[4.0])  # ‖a‖ = 3, ‖b‖ = 4, n = 5: clipped at c = n and c = n/2
CLIP_SCOPE = dict(a=[0.1, 0.2, 0.3], b=[0.4, 0.5], c=0.5)  # research case B: ‖a‖ 0.374 < c < ‖b‖ 0.640 < n 0.742
# one SGD step on the loss g·w (+ coupled decay λ/2·‖w‖²): ‖g‖ = 2, ‖g + λw‖ = ‖(2, 2, 2, 2)‖ = 4, both above c = 1,
# so the clip scales by 1/2 (the data gradient alone) or 1/4 (the regularized one): powers of 2, so every result is
# exact even where optax's (g/n)·c becomes g·fl(1/n)·c under XLA
CLIP_DECAY = dict(w=[2.0, 2.0, 2.0, 6.0], grad=[1.0, 1.0, 1.0, -1.0], wd=0.5, c=1.0, lr=0.5)
# lr₀ = 1, f = 1/4, D = 4, W = 2: cosine read at t = 0, D, 1.5·D, 2·D; warmup_cosine at t = 1, 3, 4, 6 (the warmup,
# two cosine steps where D − W and D differ, the end)
SCHEDULE = dict(lr=1.0, final_lr=0.25, decay_steps=4, warmup_steps=2, cosine_at=(0, 4, 6, 8), warmup_at=(1, 3, 4, 6))
STEP_FIRST = dict(lr=1.0, step_size=1, gamma=0.5, steps=3)  # StepLR halving every step: lr(t) = 2⁻ᵗ
PER_EPOCH = dict(lr=1.0, step_size=2, gamma=0.5, steps_per_epoch=3, epochs=2)  # StepLR(2, ½), 6 optimizer steps
SCHEDULE_FLOAT32 = dict(lr=0.1, decay_steps=1, decay_rate=0.5)  # lr(0) = 0.1: not a float32 value
# keras_clip_per_replica: R = 2 replicas' gradients of one float64 4-vector w, one SGD step (lr 1 from w = 0, so
# Δw = −g'), global clip c = 1. "agree": equal replicas of norm 2 (shards of one batch under a global-batch loss),
# each clipped by 1/2 alone, their sum (norm 4) by 1/4; "opposed": norms 4 and 2 (factors 1/4, 1/2) whose sum
# (1, 1, 1, 1) has norm 2 (factor 1/2). Every factor is a power of 2: every update exact in any summation order
CLIP_REPLICAS = dict(agree=([1.0] * 4, [1.0] * 4), opposed=([2.0] * 4, [-1.0] * 4), c=1.0, lr=1.0)
