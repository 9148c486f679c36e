"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def loss_plot(records: dict, reference: str, path: Path) -> None:
    """Per-step loss of every backend (top) and |loss − reference| on a log scale (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ref = records[reference][1]["losses"] if reference in records else None
    for name, (_, npz) in records.items():
        losses = npz["losses"]
        steps = np.arange(1, losses.shape[0] + 1)
        top.plot(steps, losses, label=name, linewidth=1.0, linestyle="--" if name == reference else "-")
        if ref is not None and name != reference and ref.shape == losses.shape:
            bottom.semilogy(steps, np.maximum(np.abs(losses - ref), 1e-18), label=f"{name} − {reference}")
    top.set_ylabel("training loss (pre-update)")
    top.legend()
    bottom.set_xlabel("step")
    bottom.set_ylabel(f"|loss − {reference}|")
    if bottom.lines:
        bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
