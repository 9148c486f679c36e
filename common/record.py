"""The record format (docs/design.md, "Records"): `<backend>.json` for the run and `<backend>.npz` for the arrays.

JSON: backend, versions, device, dtype, spec (resolved), steps [{epoch, step, batch_ids, batch_size, loss}],
epochs [{epoch, train_loss, train_acc, test_loss, test_acc, eval_batch_sizes}], timing. Sequence data adds
`padded_length` to every step (the time dimension the native pipeline delivered) and `padding` {pad, truncate}:
the sides this backend used (common.padding.resolve_sides). NPZ `train_x` is then the post-padded token storage
and `train_lengths` the raw lengths (common.datasets). A stack with image or batch_norm layers adds `layers`: what
those layers did in this run (common.native.layer_settings: BN momentum, ε, estimator, flatten order, "same"
padding, avg-pool divisor), which common.explain reads. Split steps (common.distributed) add `shards` to every
step and `split`: how this backend split them (common.native.split_idiom: sampler, loss divisor, accumulation).
`idioms`: the ids of common.idioms on in this run (sorted; empty in plain exact mode).
NPZ:  init/<name>, final/<name> (canonical layout), losses (float64 per step), train_x, train_y.
Non-finite training is a result, not an error: `first_nonfinite_step` is the first step whose loss is NaN or ±inf
(null when all are finite) and `first_nonfinite_epoch` the first epoch with a non-finite metric (null likewise).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.datasets import Dataset

if TYPE_CHECKING:
    from common.spec import Spec


EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def _first_nonfinite_epoch(epochs: list[dict]) -> int | None:
    """The first epoch with a NaN or ±inf epoch metric, or None."""
    flags = [0.0 if np.all(np.isfinite([e.get(m, 0.0) for m in EPOCH_METRICS])) else np.nan for e in epochs]
    return first_nonfinite(flags, [e["epoch"] for e in epochs])


def first_nonfinite(values, index: list[int]) -> int | None:
    """The index entry (step or epoch) of the first NaN or ±inf in `values`, or None when all are finite."""
    bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
    return int(index[int(np.argmax(bad))]) if bad.any() else None


def nonfinite(record: dict, npz: dict) -> dict:
    """What went non-finite in one record, read from its values (records older than the field work too):
    {step, value ('nan' | 'inf' | '-inf'), epoch, params [names]}; empty when everything is finite."""
    losses = np.array([s["loss"] for s in record["steps"]], dtype=np.float64)
    out: dict = {}
    step = first_nonfinite(losses, [s["step"] for s in record["steps"]])
    if step is not None:
        first = losses[~np.isfinite(losses)][0]
        out["step"], out["value"] = step, "nan" if np.isnan(first) else ("inf" if first > 0 else "-inf")
    epoch = _first_nonfinite_epoch(record.get("epochs", []))
    if epoch is not None:
        out["epoch"] = epoch
    params = sorted(k for k, v in npz.items() if k.startswith("final/") and not np.all(np.isfinite(np.asarray(v))))
    if params:
        out["params"] = params
    return out


def build(backend: str, versions: dict, device: str, spec: Spec, body: dict) -> dict:
    """The JSON part of a record from the driver's output (the spec in its JSON form, `Spec.to_dict`)."""
    return {
        "backend": backend,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, **versions},
        "device": device,
        "dtype": spec.dtype,
        "spec": spec.to_dict(),
        "steps": body["steps"],
        "epochs": body["epochs"],
        "timing": body["timing"],
        "idioms": body["idioms"],
        "first_nonfinite_step": first_nonfinite([s["loss"] for s in body["steps"]], [s["step"] for s in body["steps"]]),
        "first_nonfinite_epoch": _first_nonfinite_epoch(body["epochs"]),
        **({"padding": body["padding"]} if "padding" in body else {}),
        **({"layers": body["layers"]} if "layers" in body else {}),
        **({"split": body["split"]} if "split" in body else {}),
    }


def arrays(body: dict, data: Dataset) -> dict[str, np.ndarray]:
    """The NPZ part of a record."""
    out = {f"init/{k}": np.asarray(v) for k, v in body["init"].items()}
    out.update({f"final/{k}": np.asarray(v) for k, v in body["final"].items()})
    out["losses"] = np.array([s["loss"] for s in body["steps"]], dtype=np.float64)
    out["train_x"], out["train_y"] = data.train_x, data.train_y
    if data.is_sequence:
        out["train_lengths"] = data.train_lengths
    return out


def write(folder: Path, record: dict, npz: dict[str, np.ndarray]) -> None:
    """Write `<folder>/<backend>.json` and `.npz` (each via a temporary name, so no half-written record)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = record["backend"]
    tmp_json, tmp_npz = folder / f".{name}.json.tmp", folder / f".{name}.tmp.npz"
    tmp_json.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    np.savez(tmp_npz, **npz)
    tmp_json.replace(folder / f"{name}.json")
    tmp_npz.replace(folder / f"{name}.npz")


def read(folder: Path, backend: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Load one backend's record (JSON dict, NPZ arrays)."""
    record = json.loads((folder / f"{backend}.json").read_text(encoding="utf-8"))
    with np.load(folder / f"{backend}.npz") as archive:
        npz = {k: archive[k] for k in archive.files}
    return record, npz
