"""The oracle's optimizers: the canonical updates of common.optim with common.regularization's gradient terms.
State (batch_norm's running statistics, common.layers.is_state) is never updated nor regularized here."""

from __future__ import annotations

import numpy as np

from common.layers import is_state
from common.regularization import Regularization
from common.spec import Spec


class CanonicalOptimizer:
    """SGD (momentum, nesterov), Adam and AdamW exactly as the common.optim docstring writes them."""

    def __init__(self, spec: Spec, reg: Regularization):
        self.opt = spec.optimizer
        self.reg = reg
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update the trained parameters in `params` in place from the cross-entropy gradients `grads`."""
        self.t += 1
        o = self.opt
        for name, w in params.items():
            if is_state(name):
                continue
            g = grads[name] + self.reg.gradient(name, w)
            s = self.state.setdefault(name, {})
            if o.name == "sgd":
                if o.momentum:
                    s["b"] = g.copy() if "b" not in s else o.momentum * s["b"] + g
                    update = g + o.momentum * s["b"] if o.nesterov else s["b"]
                else:
                    update = g
            else:
                s["m"] = o.beta1 * s.get("m", 0.0) + (1.0 - o.beta1) * g
                s["v"] = o.beta2 * s.get("v", 0.0) + (1.0 - o.beta2) * g * g
                m_hat = s["m"] / (1.0 - o.beta1**self.t)
                v_hat = s["v"] / (1.0 - o.beta2**self.t)
                update = m_hat / (np.sqrt(v_hat) + o.eps)
            decay = self.reg.decoupled * w if self.reg.applies(name) else 0.0
            params[name] = w - o.lr * update - o.lr * decay
