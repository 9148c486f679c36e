"""common.padding: sides, truncation, masks, lengths and bucketing (groundwork for the sequences issue)."""

import numpy as np
from hypothesis import given, settings, strategies as st

from common.padding import bucket_of, bucketed_batches, pad_batch

seqs = st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=12), min_size=1, max_size=8)


@settings(max_examples=80, deadline=None)
@given(batch=seqs, max_len=st.integers(0, 14), side=st.sampled_from(["post", "pre"]),
       truncate=st.sampled_from(["post", "pre"]))
def test_masked_tokens_are_the_kept_tokens_in_order(batch, max_len, side, truncate):
    tokens, mask, lengths = pad_batch([np.array(s) for s in batch], side, truncate, max_len)
    target = max_len or max(map(len, batch))
    assert tokens.shape == mask.shape == (len(batch), target)
    for row, m, n, s in zip(tokens, mask, lengths, batch):
        kept = s[:target] if truncate == "post" else s[-target:] if target else []
        assert row[m].tolist() == list(kept) and n == len(kept)
        assert not row[~m].any()  # pads are token 0
        real = np.flatnonzero(m)
        if n:
            assert (real[0] == 0) if side == "post" else (real[-1] == target - 1)
            assert np.all(np.diff(real) == 1)  # contiguous


def test_keras_and_torch_conventions():
    tokens, mask, _ = pad_batch([np.array([1, 2, 3]), np.array([4])], side="pre", truncate="pre", max_len=2)
    assert tokens.tolist() == [[2, 3], [0, 4]]  # keras pad_sequences(maxlen=2) defaults
    tokens, _, lengths = pad_batch([np.array([1]), np.array([2, 3, 4])])
    assert tokens.tolist() == [[1, 0, 0], [2, 3, 4]] and lengths.tolist() == [1, 3]  # pad_sequence(batch_first)


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=60), batch_size=st.integers(1, 9),
       seed=st.integers(0, 3), shuffle=st.booleans())
def test_bucketing_covers_each_row_once_with_bounded_shapes(lengths, batch_size, seed, shuffle):
    lengths = np.array(lengths)
    boundaries = [8, 16, 32]
    batches = bucketed_batches(lengths, batch_size, boundaries, seed, epoch=0, shuffle=shuffle)
    ids = np.concatenate([b for b, _ in batches])
    assert sorted(ids.tolist()) == list(range(len(lengths)))
    assert {bound for _, bound in batches} <= set(boundaries)
    for rows, bound in batches:
        assert len(set(bucket_of(lengths[rows], boundaries).tolist())) == 1
        assert all(lengths[rows] <= bound) or bound == boundaries[-1]
        assert 1 <= len(rows) <= batch_size
