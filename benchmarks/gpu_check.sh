#!/usr/bin/env bash
# The GPU checks of issue 13 in one run, for a session whose task is lent a GPU (the device
# tool; check its status first, which costs nothing):
#
#     run(command="bash benchmarks/gpu_check.sh", timeout_s=500)
#
# 1. the CUDA tests (pytest -m gpu: the GPU computes what the CPU computes, in float64; compiled
#    inference, also under CUDA graphs, what eager inference computes; TF32's tensor cores what
#    tests/test_tf32.py's emulation computes, and ep refused under them);
# 2. cases (d) and (f) of bench_step.py (VGG-5, max-pool/ReLU and average-pool/tanh) on the GPU,
#    eager, then with compiled layers (inductor): timings, ratios to BP, peak memory, agreement;
# 3. case (a) (the seed MLP, whose pc_nudge estimate compiles as one graph, the default and the
#    50 fixed gd steps alike: algorithms.graph_estimate) for bp and pc_nudge, eager, compiled,
#    and compiled with CUDA graphs (--compile-mode reduce-overhead; on a GPU only).
#
# What comes back: $OUT/log.txt and $OUT/RESULTS.md, a copy of benchmarks/RESULTS.md with the
# GPU sections (d-cuda, f-cuda, d-cuda-compiled, f-cuda-compiled) added beside the CPU ones,
# each written as soon as its case is done; copy it over benchmarks/RESULTS.md. Each step has its
# own time limit (450 s together), so a slow compile cannot take the rest of the run with it;
# the script exits non-zero, naming the steps, when any step failed.
#
# A dry run on the CPU, tiny networks (what the smoke test runs, with CASES=f and
# COMPILE_BACKEND=aot_eager): DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/pl_energy_gpu_check}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"  # the device machine's python3 holds PyTorch
read -r -a cases <<< "${CASES:-d f}"
size=(--repeats 11)
[ -n "${QUICK:-}" ] && size=(--quick)
mkdir -p "$OUT"
log="$OUT/log.txt"
: > "$log"
failed=0

# step SECONDS COMMAND...: run it under a time limit, its output into the log; a failure (124: the
# limit) is logged and counted, and the next step still runs
step() {
    local limit=$1
    shift
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        echo "gpu_check: FAILED (exit $status$([ "$status" -eq 124 ] && echo ", over ${limit} s")): $*" | tee -a "$log"
        failed=$((failed + 1))
    fi
}

step 30 "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
step 150 "$PYTHON" -m pytest -q -m gpu tests/test_deep_networks.py tests/test_compiled_inference.py tests/test_tf32.py -p no:cacheprovider
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
for compiled in "" "--compile=${COMPILE_BACKEND:-inductor}"; do
    step 150 "$PYTHON" benchmarks/bench_step.py --device "$DEVICE" --case "${cases[@]}" "${size[@]}" $compiled \
        --variants bp z_il pc_nudge_converged pc_converged ep chl --output "$OUT/RESULTS.md"
done
modes=("" "--compile=${COMPILE_BACKEND:-inductor}")
[ "$DEVICE" = cuda ] && modes+=("--compile=inductor --compile-mode=reduce-overhead")
for compiled in "${modes[@]}"; do
    step 120 "$PYTHON" benchmarks/bench_step.py --device "$DEVICE" --case a "${size[@]}" $compiled \
        --variants bp pc_nudge pc_nudge_converged --output "$OUT/RESULTS.md"
done
if [ "$failed" -ne 0 ]; then
    echo "gpu_check: $failed step(s) failed; the sections written are in $OUT/RESULTS.md" | tee -a "$log"
    exit 1
fi
echo "gpu_check done: $OUT/RESULTS.md" | tee -a "$log"
