import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import InputError
from common.batching import BatchPlan, eval_batches

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60), b=st.integers(1, 70), shuffle=st.booleans(), seed=st.integers(0, 5), epoch=st.integers(0, 3)
)
def test_plan_policies(n, b, shuffle, seed, epoch):
    keep = BatchPlan(n, b, shuffle, "keep", seed).batches(epoch)
    real = np.concatenate([x.real_ids for x in keep])
    assert sorted(real.tolist()) == list(range(n))  # every row exactly once
    assert all(x.rows == b for x in keep[:-1]) and keep[-1].rows == (n % b or b)
    pad = BatchPlan(n, b, shuffle, "pad", seed).batches(epoch)
    assert all(x.rows == b for x in pad)  # static shape
    assert [x.real_ids.tolist() for x in pad] == [x.ids.tolist() for x in keep]
    assert sum(x.n_real for x in pad) == n
    if n >= b:
        drop = BatchPlan(n, b, shuffle, "drop", seed).batches(epoch)
        assert len(drop) == n // b and all(x.rows == b for x in drop)
        assert [x.ids.tolist() for x in drop] == [x.ids.tolist() for x in keep[: n // b]]
    for policy, batches in (("keep", keep), ("pad", pad)):
        assert BatchPlan(n, b, shuffle, policy, seed).steps_per_epoch == len(batches)


def test_shuffle_differs_by_epoch_and_is_reproducible():
    plan = BatchPlan(120, 7, True, "keep", 0)
    assert not np.array_equal(plan.order(0), plan.order(1))
    assert np.array_equal(plan.order(1), BatchPlan(120, 7, True, "keep", 0).order(1))
    assert np.array_equal(BatchPlan(120, 7, False, "keep", 0).order(3), np.arange(120))


def test_slots_chunk_into_batches():
    plan = BatchPlan(10, 4, True, "pad", 1)
    ids, weights = plan.slots(0)
    assert ids.shape == (12,) and weights.tolist()[-2:] == [0.0, 0.0]
    assert [b.ids.tolist() for b in plan.batches(0)] == [ids[i : i + 4].tolist() for i in (0, 4, 8)]


def test_drop_larger_than_data_is_an_input_error():
    with pytest.raises(InputError, match=r"batching\.batch_size"):
        BatchPlan(5, 8, True, "drop", 0)


def test_eval_batches():
    batches = eval_batches(30, 28)
    assert [b.rows for b in batches] == [28, 2]
    assert [b.rows for b in eval_batches(30, 0)] == [30]
