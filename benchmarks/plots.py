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


def _final_rows(rows: list[dict]) -> list[dict]:
    last = {}
    for r in rows:
        key = r["run_key"]
        if key not in last or int(r["epoch"]) > int(last[key]["epoch"]):
            last[key] = r
    return list(last.values())


def _label(row: dict, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys)


def sweep_plots(rows: list[dict], keys: list[str], sweep, out: Path, name: str) -> None:
    """One figure, the backends side by side; bottom row: generalisation gap (train − test accuracy).

    plot = final:  final train/test accuracy against the first swept key (mean over seeds).
    plot = curves: the test metric against epoch, one line per grid point (train dashed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(2, len(backends), figsize=(4.2 * len(backends), 6.5), squeeze=False, sharex="col")
    for col, backend in enumerate(backends):
        top, bottom = axes[0][col], axes[1][col]
        mine = [r for r in rows if r["backend"] == backend]
        if sweep.plot == "final":
            finals = _final_rows(mine)
            xs = sorted({float(r[keys[0]]) for r in finals})
            for metric, style in (("train_acc", "--"), ("test_acc", "-")):
                ys = [np.mean([float(r[metric]) for r in finals if float(r[keys[0]]) == x]) for x in xs]
                top.plot(xs, ys, style, marker="o", label=metric)
            gaps = [np.mean([float(r["gap"]) for r in finals if float(r[keys[0]]) == x]) for x in xs]
            bottom.plot(xs, gaps, marker="o", color="tab:red")
            bottom.set_xlabel(keys[0])
        else:
            for label in dict.fromkeys(_label(r, keys) for r in mine):
                series = sorted(
                    (r for r in mine if _label(r, keys) == label and int(r["seed"]) == int(mine[0]["seed"])),
                    key=lambda r: int(r["epoch"]),
                )
                epochs = [int(r["epoch"]) for r in series]
                (line,) = top.plot(epochs, [float(r[f"test_{sweep.metric}"]) for r in series], label=label)
                top.plot(epochs, [float(r[f"train_{sweep.metric}"]) for r in series], "--", color=line.get_color())
                bottom.plot(epochs, [float(r["gap"]) for r in series], color=line.get_color())
            bottom.set_xlabel("epoch")
        top.set_title(backend)
        top.set_ylabel("accuracy" if sweep.plot == "final" or sweep.metric == "acc" else "loss")
        bottom.set_ylabel("gap: train − test accuracy")
        top.legend(fontsize=7)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=90)
    plt.close(fig)


def sweep_summary(rows: list[dict], keys: list[str], name: str) -> str:
    """Markdown: final-epoch metrics per grid point and backend, averaged over seeds."""
    finals = _final_rows(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in finals:
        groups.setdefault((_label(r, keys), r["backend"]), []).append(r)
    lines = [
        f"# Sweep {name}",
        "",
        "| point | backend | seeds | train acc | test acc | gap | test loss |",
        "|---|---|---|---|---|---|---|",
    ]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    labels = list(dict.fromkeys(_label(r, keys) for r in rows))
    for (label, backend), rs in sorted(
        groups.items(), key=lambda kv: (backends.index(kv[0][1]), labels.index(kv[0][0]))
    ):
        mean = {m: np.mean([float(r[m]) for r in rs]) for m in ("train_acc", "test_acc", "gap", "test_loss")}
        lines.append(
            f"| {label} | {backend} | {len(rs)} | {mean['train_acc']:.4f} | {mean['test_acc']:.4f} | "
            f"{mean['gap']:+.4f} | {mean['test_loss']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def bench_plot(rows: list[dict], path: Path) -> None:
    """Samples/s against batch size (log-log): end-to-end epochs per backend and mode, Keras fit, references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple, list] = {}
    for r in rows:
        if "items_per_s" not in r:
            continue
        axis = right if r["kind"] == "step" else left
        if r["kind"] in ("end_to_end", "keras_fit", "reference", "step"):
            series.setdefault((axis is right, r["backend"], r["mode"]), []).append((r["batch_size"], r["items_per_s"]))
    for (is_step, backend, mode), points in sorted(series.items()):
        points.sort()
        axis = right if is_step else left
        axis.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            label=f"{backend} {mode}",
            linestyle="--" if backend.startswith("keras") or mode == "hand-fused" else "-",
        )
    for axis, title in ((left, "end to end (epoch): adapters, Keras fit, hand-fused"), (right, "step alone")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("batch size")
        axis.set_ylabel("samples / s")
        axis.set_title(title)
        if axis.lines:
            axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
