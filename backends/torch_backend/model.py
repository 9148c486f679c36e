"""The MLP as an nn.Module and the canonical ⇄ torch parameter mapping (DESIGN §5, "Initialisation", "Dropout").

Dense layers are `nn.Linear` modules registered as `layer{i}`, so `named_parameters()` already uses the canonical
names; only the layout differs: nn.Linear stores its weight (out, in), canonical is (in, out), so weights are
transposed on load and on export.

Initialisation: exact mode loads the canonical parameters (`load_canonical`). Native mode keeps nn.Linear's own
default, kaiming_uniform(a=√5) = U(±1/√fan_in) for weights and U(±1/√fan_in) for biases, drawn from the global torch
RNG: the adapter calls `torch.manual_seed(spec seed)` and builds the MLP on the CPU, then moves it to the device, as
a user writes `MLP().to(device)`, so the native init does not depend on the device.

Dropout after every hidden activation:
- exact mode: `h * mask` with the driver's pre-scaled shared mask (no torch layer accepts an external mask);
- native mode: `nn.Dropout(p)`, torch's own inverted dropout drawing from the global torch RNG;
- off in evaluation: `nn.Dropout` is a no-op under `.eval()`, and the adapter passes no masks there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class MLP(nn.Module):
    """Linear → activation → dropout for each hidden width, then a Linear giving logits."""

    def __init__(self, sizes: list[tuple[int, int]], activation: str, native_dropout: float, dtype, device):
        super().__init__()
        self.n_layers = len(sizes)
        for i, (fan_in, fan_out) in enumerate(sizes):
            self.add_module(f"layer{i}", nn.Linear(fan_in, fan_out, dtype=dtype, device=device))
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(native_dropout) if native_dropout else nn.Identity()

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = x
        for i in range(self.n_layers - 1):
            h = self.activation(getattr(self, f"layer{i}")(h))
            h = h * masks[i] if masks is not None else self.dropout(h)
        return getattr(self, f"layer{self.n_layers - 1}")(h)

    @torch.no_grad()
    def load_canonical(self, params: dict[str, np.ndarray]) -> None:
        """Copy canonical parameters in, transposing weights (in, out) → (out, in)."""
        for name, p in self.named_parameters():
            value = torch.as_tensor(np.asarray(params[name]))
            p.copy_(value.T if name.endswith(".weight") else value)

    @torch.no_grad()
    def canonical(self) -> dict[str, np.ndarray]:
        """Current parameters as numpy in the canonical layout (weights transposed back to (in, out))."""
        return {name: (p.T if name.endswith(".weight") else p).detach().cpu().numpy().copy()
                for name, p in self.named_parameters()}
