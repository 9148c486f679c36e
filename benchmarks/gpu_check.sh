#!/usr/bin/env bash
# The GPU check: the paths that need a CUDA device (torch on CUDA with TF32 off, its CUDA-graph "fused" mode and
# capturable Adam; JAX on GPU), on a machine with torch, jax, flax and optax (TensorFlow is not needed), about
# 6 minutes. Usage: benchmarks/gpu_check.sh [OUT_FOLDER]   (default runs/gpu-check; PYTHON picks the interpreter)
# 1. the torch and jax backend, image and bench test files, which run on the GPU when there is one;
# 2. `parity bench --device gpu` of the mlp and cnn workloads on torch and jax (no Keras peer).
# It exits 1 when a step fails or passes its time limit; OUT_FOLDER/summary.txt lists each step's exit and time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-check}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name" | tee -a "$out/summary.txt"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 3 "$out/$name.log"
    echo "== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}
nvidia-smi -L | tee "$out/summary.txt"
$py -c 'import torch, jax; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
"| jax", jax.__version__, jax.default_backend(), jax.devices())' | tee -a "$out/summary.txt"
xdist=$($py -c 'import xdist' 2>/dev/null && echo "-n 6")
step torch-tests 150 $py -m pytest -q -p no:cacheprovider $xdist tests/backends/test_torch_backend.py \
    tests/backends/test_torch_images.py tests/backends/test_torch_bench.py
step jax-tests 120 $py -m pytest -q -p no:cacheprovider $xdist tests/backends/test_jax_backend.py \
    tests/backends/test_jax_images.py tests/backends/test_jax_bench.py
for workload in mlp cnn; do  # JAX's eager mode (op by op, minutes per timed epoch on a GPU) is left out
    step "bench-$workload-torch" 90 $py -m benchmarks bench --workload "$workload" --device gpu --backends torch \
        --no-keras --batch-sizes 128,1024 --budget 0.5 --rounds 10 --cap 15 --out "$out/bench-$workload-torch"
    step "bench-$workload-jax" 90 $py -m benchmarks bench --workload "$workload" --device gpu --backends jax \
        --modes compiled,fused --no-keras --batch-sizes 128,1024 --budget 0.5 --rounds 10 --cap 15 \
        --out "$out/bench-$workload-jax"
done
exit $status
