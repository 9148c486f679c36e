"""Name the cause of a divergence where the records show a known trap (DESIGN §1: "explains divergence").

Each rule looks at what two records say they did, not at the numbers, and fires only when that difference is a
catalogued trap (common.traps) that changes the result:

- `pad-side-unmasked`: the two backends padded on different sides (common.padding.resolve_sides, e.g.
  `sequence.pad = "native"`: Keras pad_sequences pre-pads, torch pad_sequence post-pads) while `sequence.mask` is
  off. An unmasked RNN then reads the pads before the real tokens on one side and after them on the other. With a
  mask the side does not matter (common.padding), so the rule stays silent.
- `truncate-side`: the two backends cut over-long sequences from different ends (Keras truncates `pre` by default)
  and at least one training row is longer than the cap, so they trained on different tokens — mask or no mask.

`explain(records)` returns one entry per (pair, cause): {a, b, trap, why}.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from common.padding import length_cap


def _sides(rec: dict) -> dict | None:
    return rec.get("padding")


def _truncates(rec: dict, npz: dict) -> bool:
    seq = rec["spec"]["sequence"]
    cap = length_cap(seq["max_len"], seq["buckets"])
    lengths = npz.get("train_lengths")
    return bool(cap and lengths is not None and np.max(lengths) > cap)


def explain(records: dict[str, tuple[dict, dict]]) -> list[dict]:
    """The known causes that separate each pair of records (module docstring)."""
    out = []
    for a, b in combinations(sorted(records), 2):
        (rec_a, npz_a), (rec_b, _) = records[a], records[b]
        sides_a, sides_b = _sides(rec_a), _sides(rec_b)
        if sides_a is None or sides_b is None:
            continue
        mask = rec_a["spec"]["sequence"]["mask"]
        if sides_a["pad"] != sides_b["pad"] and not mask:
            out.append({"a": a, "b": b, "trap": "pad-side-unmasked",
                        "why": f"{a} pads {sides_a['pad']} and {b} pads {sides_b['pad']} with sequence.mask = false: "
                               f"the model reads the pad tokens, before the real tokens when pre-padded and after "
                               f"them when post-padded (Keras pad_sequences pads pre by default, torch pad_sequence "
                               f"and tf padded_batch post); turn the mask on or pad on one side"})
        if sides_a["truncate"] != sides_b["truncate"] and _truncates(rec_a, npz_a):
            out.append({"a": a, "b": b, "trap": "truncate-side",
                        "why": f"{a} truncates {sides_a['truncate']} and {b} {sides_b['truncate']}: rows longer than "
                               f"the cap keep different tokens (Keras pad_sequences truncates pre by default)"})
    return out
