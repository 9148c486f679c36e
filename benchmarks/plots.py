"""PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.frameworks import FRAMEWORKS, REGISTRY

DISTANCE_FLOOR = 1e-18  # |loss − reference| of exactly 0 is drawn here on the log scale


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: it takes a fraction of a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def backend_colours(names) -> dict[str, str]:
    """One colour per backend, the same in every panel (matplotlib's tab10 cycle in the order given)."""
    cycle = [f"C{i}" for i in range(10)]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _draw(axis, series: list[tuple], log: bool, label: str) -> None:
    """Draw (steps, values, kwargs) series; `log`: a log scale, or, when the values pass 1e100 (matplotlib's
    log-axis ticks overflow to inf and raise near 1e300), log10 of the values on a linear axis, so labelled."""
    values = [v for _, ys, _ in series for v in ys[np.isfinite(ys)]]
    extreme = log and bool(values) and (max(values) > 1e100 or min(values) < 1e-100)
    for steps, ys, kwargs in series:
        axis.plot(steps, np.log10(ys) if extreme else ys, **kwargs)
    if log and not extreme:
        axis.set_yscale("log")
    axis.set_ylabel(f"log10 {label}" if extreme else label)


def loss_plot(records: dict, reference: str, path: Path, comparison: dict | None = None) -> None:
    """Per-step loss of every backend (top) and |loss − reference| on a log scale (bottom).

    Non-finite losses (NaN, ±inf) are left out of both panels, with a note naming the backend and its first
    non-finite step; exactly equal losses have no logarithm and are drawn at DISTANCE_FLOOR, which a note says.
    With `comparison` (comparison.json) the title carries the verdict and the tolerance.
    """
    plt = pyplot()

    from benchmarks.report import verdict_line

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    colours = backend_colours([reference, *sorted(n for n in records if n != reference)])
    ref = np.asarray(records[reference][1]["losses"], np.float64) if reference in records else None
    notes, floored, upper, lower = [], False, [], []
    for name, (_, npz) in records.items():
        losses = np.asarray(npz["losses"], np.float64)
        steps = np.arange(1, losses.shape[0] + 1)
        finite = np.isfinite(losses)
        if not finite.all():
            k = int(np.argmax(~finite))
            notes.append(f"{name}: {losses[k]} from step {k + 1} ({int((~finite).sum())} points not drawn)")
        style = {"label": name, "color": colours[name], "linewidth": 1.0}
        upper.append(
            (steps, np.where(finite, losses, np.nan), {**style, "linestyle": "--" if name == reference else "-"})
        )
        if ref is not None and name != reference and ref.shape == losses.shape:
            with np.errstate(invalid="ignore", over="ignore"):
                dist = np.abs(losses - ref)
            ok = np.isfinite(dist)
            floored |= bool((dist[ok] == 0).any())
            lower.append(
                (
                    steps,
                    np.where(ok, np.maximum(dist, DISTANCE_FLOOR), np.nan),
                    {**style, "label": f"{name} − {reference}"},
                )
            )
    positive = [v for _, ys, _ in upper for v in ys[np.isfinite(ys) & (ys > 0)]]
    _draw(top, upper, bool(positive) and max(positive) / min(positive) > 1e4, "training loss (pre-update)")
    _draw(bottom, lower, True, f"|loss − {reference}|")
    top.legend(fontsize=8)
    if notes:
        top.set_title("non-finite, not drawn: " + "; ".join(notes), fontsize=7, color="tab:red", wrap=True)
    bottom.set_xlabel("step")
    if floored:
        bottom.text(
            0.01,
            0.02,
            f"exactly equal losses drawn at {DISTANCE_FLOOR:g} (no logarithm of 0)",
            transform=bottom.transAxes,
            fontsize=7,
            va="bottom",
        )
    if bottom.lines:
        bottom.legend(fontsize=8)
    if comparison is not None:
        tol = comparison["tolerance"]
        title = verdict_line(comparison, sorted(comparison.get("failed", {})))
        fig.suptitle(f"{title}\ntolerance: rtol {tol['rtol']:g}, atol {tol['atol']:g}", fontsize=8, wrap=True)
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
    plt = pyplot()

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


MODE_COLOURS = {"eager": "C0", "compiled": "C1", "fused": "C2"}  # one colour per mode in every panel


def bench_plot(rows: list[dict], path: Path, value: str = "items_per_s") -> None:
    """One panel per framework, `value` against batch size: each mode's end-to-end epoch (one colour per mode across
    panels, the bootstrap interval of samples/s as error bars), the hand-fused reference and the Keras fit peer
    dashed. `value` "items_per_s" (bench.png, log-log) or "mfu" (bench_mfu.png, model FLOP utilisation)."""
    plt = pyplot()

    frameworks = [b for b in FRAMEWORKS if any(r["backend"] == b for r in rows)]
    keras = {b: f"keras[{REGISTRY[b].keras_backend}]" for b in frameworks}
    fig, axes = plt.subplots(1, max(1, len(frameworks)), figsize=(4.6 * max(1, len(frameworks)), 4.2), squeeze=False)
    for axis, backend in zip(axes[0], frameworks, strict=False):
        lines: dict[tuple, list] = {}
        for r in rows:
            if r.get(value) is None:
                continue
            if r["backend"] == backend and r["kind"] in ("end_to_end", "reference"):
                lines.setdefault((r["kind"], r["mode"]), []).append(r)
            elif r["backend"] == keras[backend] and r["kind"] == "keras_fit":
                lines.setdefault(("keras_fit", "Keras fit"), []).append(r)
        for (kind, mode), points in sorted(lines.items()):
            points.sort(key=lambda r: r["batch_size"])
            xs, ys = [r["batch_size"] for r in points], [r[value] for r in points]
            style = {"marker": "o", "label": mode}
            if kind == "end_to_end":
                style["color"] = MODE_COLOURS.get(mode)
            else:
                style |= {"linestyle": "--", "color": "k" if kind == "reference" else "0.55"}
            if value == "items_per_s" and all("items_per_s_ci" in r for r in points):
                below = [y - r["items_per_s_ci"][0] for y, r in zip(ys, points, strict=True)]
                above = [r["items_per_s_ci"][1] - y for y, r in zip(ys, points, strict=True)]
                axis.errorbar(xs, ys, yerr=[below, above], capsize=3, **style)
            else:
                axis.plot(xs, ys, **style)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("batch size")
        axis.set_ylabel("samples / s (end to end)" if value == "items_per_s" else "model FLOP utilisation")
        axis.set_title(backend)
        if axis.lines:
            axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def explain_plot(result: dict, path: Path) -> None:
    """`parity explain`: one panel per pair; per idiom the share of the native test-loss gap it explains, turned
    on alone (solid) and turned off alone (light), semantic idioms first; noise idioms' seed-to-seed spread of the
    gap, over |native gap|, hatched."""
    plt = pyplot()

    pairs = result["pairs"]
    if not pairs:
        return
    height = max(2.5, 0.35 * max(len(p["idioms"]) for p in pairs) + 1.2)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), height), squeeze=False)
    for axis, pair in zip(axes[0], pairs, strict=True):
        rows = {r["id"]: r for r in pair["idioms"]}
        order = pair["ranking"]["semantic"] + pair["ranking"]["noise"]
        gap = pair["native_gap"]["test_loss"]["mean"] or float("nan")
        ys = np.arange(len(order))[::-1]
        for y, idiom in zip(ys, order, strict=True):
            r = rows[idiom]
            if r["class"] == "semantic":
                axis.barh(y + 0.18, r["on"]["test_loss"] / gap, height=0.36, color="C0")
                axis.barh(y - 0.18, r["off"]["test_loss"] / gap, height=0.36, color="C0", alpha=0.4)
            else:
                axis.barh(y, r["spread"]["test_loss"] / abs(gap), height=0.5, color="C7", hatch="//", alpha=0.6)
        axis.set_yticks(ys, order, fontsize=8)
        axis.axvline(0.0, color="k", lw=0.8)
        axis.axvline(1.0, color="k", lw=0.8, ls=":")
        axis.set_xlabel("share of the native test-loss gap")
        axis.set_title(f"{pair['a']} − {pair['b']}: gap {pair['native_gap']['test_loss']['mean']:+.3g}", fontsize=9)
    fig.suptitle(f"{result['spec']['name']}: on alone (dark), off alone (light), noise spread (hatched)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
