"""Sequence-classification data: a synthetic generator and JSONL user data (groundwork for the sequences issue).

Token 0 is reserved for padding (common.padding); real tokens are 1..vocab−1.

Synthetic data, deterministic by seed (`default_rng([seed, 6])`): n sequences with lengths uniform in
[min_len, max_len] and tokens uniform in 1..vocab−1. Token t belongs to group g(t) = t mod C; the label is the
group with the most tokens in the whole sequence (ties to the smallest group). Every token counts, so truncating a
sequence or counting pads as tokens can change its label.

JSONL: one object per line, {"tokens": [int, …], "label": int}. Errors name the file and line: unreadable file,
bad JSON, missing keys, empty sequences, non-integer tokens, tokens outside 1..vocab−1 (0 is the pad), labels
outside 0..C−1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError

SEQUENCE_STREAM = 6


@dataclass(frozen=True)
class Sequences:
    tokens: list[np.ndarray]
    labels: np.ndarray
    vocab: int
    n_classes: int

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.tokens])


def majority_group(tokens: np.ndarray, n_classes: int) -> int:
    """The label rule: argmax over groups g of #{t in tokens : t mod C = g}, ties to the smallest g."""
    return int(np.argmax(np.bincount(np.asarray(tokens) % n_classes, minlength=n_classes)))


def synthetic(n: int, min_len: int, max_len: int, vocab: int, n_classes: int, seed: int) -> Sequences:
    """The deterministic synthetic dataset described in the module docstring."""
    if not 1 <= min_len <= max_len:
        raise InputError(f"sequence lengths: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if vocab < 2 or n_classes < 2 or n < 2:
        raise InputError(f"sequence data: need vocab >= 2, classes >= 2 and n >= 2, got {vocab}, {n_classes}, {n}")
    rng = np.random.default_rng([seed, SEQUENCE_STREAM])
    lengths = rng.integers(min_len, max_len + 1, size=n)
    tokens = [rng.integers(1, vocab, size=int(length)) for length in lengths]
    labels = np.array([majority_group(t, n_classes) for t in tokens])
    return Sequences(tokens, labels, vocab, n_classes)


def read_jsonl(path: Path, vocab: int, n_classes: int) -> Sequences:
    """User sequences from JSONL, validated line by line."""
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
        if min(seq) < 1 or max(seq) >= vocab:
            raise InputError(f"{where}: tokens must be in 1..{vocab - 1} (0 is reserved for padding)")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < n_classes:
            raise InputError(f"{where}: label must be an integer in 0..{n_classes - 1}")
        tokens.append(np.array(seq, dtype=np.int64))
        labels.append(label)
    if not tokens:
        raise InputError(f"data file '{path}': no sequences")
    return Sequences(tokens, np.array(labels), vocab, n_classes)
