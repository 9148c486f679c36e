"""Presets: the seeds' experiments as spec files with a `[sweep]` table (benchmarks/presets/*.toml).

[sweep]
grid = { "regularization.dropout" = [0.0, 0.1, 0.2] }   # dotted spec keys → values (cartesian product); a value
                                                        # that is a table sets its keys together under the grid
                                                        # key: "batching" = [{batch_size = 32}, {batch_size = 8,
                                                        # accumulate = 4}] pairs them instead of crossing them
seeds = [0]
backends = ["torch", "tf", "jax"]                       # the numpy oracle always runs too
plot = "final"        # final: final metrics against the swept value | curves: metric against epoch
metric = "acc"        # acc | loss (what the curves show)
[sweep.ci]            # the reduced size CI runs; `--full` ignores it
grid = { "regularization.dropout" = [0.0, 0.5] }
set = { "train.epochs" = 2 }
"""

from __future__ import annotations

import itertools
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from backends import FRAMEWORKS
from common import InputError
from common.spec import Spec, apply_overrides, typed, validate

PRESET_DIR = Path(__file__).resolve().parent / "presets"
SWEEP_KEYS = {"grid", "seeds", "backends", "plot", "metric", "ci"}


@dataclass
class Sweep:
    grid: dict[str, list]
    seeds: list[int] = field(default_factory=lambda: [0])
    backends: list[str] = field(default_factory=lambda: list(FRAMEWORKS))
    plot: str = "final"
    metric: str = "acc"
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """One grid point and seed, as a validated spec."""

    label: str
    point: dict
    seed: int
    spec: Spec


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def describe(name: str) -> str:
    """A preset's one-line description: the first line of its leading comment ("" when it has none)."""
    for line in (PRESET_DIR / f"{name}.toml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            return ""
        text = line.lstrip("#").strip()
        if text:
            return text
    return ""


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _parse_sweep(table: dict, full: bool, source: str) -> Sweep:
    unknown = sorted(set(table) - SWEEP_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown key 'sweep.{unknown[0]}'")
    grid = table.get("grid")
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise InputError(f"{source}: 'sweep.grid' must map spec keys to non-empty lists")
    sweep = Sweep(
        grid=dict(grid),
        seeds=table.get("seeds", [0]),
        backends=table.get("backends", list(FRAMEWORKS)),
        plot=table.get("plot", "final"),
        metric=table.get("metric", "acc"),
    )
    if sweep.plot not in ("final", "curves") or sweep.metric not in ("acc", "loss"):
        raise InputError(f"{source}: 'sweep.plot' must be final|curves and 'sweep.metric' acc|loss")
    if not sweep.seeds or not all(isinstance(s, int) and s >= 0 for s in sweep.seeds):
        raise InputError(f"{source}: 'sweep.seeds' must be a list of non-negative integers")
    if not full and "ci" in table:
        ci = table["ci"]
        sweep.grid.update(ci.get("grid", {}))
        sweep.seeds = ci.get("seeds", sweep.seeds)
        sweep.overrides = dict(ci.get("set", {}))
    return sweep


def load_preset(name_or_path: str, full: bool) -> tuple[dict, Sweep, str]:
    """(raw spec, sweep, preset name) for a preset name or a TOML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.toml"
        if len(Path(name_or_path).parts) != 1 or name_or_path in (".", "..") or not path.exists():
            raise InputError(f"preset '{name_or_path}': unknown (choose from {', '.join(list_presets())})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"preset file '{path}': not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"preset file '{path}': unreadable ({exc})") from None
    if "sweep" not in raw:
        raise InputError(f"preset file '{path}': no [sweep] table")
    sweep = _parse_sweep(raw.pop("sweep"), full, f"preset file '{path}'")
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"]:
        data["path"] = os.path.abspath(path.parent / data["path"])  # against the preset file's folder
    return raw, sweep, path.stem


def _point_sets(point: dict) -> list[str]:
    """The overrides of one grid point; a table value sets each of its keys under the grid key."""
    sets = []
    for key, value in point.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        sets += [f"{key}.{sub}={_toml_value(v)}" if sub else f"{key}={_toml_value(v)}" for sub, v in items]
    return sets


def expand(raw: dict, sweep: Sweep) -> list[Run]:
    """Every (grid point, seed) as a validated spec; errors name the key."""
    keys = list(sweep.grid)
    base = apply_overrides(raw, [f"{k}={_toml_value(v)}" for k, v in sweep.overrides.items()])
    runs = []
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        given = dict(zip(keys, values, strict=True))
        point = {k: _toml_value(v) if isinstance(v, dict) else v for k, v in given.items()}
        label = ",".join(f"{k}={v}" for k, v in point.items())
        for seed in sweep.seeds:
            sets = [*_point_sets(given), f"seed={seed}"]
            spec = typed(validate(apply_overrides(base, sets)))
            spec = replace(spec, name=f"{spec.name}[{label},seed={seed}]")
            runs.append(Run(label, point, seed, spec))
    return runs
