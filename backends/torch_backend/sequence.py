"""Sequence layers as torch modules: embedding, masked_mean, rnn (docs/design.md, "Layer stacks", "Padding and masks").

A token batch is (B, T) int64 padded with 0 on the `pad` side, its kept lengths L_i in `Flow.lengths` (host); the
token mask is positions [0, L_i) (post) or [T − L_i, T) (pre); `sequence.mask = false` reads every position.

embedding:   `nn.Embedding(vocab, dim)` WITHOUT padding_idx (it would freeze row 0, an ordinary trainable row
             canonically); `embed.weight` (vocab, dim) is torch's layout.
masked_mean: Σ_t m_t·x_t / max(Σ_t m_t, 1) (an all-padded row gives 0); `x.mean(dim=1)` without the mask.
rnn:         `nn.RNN(dim, units, tanh, batch_first)`. Masked: `pack_padded_sequence(enforce_sorted=False)` of the
             kept lengths; pre-padded rows are first rotated left by T − L_i so that only real tokens are packed;
             all-padded rows are packed with length 1 and their state multiplied by 0. Gives h_n, the state after
             each row's last real token. Unmasked: the plain nn.RNN over all T positions, h_n.
             nn.RNN has two biases that enter as a sum and both get the full gradient. Idiom `rnn_two_biases`
             off: the one canonical `rnn.bias` is bias_ih and bias_hh is frozen at 0 (never given to the
             optimizer); on: torch trains both (the user's model) and exports bias_ih + bias_hh.
             weight_ih = Wᵀ, weight_hh = Uᵀ.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from backends.torch_backend.core import NO_FLOW, Canonical, Flow
from common.idioms import on
from common.layers import Layer
from common.padding import resolve_sides
from common.spec import Spec


def token_mask(lengths: torch.Tensor, steps: int, pad: str, device) -> torch.Tensor:
    """(B, T) bool: True on the kept tokens, positions [0, L) (post) or [T − L, T) (pre)."""
    t = torch.arange(steps, device=device)
    lengths = lengths.to(device)[:, None]
    return t[None, :] < lengths if pad == "post" else t[None, :] >= steps - lengths


class Embedding(Canonical, nn.Embedding):
    CANONICAL: ClassVar = {"weight": ("weight", None)}

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__(layer.in_width, layer.width, dtype=dtype)

    def forward(self, tokens: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return super().forward(tokens)


class MaskedMean(nn.Module):
    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__()
        self.mask, self.pad = spec.sequence.mask, resolve_sides(spec, "torch")[0]

    def forward(self, e: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        if not self.mask:
            return e.mean(dim=1)
        m = token_mask(flow.lengths, e.shape[1], self.pad, e.device).to(e.dtype)
        return (e * m[:, :, None]).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)[:, None]


class RNN(Canonical, nn.RNN):
    CANONICAL: ClassVar = {
        "weight_ih_l0": ("input.weight", (1, 0)),
        "weight_hh_l0": ("recurrent.weight", (1, 0)),
        "bias_ih_l0": ("bias", None),
    }

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__(layer.in_width, layer.width, nonlinearity="tanh", batch_first=True, dtype=dtype)
        self.masked, self.pad = spec.sequence.mask, resolve_sides(spec, "torch")[0]
        if not on(spec, "rnn_two_biases"):
            with torch.no_grad():
                self.bias_hh_l0.zero_()
            self.bias_hh_l0.requires_grad_(False)

    def exported(self) -> dict[str, torch.Tensor]:
        return {**self.canonical_views(), "bias": self.bias_ih_l0 + self.bias_hh_l0}

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """`rnn_two_biases` lists bias_hh too, as a second `bias` (a bias-like vector for the regularizers)."""
        extra = [("bias", self.bias_hh_l0)] if self.bias_hh_l0.requires_grad else []
        return super().trainable() + extra

    def forward(self, e: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        """The final state h (B, units) of the module docstring."""
        if not self.masked:
            _, h_n = super().forward(e)
            return h_n[0]
        steps, lengths = e.shape[1], flow.lengths.cpu()
        if self.pad == "pre":  # rotate each row left by T − L so that its real tokens start at position 0
            shift = (steps - lengths).to(e.device)
            index = (torch.arange(steps, device=e.device)[None, :] + shift[:, None]) % steps
            e = torch.gather(e, 1, index[:, :, None].expand(-1, -1, e.shape[2]))
        packed = pack_padded_sequence(e, lengths.clamp_min(1), batch_first=True, enforce_sorted=False)
        _, h_n = super().forward(packed)  # h_n in the batch's original order (enforce_sorted=False)
        real = (lengths > 0).to(device=h_n.device, dtype=h_n.dtype)
        return h_n[0] * real[:, None]


LAYERS = {"embedding": Embedding, "masked_mean": MaskedMean, "rnn": RNN}
