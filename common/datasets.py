"""Datasets, the train/test split and standardisation (numpy only).

- `doughnuts`: two concentric noisy rings (the seeds' toy). Params: n (total points), noise (std of the radial
  noise), radii (inner, outer). Label k is the ring k.
- `iris` (150×4, 3 classes) and `digits` (1797×64, 10 classes): scikit-learn's bundled copies, no download (read
  from its data folder as load_iris and load_digits read them: importing sklearn would cost each process ~0.7 s).
  `data.images = true` gives digits as images (1797, 8, 8, 1), canonical NHWC.
- `csv`: numeric feature columns plus an integer label column (`data.label_column`), with a header row.
- `npz`: arrays `x` (N×F, or N×H×W×C: images) and `y` (N,).
- `sequences` (synthetic) and `jsonl` (user data): token sequences, see common.sequences. They are kept as
  `x` = (N, max length) int64 post-padded with token 0 plus `lengths`; pipelines rebuild each row as
  x[i, :lengths[i]] and pad it their own way (common.padding). `standardize` does not apply to tokens.

Validation (`check_arrays`, docs/design.md "Spec"): features finite and, with dtype = float32, within float32's
range; labels exact integers in 0..MAX_CLASSES−1 whose set is exactly 0..C−1. Labels that skip a class ({1, 2, 3},
{0, 7}) are refused, not re-indexed: the message names the missing class and asks for labels 0..k−1. A csv whose
header names the label column twice is refused. `check_sizes` bounds the largest array the model implies
(common.spec.MAX_ELEMENTS) before any backend allocates it.

Split: one permutation from `default_rng([seed, 1])`; the first round(N·test_fraction) rows are the test split,
the rest the training split, each kept in permutation order. Standardisation: x' = (x − μ)/σ with μ, σ from the
training split only, per column of features and per channel of images (over every row and pixel; σ = 1 where a
column or channel is constant); a column whose plain μ or σ overflows (values near 1e300)
gets them from the column divided by its largest magnitude, so it is rescaled, never zeroed. Row ids in records
index the training split so produced.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common import layers, sequences
from common import rng as streams
from common.errors import InputError
from common.spec import MAX_CLASSES, MAX_ELEMENTS

if TYPE_CHECKING:
    from common.spec import Spec


@dataclass(frozen=True)
class Dataset:
    """The split, standardised data in float64; cast to the spec dtype by the consumer."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    n_classes: int
    train_lengths: np.ndarray | None = None  # sequence data: raw token counts n_i per row
    test_lengths: np.ndarray | None = None
    vocab: int = 0  # sequence data: token ids 0..vocab−1, 0 the pad

    @property
    def n_features(self) -> int:
        """Values per row: F for features, H·W·C for images."""
        return int(np.prod(self.train_x.shape[1:]))

    @property
    def is_image(self) -> bool:
        return self.train_x.ndim == 4

    @property
    def input_shape(self) -> int | tuple[int, ...]:
        """What the first layer reads: the vocabulary (token data), (H, W, C) (images) or F (features)."""
        if self.is_sequence:
            return self.vocab
        return tuple(int(n) for n in self.train_x.shape[1:]) if self.is_image else self.n_features

    @property
    def is_sequence(self) -> bool:
        return self.train_lengths is not None

    def lengths(self, split: str) -> np.ndarray:
        return getattr(self, f"{split}_lengths")

    def sequences(self, split: str, ids: np.ndarray) -> list[np.ndarray]:
        """The raw token arrays of rows `ids` of `split` (sequence data)."""
        x, lengths = getattr(self, f"{split}_x"), self.lengths(split)
        return [x[i, : lengths[i]] for i in np.asarray(ids)]


