"""Sequence-classification data: a synthetic generator and JSONL user data (`data.name = "sequences" | "jsonl"`).

Token 0 is reserved for padding (common.padding); real tokens are 1..vocab−1, so `vocab` counts the pad.

Spec params (`[data.params]`): sequences takes n (240), min_len (2), max_len (12), vocab (20), classes (3); jsonl
takes vocab and classes, each inferred from the file (max token + 1, max label + 1) when not given.

Synthetic data, deterministic by seed (`default_rng([seed, 6])`): n sequences with lengths uniform in
[min_len, max_len] and tokens uniform in 1..vocab−1. Token t belongs to group g(t) = t mod C; the label is the
group with the most tokens in the whole sequence (ties to the smallest group). Every token counts, so truncating a
sequence or counting pads as tokens can change its label.

JSONL: one object per line, {"tokens": [int, …], "label": int}. Errors name the file and line: unreadable file,
bad JSON, missing keys, empty sequences, non-integer tokens, tokens outside 1..vocab−1 (0 is the pad) or above
common.spec.MAX_TOKEN, labels outside 0..C−1 or above MAX_CLASSES − 1. With classes inferred, the labels found must
be exactly 0..C−1: a file whose labels skip a class ({1, 2, 3}, {0, 7}) is refused (re-index it), it would train
classes that never occur. Sizes are checked before the padded storage is allocated: n × longest ≤ MAX_ELEMENTS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import rng as streams
from common.errors import InputError
from common.spec import MAX_CLASSES, MAX_ELEMENTS, MAX_TOKEN


@dataclass(frozen=True)
class Sequences:
    tokens: list[np.ndarray]
    labels: np.ndarray
    vocab: int
    n_classes: int

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.tokens], dtype=np.int64)

    def storage(self) -> np.ndarray:
        """All sequences post-padded with token 0 to the longest: (N, max n_i) int64, the form datasets keep."""
        out = np.zeros((len(self.tokens), int(self.lengths.max())), dtype=np.int64)
        for i, seq in enumerate(self.tokens):
            out[i, : len(seq)] = seq
        return out


def majority_group(tokens: np.ndarray, n_classes: int) -> int:
    """The label rule: argmax over groups g of #{t in tokens : t mod C = g}, ties to the smallest g."""
    return int(np.argmax(np.bincount(np.asarray(tokens) % n_classes, minlength=n_classes)))


def synthetic(n: int, min_len: int, max_len: int, vocab: int, n_classes: int, seed: int) -> Sequences:
    """The deterministic synthetic dataset described in the module docstring."""
    if not 1 <= min_len <= max_len:
        raise InputError(f"spec key 'data.params.min_len': need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    for key, value in (("vocab", vocab), ("classes", n_classes), ("n", n)):
        if value < 2:
            raise InputError(f"spec key 'data.params.{key}': must be at least 2, got {value}")
    rng = np.random.default_rng([seed, streams.SEQUENCES])
    lengths = rng.integers(min_len, max_len + 1, size=n)
    tokens = [rng.integers(1, vocab, size=int(length)) for length in lengths]
    labels = np.array([majority_group(t, n_classes) for t in tokens])
    return Sequences(tokens, labels, vocab, n_classes)


SYNTHETIC_DEFAULTS = {"n": 240, "min_len": 2, "max_len": 12, "vocab": 20, "classes": 3}
PARAM_LIMITS = {"vocab": MAX_TOKEN + 1, "classes": MAX_CLASSES, "max_len": MAX_ELEMENTS, "min_len": MAX_ELEMENTS}


def _int_params(params: dict, allowed: dict, name: str) -> dict:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InputError(f"spec key 'data.params.{unknown[0]}': unknown key for {name} ({', '.join(allowed)})")
    out = dict(allowed)
    for key, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"spec key 'data.params.{key}': expected a positive integer, got {value!r}")
        if value > PARAM_LIMITS.get(key, MAX_ELEMENTS):
            raise InputError(
                f"spec key 'data.params.{key}': {value} is above the limit {PARAM_LIMITS.get(key, MAX_ELEMENTS)}"
            )
        out[key] = value
    return out


