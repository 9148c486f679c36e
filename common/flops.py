"""Training FLOPs per sample of a resolved layer stack, for model FLOP utilisation (docs/design.md, "Performance
methodology").

Only the matrix products count (the convention of MFU figures: elementwise work, normalisation and pooling are
left out), a multiply-add as 2 FLOPs, per sample:

    dense:   2 · F_in · F_out
    conv2d:  2 · H_out · W_out · C_out · k² · C_in
    rnn:     2 · L̄ · (E · H + H · H)    (L̄ the mean kept tokens per row, common.padding.kept_lengths: the real
                                          tokens, not the pads a batch also computes; the embedding is a gather)
    training = 3 × forward   (the backward pass is two products of the forward's size: the gradient with respect
                              to the layer's input and with respect to its weights)

MFU = samples/s × training FLOPs per sample / peak FLOP/s, the peak measured as a large GEMM in the same framework
on the same device and threads (each backend's bench.py, `peak_flops`).
"""

from __future__ import annotations

from collections.abc import Iterable

from common.layers.base import Layer

TRAIN_FACTOR = 3
PEAK_N = 1024  # the peak probe's GEMM size: 2n³ = 2.1 GFLOP a call


def forward_flops(layer: Layer, tokens: float = 1.0) -> float:
    """The forward matrix-product FLOPs of one layer for one sample of `tokens` real tokens (module docstring);
    0 for other kinds."""
    if layer.kind == "dense":
        return 2 * layer.in_width * layer.width
    if layer.kind == "conv2d":
        h_out, w_out, c_out = layer.shape
        return 2 * h_out * w_out * c_out * layer.kernel * layer.kernel * layer.in_width
    if layer.kind == "rnn":
        return 2 * tokens * (layer.in_width * layer.width + layer.width * layer.width)
    return 0


def train_flops_per_sample(layers: Iterable[Layer], tokens: float = 1.0) -> float:
    """TRAIN_FACTOR × the stack's forward FLOPs per sample; `tokens` the mean kept tokens per row on sequence
    data."""
    return TRAIN_FACTOR * sum(forward_flops(layer, tokens) for layer in layers)


def gemm_flops(n: int) -> int:
    """FLOPs of one n×n by n×n matrix product (the peak probe): 2n³."""
    return 2 * n**3