def _doughnuts(params: Mapping, seed: int) -> tuple[np.ndarray, np.ndarray]:
    allowed = {"n", "noise", "radii"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InputError(f"spec key 'data.params.{unknown[0]}': unknown key for doughnuts (n, noise, radii)")
    n = params.get("n", 400)
    noise = params.get("noise", 0.1)
    radii = params.get("radii", [1.0, 2.0])
    if isinstance(radii, tuple):  # the typed spec (common.spec.Spec) keeps lists as tuples
        radii = list(radii)
    if not isinstance(n, int) or isinstance(n, bool) or n < 4:
        raise InputError(f"spec key 'data.params.n': expected an integer >= 4, got {n!r}")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not np.isfinite(noise) or noise < 0:
        raise InputError(f"spec key 'data.params.noise': expected a number >= 0, got {noise!r}")
    if (
        not isinstance(radii, list)
        or len(radii) != 2
        or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in radii)
    ):
        raise InputError(f"spec key 'data.params.radii': expected two positive numbers, got {radii!r}")
    rng = np.random.default_rng([seed, streams.DATA])
    y = np.arange(n) % 2
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    radius = np.asarray(radii, dtype=np.float64)[y] + noise * rng.standard_normal(n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return x, y


def _sklearn(name: str, params: Mapping, images: bool) -> tuple[np.ndarray, np.ndarray]:
    if params:
        raise InputError(f"spec key 'data.params.{sorted(params)[0]}': {name} takes no params")
    found = importlib.util.find_spec("sklearn")  # its location only: sklearn is not imported
    if found is None:
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    folder = Path(found.submodule_search_locations[0]) / "datasets" / "data"
    if name == "iris":  # a header row (n, features, class names), then 4 features and the label per row
        rows = np.loadtxt(folder / "iris.csv", delimiter=",", skiprows=1)
    else:  # 64 pixels (8×8, row-major) and the label per row
        rows = np.loadtxt(folder / "digits.csv.gz", delimiter=",")
    x, y = rows[:, :-1], rows[:, -1].astype(int)
    return (x.reshape(-1, 8, 8, 1) if images else x), y


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise InputError(f"data file '{path}': not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"data file '{path}': unreadable ({exc.__class__.__name__})") from None
    if not rows:
        raise InputError(f"data file '{path}': empty")
    header, body = rows[0], [r for r in rows[1:] if r]
    if label_column not in header:
        raise InputError(f"data file '{path}': no label column '{label_column}' (spec key 'data.label_column')")
    if header.count(label_column) > 1:
        raise InputError(
            f"data file '{path}': the header names the label column '{label_column}' {header.count(label_column)} "
            "times (spec key 'data.label_column'); rename the others"
        )
    if not body:
        raise InputError(f"data file '{path}': no data rows")
    label_at = header.index(label_column)
    features, labels = [], []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InputError(f"data file '{path}': line {line} has {len(row)} fields, header has {len(header)}")
        try:
            values = [float(v) for v in row]
        except ValueError:
            raise InputError(f"data file '{path}': line {line} has a non-numeric value") from None
        values.pop(label_at)
        labels.append(_csv_label(row[label_at].strip(), f"data file '{path}' line {line}"))
        features.append(values)
    return np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def _csv_label(text: str, where: str) -> int:
    """A csv label read exactly ("3", "3.0"; not "1e300", "1.5", "-1", "nan")."""
    try:
        value = int(text)
    except ValueError:
        number = float(text)
        if not np.isfinite(number) or number != int(number):
            raise InputError(f"{where}: label {text} is not a non-negative integer") from None
        value = int(number)
    if not 0 <= value < MAX_CLASSES:
        raise InputError(f"{where}: label {text} is not an integer in 0..{MAX_CLASSES - 1}")
    return value


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise InputError(f"data file '{path}': missing array '{missing[0]}' (needs x and y)")
            x, y = archive["x"], archive["y"]
    except FileNotFoundError:
        raise InputError(f"data file '{path}': not found") from None
    except InputError:
        raise
    except Exception as exc:  # np.load raises several unrelated types on corrupt files
        raise InputError(f"data file '{path}': unreadable ({exc.__class__.__name__})") from None
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise InputError(f"data file '{path}': x and y must be numeric")
    return x.astype(np.float64), y  # y keeps its dtype: a uint64 label must not round through float64


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_arrays(
    x: np.ndarray, y: np.ndarray, source: str, dtype: str = "float64"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate features (N, F) or images (N, H, W, C) and labels; return (x, integer y, number of classes C =
    max(y) + 1).

    Errors: empty data, x neither 2-D nor 4-D, mismatched lengths, NaN/inf, features beyond `dtype`'s range, labels
    that are not exact integers in 0..MAX_CLASSES−1, labels that skip a class (the set must be 0..C−1), fewer than
    2 classes. Messages name the value and its row (0-based, in the order read).
    """
    if x.ndim == 4:
        if 0 in x.shape:
            raise InputError(f"{source}: empty data (images of shape {x.shape})")
        _, labels, n_classes = check_arrays(x.reshape(x.shape[0], -1), y, source, dtype)
        return x, labels, n_classes
    if x.ndim != 2:
        raise InputError(
            f"{source}: x must be 2-D (rows × features) or 4-D (rows × height × width × channels), got shape {x.shape}"
        )
    if y.ndim != 1:
        raise InputError(f"{source}: y must be 1-D, got shape {y.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{source}: empty data")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{source}: {x.shape[0]} feature rows but {y.shape[0]} labels")
    if not np.all(np.isfinite(x)):
        row, col = _first(~np.isfinite(x))
        raise InputError(f"{source}: features contain NaN or inf ({x[row, col]} at row {row}, column {col})")
    if dtype == "float32":
        limit = float(np.finfo(np.float32).max)
        if np.any(np.abs(x) > limit):
            row, col = _first(np.abs(x) > limit)
            raise InputError(
                f"{source}: feature value {x[row, col]:g} at row {row}, column {col} is beyond float32's range "
                f"(±{limit:.4g}); set dtype = 'float64' or rescale the data"
            )
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= MAX_CLASSES)
    else:
        bad = (y < 0) | (y >= MAX_CLASSES)  # exact for int64 and uint64 alike
    if np.any(bad):
        row = _first(bad)[0]
        raise InputError(f"{source}: labels must be integers in 0..{MAX_CLASSES - 1}, found {y[row]!s} at row {row}")
    labels = y.astype(np.int64)
    n_classes = int(labels.max()) + 1
    present = np.unique(labels)
    if len(present) < 2:
        raise InputError(f"{source}: need at least 2 classes, labels are all {labels.max()}")
    if len(present) != n_classes:
        missing = sorted(set(range(n_classes)) - set(present.tolist()))
        raise InputError(
            f"{source}: labels are not 0..{n_classes - 1} (label {missing[0]} never occurs, {len(present)} "
            f"classes found); re-index them to 0..{len(present) - 1}"
        )
    return x, labels, n_classes


def split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, source: str):
    """Deterministic split: permutation from default_rng([seed, 1]); test = the first round(N·f) rows."""
    n = x.shape[0]
    n_test = round(n * test_fraction)
    if n_test < 1 or n - n_test < 1:
        raise InputError(f"spec key 'data.test_fraction': {test_fraction} leaves an empty split of {source} ({n} rows)")
    order = np.random.default_rng([seed, streams.SPLIT]).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def standardize(train_x: np.ndarray, test_x: np.ndarray, source: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """x' = (x − μ)/σ, μ and σ (population std) from the training split; σ := 1 for constant columns. Images
    (N, H, W, C) are standardised per channel: their pixels are the rows."""
    if train_x.ndim == 4:
        channels = train_x.shape[-1]
        train, test = standardize(train_x.reshape(-1, channels), test_x.reshape(-1, channels), source)
        return train.reshape(train_x.shape), test.reshape(test_x.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = train_x.mean(axis=0)
        std = train_x.std(axis=0)
    huge = ~(np.isfinite(mean) & np.isfinite(std))
    if np.any(huge):  # the plain sums overflow: standardise those columns from x / max|x| instead
        scale = np.abs(train_x[:, huge]).max(axis=0)
        train_x, test_x = train_x.copy(), test_x.copy()
        train_x[:, huge] /= scale
        test_x[:, huge] /= scale
        mean[huge] = train_x[:, huge].mean(axis=0)
        std[huge] = train_x[:, huge].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    train_out, test_out = (train_x - mean) / std, (test_x - mean) / std
    if not (np.all(np.isfinite(train_out)) and np.all(np.isfinite(test_out))):
        col = _first(~np.isfinite(np.concatenate([train_out, test_out])))[1]
        raise InputError(f"{source}: column {col} overflows when standardised; rescale it (data.standardize)")
    return train_out, test_out


def _load_sequences(spec: Spec) -> Dataset:
    data, seed = spec.data, spec.seed
    if data.name == "sequences":
        found, source = sequences.from_params(data.params, seed), "sequences"
    else:
        found, source = sequences.from_jsonl(Path(data.path), data.params), f"data file '{data.path}'"
    x = np.concatenate([found.storage(), found.lengths[:, None]], axis=1)
    train_x, train_y, test_x, test_y = split(x, found.labels, data.test_fraction, seed, source)
    return check_sizes(
        spec,
        Dataset(
            train_x[:, :-1],
            train_y,
            test_x[:, :-1],
            test_y,
            found.n_classes,
            train_x[:, -1].copy(),
            test_x[:, -1].copy(),
            found.vocab,
        ),
    )


def check_sizes(spec: Spec, data: Dataset) -> Dataset:
    """Refuse a model whose largest parameter tensor or layer output over a split would exceed MAX_ELEMENTS
    (exit 2 naming the key), before any backend allocates it; return `data`."""
    stack = layers.stack(spec, data.input_shape, data.n_classes)
    rows = max(len(data.train_y), len(data.test_y))
    shapes = layers.param_shapes(stack)
    for layer in stack:
        sizes = [(f"{name} {shape}", int(np.prod(shape, dtype=np.float64))) for name, shape in shapes.items()]
        sizes = [s for s in sizes if s[0].startswith(f"{layer.name}.")] if layer.name else []
        per_row = int(np.prod(layer.shape, dtype=np.int64)) if layer.shape else layer.width
        sizes.append((f"the output of layer {layer.index} over {rows} rows", rows * per_row))
        what, count = max(sizes, key=lambda s: s[1])
        if count > MAX_ELEMENTS:
            if spec.model.layers:
                key = f"model.layers[{layer.index}]"
            elif layer.kind == "embedding":
                key = "model.embed_dim"
            else:
                key = "model.hidden"
            source = f" (vocab {data.vocab})" if layer.kind == "embedding" else ""
            raise InputError(
                f"spec key '{key}': {what}{source} needs {count:,} values, above the limit {MAX_ELEMENTS:,}"
            )
    return data


def load_dataset(spec: Spec) -> Dataset:
    """Build the split (and optionally standardised) dataset a resolved spec names."""
    data = spec.data
    name, seed = data.name, spec.seed
    if name in ("sequences", "jsonl"):
        return _load_sequences(spec)
    if name == "doughnuts":
        x, y = _doughnuts(data.params, seed)
        source = "doughnuts"
    elif name in ("iris", "digits"):
        x, y = _sklearn(name, data.params, data.images)
        source = name
    else:
        if data.params:
            raise InputError(f"spec key 'data.params.{sorted(data.params)[0]}': {name} takes no params")
        path = Path(data.path)
        x, y = _read_csv(path, data.label_column) if name == "csv" else _read_npz(path)
        source = f"data file '{path}'"
    x, y, n_classes = check_arrays(x, y, source, spec.dtype)
    train_x, train_y, test_x, test_y = split(x, y, data.test_fraction, seed, source)
    if data.standardize:
        train_x, test_x = standardize(train_x, test_x, source)
    return check_sizes(spec, Dataset(train_x, train_y, test_x, test_y, n_classes))
