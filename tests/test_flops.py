"""common.flops: training FLOPs per sample of resolved stacks, counted by hand here; the peak probe's timing."""

import pytest

from benchmarks.bench import bench_spec
from common.datasets import load_dataset
from common.driver import model_layers
from common.flops import gemm_flops, train_flops_per_sample
from common.timing import fastest
from tests.support import make_spec

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


def _flops(spec) -> int:
    return train_flops_per_sample(model_layers(spec, load_dataset(spec)))


def test_the_mlp_workload_counts_its_two_dense_products():
    # doughnuts 2 → 32 → 2: forward 2·2·32 + 2·32·2 = 256, training 3 × 256
    assert _flops(bench_spec(None, [], "mlp")) == 768


def test_the_cnn_workload_counts_convolutions_and_dense_only():
    # 8×8×1 → conv 3×3 "same" 16 → batch_norm, relu, max_pool (0) → 4×4×16 → conv 3×3 "same" 32 → global_avg_pool
    # → dense 32 → 10: forward 2·8·8·16·9·1 + 2·4·4·32·9·16 + 2·32·10 = 18432 + 147456 + 640
    assert _flops(bench_spec(None, [], "cnn")) == 3 * (18432 + 147456 + 640)


def test_a_strided_convolution_counts_its_output_positions():
    # 8×8×1, conv 3×3 stride 2 "same" 4 filters → 4×4×4, flatten → dense 64 → 10 (digits)
    layers = [
        {"kind": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
        {"kind": "flatten"},
        {"kind": "dense"},
    ]
    spec = make_spec(data={"name": "digits", "images": True}, model={"layers": layers})
    assert _flops(spec) == 3 * (2 * 4 * 4 * 4 * 9 * 1 + 2 * 64 * 10)


def test_the_peak_probe_is_a_2n_cubed_gemm_timed_at_its_fastest():
    assert gemm_flops(1024) == 2 * 1024**3
    now, costs, synced = [0.0], iter([9.0, 3.0, 2.0, 4.0]), []

    def call():
        now[0] += next(costs)
        return "c"

    # the first call (9 s) is the untimed warm-up; then the fastest of three
    assert fastest(call, synced.append, repeats=3, clock=lambda: now[0]) == 2.0 and synced == ["c"] * 4


def test_an_rnn_counts_its_input_and_recurrent_products_per_real_token():
    # tokens 64 → embedding 16 (a gather: 0) → rnn 32 → dense 4, rows of 10 real tokens on average:
    # forward 10 · 2 · (16·32 + 32·32) + 2·32·4 = 30720 + 256
    spec = bench_spec(None, [], "seq")
    assert train_flops_per_sample(model_layers(spec, load_dataset(spec)), tokens=10) == 3 * (30720 + 256)
