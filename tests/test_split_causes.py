"""The split-step causes (common.split_causes) on hand-made records: what each record says it did names the trap."""

from common.explain import explain
from common.native import SPLIT_IDIOMS, split_idiom, split_reduction
from tests.support import make_spec


def _record(steps, mode="native", split=None, shuffle=True, accumulate=1):
    spec = make_spec(
        mode=mode, batching={"shuffle": shuffle, "accumulate": accumulate, "batch_size": 4}, train={"epochs": 2}
    )
    rec = {"spec": spec.to_dict(), "steps": steps, "epochs": []}
    if split:
        rec["split"] = split
    return rec


def _steps(epochs, shards=None):
    """steps from per-epoch lists of batches (row ids)."""
    out = []
    for e, batches in enumerate(epochs, 1):
        for ids in batches:
            out.append({"epoch": e, "step": len(out) + 1, "batch_ids": ids, "batch_size": len(ids), "loss": 1.0})
            if shards:
                out[-1]["shards"] = shards(ids)
    return out


def test_records_whose_steps_were_not_split_have_no_split_cause():
    repeated = _record(_steps([[[0, 1, 0, 1]], [[0, 1, 0, 1]]]))  # no `split` row: one device, the rows as asked
    assert _traps({"torch": repeated, "tf": _record(_steps([[[0, 1, 2, 3]], [[3, 2, 1, 0]]]))}) == []


def _traps(records):
    return sorted({c["trap"] for c in explain({k: (r, {}) for k, r in records.items()})})


def even(ids):
    return [[ids[: len(ids) // 2]], [ids[len(ids) // 2 :]]]


def first_only(ids):  # a ragged step: replica 0 takes the rows, replica 1 none
    return [[ids], [[]]] if len(ids) < 4 else even(ids)


def test_the_split_reduction_of_each_idiom():
    assert split_reduction(SPLIT_IDIOMS["torch"], 1) == "mean_of_means"  # DDP's average of replica means
    assert split_reduction(SPLIT_IDIOMS["tf"], 4) == "global_batch_divisor"  # compute_average_loss(G) / K
    assert split_reduction(SPLIT_IDIOMS["jax"], 1) == "global_mean"  # the jitted mean over the global batch
    assert split_reduction(SPLIT_IDIOMS["jax"], 4) == "mean_of_means"  # MultiSteps' mean of micro-batch means
    exact = make_spec(distributed={"replicas": 2}, batching={"reduction": "mean_of_means"})
    assert split_reduction(split_idiom(exact, "torch"), 1) == "mean_of_means"
    assert split_idiom(make_spec(), "torch") is None  # not split: no row


def test_sampler_padding_is_named_from_repeated_rows():
    padded = _record(_steps([[[0, 1, 2, 3], [4, 0]], [[2, 4, 1, 3], [0, 2]]]), split=SPLIT_IDIOMS["torch"])
    once = _record(_steps([[[0, 1, 2, 3], [4]], [[2, 4, 1, 3], [0]]]))
    assert _traps({"torch": padded, "jax": once}) == ["sampler-padding"]


def test_sampler_same_order_is_named_when_shuffled_epochs_repeat():
    same = _record(_steps([[[3, 1, 4, 0]], [[3, 1, 4, 0]]]), split=SPLIT_IDIOMS["torch"])
    fresh = _record(_steps([[[3, 1, 4, 0]], [[0, 4, 1, 3]]]))
    assert _traps({"torch": same, "tf": fresh}) == ["sampler-same-order"]
    unshuffled = _record(_steps([[[0, 1, 2, 3]], [[0, 1, 2, 3]]]), split=SPLIT_IDIOMS["torch"], shuffle=False)
    assert _traps({"torch": unshuffled, "tf": fresh}) == []  # the same order is what was asked


def test_a_global_batch_divisor_on_a_ragged_step_is_named():
    tf = _record(_steps([[[0, 1, 2, 3], [4, 5]]], first_only), split=SPLIT_IDIOMS["tf"])
    oracle = _record(
        _steps([[[0, 1, 2, 3], [4, 5]]], first_only),
        split=split_idiom(make_spec(distributed={"replicas": 2}, batching={"batch_size": 4}), "numpy"),
    )
    assert _traps({"tf": tf, "numpy": oracle}) == ["average-loss-global-batch"]
    full = _record(_steps([[[0, 1, 2, 3], [4, 5, 6, 7]]], even), split=SPLIT_IDIOMS["tf"])
    assert _traps({"tf": full, "numpy": oracle}) == []  # no ragged step in tf's record: the divisor is exact


def test_ddp_part_means_against_a_global_mean_on_a_ragged_step():
    torch = _record(_steps([[[0, 1, 2, 3], [4, 5]]], first_only), split=SPLIT_IDIOMS["torch"])
    jax = _record(_steps([[[0, 1, 2, 3], [4, 5]]], first_only), split=SPLIT_IDIOMS["jax"])
    assert _traps({"torch": torch, "jax": jax}) == ["mean-of-means"]
    assert _traps({"torch": torch, "torch2": torch}) == []


def test_batch_norm_statistics_over_other_rows_are_named():
    from common.distributed import single_device
    from tests.support import BN_SYNC, bn_spec

    def rec(spec):  # a split record carries its `split` row (common.native.split_idiom), the twin none
        split = split_idiom(spec, "torch")
        return {"spec": spec.to_dict(), "steps": [], "epochs": [], **({"split": split} if split else {})}

    per_replica = bn_spec("bn-r2")  # 16-row global batch over 2 replicas: bn0 normalises 8 rows at a time
    causes = explain({"torch": (rec(per_replica), {}), "torch-single": (rec(single_device(per_replica)), {})})
    (cause,) = [c for c in causes if c["trap"] == "batch-norm-statistics"]
    assert "model.layers[1]" in cause["why"] and "groups of 8" in cause["why"] and "groups of 16" in cause["why"]
    synced = bn_spec(BN_SYNC)  # the 16 rows pooled: the twin's statistics
    both = {"torch": (rec(synced), {}), "torch-single": (rec(single_device(synced)), {})}
    assert not [c for c in explain(both) if c["trap"] == "batch-norm-statistics"]
