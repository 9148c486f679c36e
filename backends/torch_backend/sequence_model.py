"""The sequence models as nn.Modules and the canonical ⇄ torch parameter mapping (DESIGN §5; the numpy oracle,
backends/numpy_backend/sequence_model.py, is the semantics).

Both read a padded batch: tokens (B, T) int64 padded with 0 on the `pad` side, and the kept lengths L_i (host
tensor). The token mask is derived from the lengths and the side: positions [0, L_i) (post) or [T − L_i, T) (pre).

- Embedding: `nn.Embedding(vocab, E)` WITHOUT `padding_idx`: padding_idx would freeze row 0's gradient (and zero it
  in native init), while canonically the pad token's embedding is an ordinary trainable row that an unmasked model
  reads. Canonical `embed.weight` (vocab, E) is torch's layout, no transpose.
- SeqPool: pooled = Σ_t m_t·x_t / max(Σ_t m_t, 1) with mask (all-padded row → 0), `x.mean(dim=1)` over all T
  without; then the MLP of model.MLP (its `layer{i}` Linear modules, shared-mask or nn.Dropout dropout).
- RNN: `nn.RNN(E, H, nonlinearity="tanh", batch_first=True)`, `layer0` the Dense head.
  mask = true: a `PackedSequence` is the mechanism. Post-padded rows go straight into
  `pack_padded_sequence(x, L, batch_first=True, enforce_sorted=False)`. Pre-padded rows have their real tokens at
  [T − L_i, T): each row is rotated left by T − L_i (one gather) so its real tokens start at 0, then packed the same
  way, so only real tokens are packed. The result is h_n, the state after each row's last real token (nn.RNN
  returns it in the batch's original order with enforce_sorted=False). pack_padded_sequence refuses L = 0, so
  all-padded rows are packed with length 1 and their state multiplied by 0 (h = 0, gradient 0, finite).
  mask = false: the plain unpacked `nn.RNN` over all T positions, pads included; h = h_n = the output at T − 1.
  Then h ⊙ dropout mask (width H), then `layer0`.
  Biases: nn.RNN has two, b_ih and b_hh, that enter as a sum and both receive the full gradient, so with both
  trainable the effective bias moves twice as fast as the canonical single bias (Keras, flax). Exact mode maps the
  canonical `rnn.bias` to `bias_ih_l0` and freezes `bias_hh_l0` at 0 (requires_grad False, never given to the
  optimizer: `canonical_named_parameters` lists the trainable parameters only). `canonical()` exports
  bias_ih + bias_hh (bias_hh = 0 in exact mode; in native mode both train and their sum is the effective bias).
  Weight layout: weight_ih_l0 = Wᵀ (H, E), weight_hh_l0 = Uᵀ (H, H).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from backends.torch_backend.model import MLP

# torch name → (canonical name, transposed)
RNN_NAMES = {"embed.weight": ("embed.weight", False), "rnn.weight_ih_l0": ("rnn.input.weight", True),
             "rnn.weight_hh_l0": ("rnn.recurrent.weight", True), "rnn.bias_ih_l0": ("rnn.bias", False),
             "layer0.weight": ("layer0.weight", True), "layer0.bias": ("layer0.bias", False)}


def token_mask(lengths: torch.Tensor, steps: int, pad: str, device) -> torch.Tensor:
    """(B, T) bool: True on the kept tokens, positions [0, L) (post) or [T − L, T) (pre)."""
    t = torch.arange(steps, device=device)
    lengths = lengths.to(device)[:, None]
    return t[None, :] < lengths if pad == "post" else t[None, :] >= steps - lengths


class SeqPool(MLP):
    """nn.Embedding → (masked) mean over time → the MLP's Linear layers `layer{i}`."""

    def __init__(self, vocab: int, embed_dim: int, sizes, activation: str, native_dropout: float, mask: bool,
                 pad: str, dtype, device):
        embed = nn.Embedding(vocab, embed_dim, dtype=dtype, device=device)  # drawn first, as the model reads it
        super().__init__(sizes, activation, native_dropout, dtype, device)
        self.embed = embed
        self.mask, self.pad = mask, pad

    def forward(self, x, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        tokens, lengths = x
        e = self.embed(tokens)  # (B, T, E)
        if self.mask:
            m = token_mask(lengths, tokens.shape[1], self.pad, tokens.device).to(e.dtype)
            pooled = (e * m[:, :, None]).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)[:, None]
        else:
            pooled = e.mean(dim=1)
        return super().forward(pooled, masks)

    def canonical_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def load_canonical(self, params: dict[str, np.ndarray]) -> None:
        for name, p in self.named_parameters():
            value = torch.as_tensor(np.asarray(params[name]))
            p.copy_(value.T if name.startswith("layer") and name.endswith(".weight") else value)

    @torch.no_grad()
    def canonical(self) -> dict[str, np.ndarray]:
        return {name: (p.T if name.startswith("layer") and name.endswith(".weight") else p).detach().cpu().numpy()
                .copy() for name, p in self.named_parameters()}


