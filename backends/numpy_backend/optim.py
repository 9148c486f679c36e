"""The oracle's optimizers: the canonical updates of common.optim with common.regularization's gradient terms,
common.clipping's clip of that regularized gradient and common.schedules' lr(t), t the steps already taken.
State (batch_norm's running statistics, common.layers.is_state) is never updated nor regularized here."""

from __future__ import annotations

import numpy as np

from common import clipping, schedules
from common.layers import is_state
from common.regularization import Regularization
from common.spec import Spec


class CanonicalOptimizer:
    """SGD (momentum, nesterov), Adam and AdamW exactly as the common.optim docstring writes them."""

    def __init__(self, spec: Spec, reg: Regularization):
        self.opt, self.schedule = spec.optimizer, spec.schedule
        self.reg = reg
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update the trained parameters in `params` in place from the cross-entropy gradients `grads`."""
        o = self.opt
        lr = schedules.lr(self.schedule, o.lr, self.t)
        self.t += 1
        trained = {name: w for name, w in params.items() if not is_state(name)}
        regularized = {name: grads[name] + self.reg.gradient(name, w) for name, w in trained.items()}
        clipped = clipping.clip(regularized, o.clip_norm, o.clip)[0]
        for name, w in trained.items():
            g = clipped[name]
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
            params[name] = w - lr * update - lr * decay
