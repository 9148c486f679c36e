"""common.padding: sides, truncation, masks, lengths and bucketing (groundwork for the sequences issue)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.batching import BatchPlan
from common.errors import InputError
from common.padding import bucket_of, kept_lengths, loss_weights, masked_mean, pad_batch, padded_length, resolve_sides
from tests.support import seq_spec

seqs = st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=12), min_size=1, max_size=8)


@settings(max_examples=80, deadline=None)
@given(
    batch=seqs,
    max_len=st.integers(0, 14),
    side=st.sampled_from(["post", "pre"]),
    truncate=st.sampled_from(["post", "pre"]),
)
def test_masked_tokens_are_the_kept_tokens_in_order(batch, max_len, side, truncate):
    tokens, mask, lengths = pad_batch([np.array(s) for s in batch], side, truncate, max_len)
    target = max_len or max(map(len, batch))
    assert tokens.shape == mask.shape == (len(batch), target)
    for row, m, n, s in zip(tokens, mask, lengths, batch, strict=True):
        kept = s[:target] if truncate == "post" else s[-target:] if target else []
        assert row[m].tolist() == list(kept) and n == len(kept)
        assert not row[~m].any()  # pads are token 0
        real = np.flatnonzero(m)
        if n:
            assert (real[0] == 0) if side == "post" else (real[-1] == target - 1)
            assert np.all(np.diff(real) == 1)  # contiguous


def test_keras_and_torch_conventions():
    tokens, _, _ = pad_batch([np.array([1, 2, 3]), np.array([4])], side="pre", truncate="pre", max_len=2)
    assert tokens.tolist() == [[2, 3], [0, 4]]  # keras pad_sequences(maxlen=2) defaults
    tokens, _, lengths = pad_batch([np.array([1]), np.array([2, 3, 4])])
    assert tokens.tolist() == [[1, 0, 0], [2, 3, 4]] and lengths.tolist() == [1, 3]  # pad_sequence(batch_first)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=60),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 3),
    shuffle=st.booleans(),
    last_batch=st.sampled_from(["keep", "drop", "pad"]),
)
def test_bucketed_plan_covers_rows_with_bounded_shapes(lengths, batch_size, seed, shuffle, last_batch):
    lengths = np.array(lengths)
    boundaries = (8, 16, 32)
    counts = np.bincount(bucket_of(lengths, boundaries), minlength=3)
    if last_batch == "drop" and (counts < batch_size).all():
        return  # no batch at all: the plan refuses (tested below)
    plan = BatchPlan(len(lengths), batch_size, shuffle, last_batch, seed, lengths, 0, boundaries)
    batches = plan.batches(0)
    assert len(batches) == plan.steps_per_epoch
    real = np.concatenate([b.real_ids for b in batches])
    assert len(set(real.tolist())) == real.shape[0]  # no row twice
    if last_batch != "drop":
        assert sorted(real.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert b.length in boundaries
        assert len(set(bucket_of(lengths[b.ids], boundaries).tolist())) == 1  # filler from the same bucket
        assert all(lengths[b.ids] <= b.length) or b.length == boundaries[-1]
        assert b.rows == batch_size or (last_batch == "keep" and 1 <= b.rows < batch_size)


def test_bucketed_plan_is_a_streaming_bucketer():
    # rows stream in epoch order; a bucket emits when it holds B rows; leftovers flush in bucket order
    lengths = np.array([5, 1, 2, 6, 1, 3, 7, 2, 9, 1])
    plan = BatchPlan(10, 2, False, "keep", 0, lengths, 0, (2, 5, 9))
    got = [(b.ids.tolist(), b.length) for b in plan.batches(0)]
    assert got == [([1, 2], 2), ([0, 5], 5), ([3, 6], 9), ([4, 7], 2), ([9], 2), ([8], 9)]
    padded = BatchPlan(10, 2, False, "pad", 0, lengths, 0, (2, 5, 9)).batches(0)
    assert [(b.ids.tolist(), b.weights.tolist()) for b in padded[-2:]] == [([9, 1], [1, 0]), ([8, 3], [1, 0])]
    ids, weights = BatchPlan(10, 2, False, "pad", 0, lengths, 0, (2, 5, 9)).slots(0)
    assert ids.tolist() == [*range(10), 1, 3] and weights.tolist() == [1] * 10 + [0, 0]


def test_drop_with_every_bucket_short_is_an_input_error():
    with pytest.raises(InputError, match=r"batching\.batch_size"):
        BatchPlan(4, 3, False, "drop", 0, np.array([1, 9, 2, 9]), 0, (4, 10))


def test_padded_length_rules():
    assert padded_length(np.array([3, 7]), 0, ()) == 7
    assert padded_length(np.array([3, 7]), 5, ()) == 5
    assert padded_length(np.array([3, 12]), 0, (4, 10)) == 10
    assert padded_length(np.array([2, 3]), 0, (4, 10)) == 3  # evaluation: the longest row
    assert padded_length(np.array([2, 3]), 0, (4, 10), bucketed=True) == 4  # a bucketed batch: its bound
    assert padded_length(np.array([5, 12]), 0, (4, 10), bucketed=True) == 10
    assert kept_lengths(np.array([3, 12]), 0, (4, 10)).tolist() == [3, 10]
    assert kept_lengths(np.array([3, 12]), 0, ()).tolist() == [3, 12]


def test_masked_loss_weights_and_nan_free_mean():
    w = np.array([1.0, 1.0, 0.0])
    kept = np.array([2, 4, 3])
    assert loss_weights(w, kept, "per_sequence").tolist() == [1, 1, 0]
    assert loss_weights(w, kept, "per_token").tolist() == [2, 4, 0]
    losses = np.array([0.5, 2.0, 100.0])
    assert masked_mean(losses, loss_weights(w, kept, "per_token")) == (2 * 0.5 + 4 * 2.0) / 6
    assert masked_mean(losses, np.zeros(3)) == 0.0  # all padded: 0, not NaN


def test_native_sides_follow_each_framework():
    spec = seq_spec(sequence={"pad": "native", "truncate": "native"})
    assert resolve_sides(spec, "tf") == ("pre", "pre") and resolve_sides(spec, "torch") == ("post", "post")
    assert resolve_sides(seq_spec(sequence={"pad": "pre", "truncate": "post"}), "tf") == ("pre", "post")
