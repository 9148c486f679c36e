"""The record format (docs/design.md, "Records"): `<backend>.json` for the run and `<backend>.npz` for the arrays.

JSON: backend, versions, device, dtype, spec (resolved), steps [{epoch, step, batch_ids, batch_size, loss}],
epochs [{epoch, train_loss, train_acc, test_loss, test_acc, eval_batch_sizes}], timing. Sequence data adds
`padded_length` to every step (the time dimension the native pipeline delivered) and `padding` {pad, truncate}:
the sides this backend used (common.padding.resolve_sides). NPZ `train_x` is then the post-padded token storage
and `train_lengths` the raw lengths (common.datasets).
NPZ:  init/<name>, final/<name> (canonical layout), losses (float64 per step), train_x, train_y.
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
        **({"padding": body["padding"]} if "padding" in body else {}),
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