def from_params(params: dict, seed: int) -> Sequences:
    """`data.name = "sequences"`: the synthetic dataset with the spec's params (module docstring)."""
    p = _int_params(params, SYNTHETIC_DEFAULTS, "sequences")
    if p["n"] * p["max_len"] > MAX_ELEMENTS:
        raise InputError(
            f"spec key 'data.params.n': n × max_len = {p['n']} × {p['max_len']} tokens, above the limit {MAX_ELEMENTS}"
        )
    return synthetic(p["n"], p["min_len"], p["max_len"], p["vocab"], p["classes"], seed)


def from_jsonl(path: Path, params: dict) -> Sequences:
    """`data.name = "jsonl"`: the file's sequences, with vocab and classes from params or inferred."""
    p = _int_params(params, {"vocab": None, "classes": None}, "jsonl")
    return read_jsonl(path, p["vocab"], p["classes"])


def read_jsonl(path: Path, vocab: int | None = None, n_classes: int | None = None) -> Sequences:
    """User sequences from JSONL, validated line by line; vocab / n_classes None: inferred from the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"data file '{path}': not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"data file '{path}': unreadable ({exc.__class__.__name__})") from None
    tokens, labels = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"data file '{path}' line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{where}: not valid JSON") from None
        if not isinstance(row, dict) or "tokens" not in row or "label" not in row:
            raise InputError(f"{where}: expected an object with 'tokens' and 'label'")
        seq, label = row["tokens"], row["label"]
        if not isinstance(seq, list) or not seq:
            raise InputError(f"{where}: 'tokens' must be a non-empty list")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in seq):
            raise InputError(f"{where}: tokens must be integers")
        if min(seq) < 1 or (vocab is not None and max(seq) >= vocab):
            allowed = f"1..{vocab - 1}" if vocab is not None else "≥ 1"
            raise InputError(f"{where}: tokens must be in {allowed} (0 is reserved for padding)")
        if max(seq) > MAX_TOKEN:
            raise InputError(f"{where}: token {max(seq)} is above the limit {MAX_TOKEN}")
        if (
            not isinstance(label, int)
            or isinstance(label, bool)
            or label < 0
            or (n_classes is not None and label >= n_classes)
        ):
            allowed = f"0..{n_classes - 1}" if n_classes is not None else "≥ 0"
            raise InputError(f"{where}: label must be an integer in {allowed}")
        if label >= MAX_CLASSES:
            raise InputError(f"{where}: label {label} is above the limit {MAX_CLASSES - 1}")
        tokens.append(np.array(seq, dtype=np.int64))
        labels.append(label)
    if not tokens:
        raise InputError(f"data file '{path}': no sequences")
    longest = max(len(t) for t in tokens)
    if len(tokens) * longest > MAX_ELEMENTS:
        raise InputError(
            f"data file '{path}': {len(tokens)} sequences × longest {longest} tokens is above the limit {MAX_ELEMENTS}"
        )
    labels = np.array(labels, dtype=np.int64)
    if n_classes is None:
        found = np.unique(labels)
        if len(found) < 2:
            raise InputError(f"data file '{path}': need at least 2 classes, labels are all {labels.max()}")
        if len(found) != int(found[-1]) + 1:
            missing = sorted(set(range(int(found[-1]) + 1)) - set(found.tolist()))
            raise InputError(
                f"data file '{path}': labels are not 0..{int(found[-1])} (label {missing[0]} never occurs); "
                f"re-index them to 0..{len(found) - 1}, or set data.params.classes"
            )
    n_classes = n_classes or int(labels.max()) + 1
    if n_classes < 2:
        raise InputError(f"data file '{path}': need at least 2 classes, labels are all {labels.max()}")
    return Sequences(tokens, labels, vocab or max(int(t.max()) for t in tokens) + 1, n_classes)