class RNN(nn.Module):
    """nn.Embedding → nn.RNN (tanh; packed when masking) → final state ⊙ dropout → Linear `layer0`."""

    def __init__(self, vocab: int, embed_dim: int, width: int, n_classes: int, native_dropout: float, mask: bool,
                 pad: str, dtype, device, freeze_bias_hh: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim, dtype=dtype, device=device)
        self.rnn = nn.RNN(embed_dim, width, nonlinearity="tanh", batch_first=True, dtype=dtype, device=device)
        self.layer0 = nn.Linear(width, n_classes, dtype=dtype, device=device)
        self.dropout = nn.Dropout(native_dropout) if native_dropout else nn.Identity()
        self.mask, self.pad = mask, pad
        if freeze_bias_hh:
            with torch.no_grad():
                self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_hh_l0.requires_grad_(False)

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The final state h (B, H) of the module docstring."""
        e = self.embed(tokens)  # (B, T, E)
        if not self.mask:
            _, h_n = self.rnn(e)
            return h_n[0]
        steps = tokens.shape[1]
        lengths = lengths.cpu()
        if self.pad == "pre":  # rotate each row left by T − L so that its real tokens start at position 0
            shift = (steps - lengths).to(tokens.device)
            index = (torch.arange(steps, device=tokens.device)[None, :] + shift[:, None]) % steps
            e = torch.gather(e, 1, index[:, :, None].expand(-1, -1, e.shape[2]))
        packed = pack_padded_sequence(e, lengths.clamp_min(1), batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)  # h_n in the batch's original order (enforce_sorted=False)
        real = (lengths > 0).to(device=h_n.device, dtype=h_n.dtype)
        return h_n[0] * real[:, None]

    def forward(self, x, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        tokens, lengths = x
        h = self.encode(tokens, lengths)
        h = h * masks[0] if masks is not None else self.dropout(h)
        return self.layer0(h)

    def canonical_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(canonical name, parameter) of every trainable parameter (what the optimizer and the penalties see);
        in native mode bias_hh trains too and is listed under its own name `rnn.bias_hh` (a bias)."""
        own = dict(self.named_parameters())
        out = [(RNN_NAMES[n][0], own[n]) for n in RNN_NAMES]
        if self.rnn.bias_hh_l0.requires_grad:
            out.append(("rnn.bias_hh", self.rnn.bias_hh_l0))
        return [(n, p) for n, p in out if p.requires_grad]

    @torch.no_grad()
    def load_canonical(self, params: dict[str, np.ndarray]) -> None:
        own = dict(self.named_parameters())
        for torch_name, (name, transposed) in RNN_NAMES.items():
            value = torch.as_tensor(np.asarray(params[name]))
            own[torch_name].copy_(value.T if transposed else value)
        self.rnn.bias_hh_l0.zero_()

    @torch.no_grad()
    def canonical(self) -> dict[str, np.ndarray]:
        own = dict(self.named_parameters())
        out = {}
        for torch_name, (name, transposed) in RNN_NAMES.items():
            p = own[torch_name]
            if torch_name == "rnn.bias_ih_l0":
                p = p + self.rnn.bias_hh_l0
            out[name] = (p.T if transposed else p).detach().cpu().numpy().copy()
        return out
