#!/usr/bin/env bash
# The GPU checks of issue 13 in one run, for a session whose task is lent a GPU (the device
# tool; check its status first, which costs nothing):
#
#     run(command="bash benchmarks/gpu_check.sh", timeout_s=420)
#
# 1. the CUDA tests (pytest -m gpu: the GPU computes what the CPU computes, in float64);
# 2. cases (d) and (f) of bench_step.py (VGG-5, max-pool/ReLU and average-pool/tanh) on the GPU,
#    eager, then with compiled layers (inductor): timings, ratios to BP, peak memory, agreement.
#
# What comes back: $OUT/log.txt and $OUT/RESULTS.md, a copy of benchmarks/RESULTS.md with the
# GPU sections (d-cuda, f-cuda, d-cuda-compiled, f-cuda-compiled) added beside the CPU ones;
# copy it over benchmarks/RESULTS.md. Each step has its own time limit, so a slow compile cannot
# take the rest of the run with it.
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
mkdir -p "$OUT"
log="$OUT/log.txt"
: > "$log"
size=(--repeats 11)
[ -n "${QUICK:-}" ] && size=(--quick)
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$log"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
timeout 90 "$PYTHON" -m pytest -q -m gpu tests/test_deep_networks.py -p no:cacheprovider 2>&1 | tee -a "$log"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
for compiled in "" "--compile=${COMPILE_BACKEND:-inductor}"; do
    timeout 150 "$PYTHON" benchmarks/bench_step.py --device "$DEVICE" --case "${cases[@]}" "${size[@]}" $compiled \
        --variants bp z_il pc_nudge_converged pc_converged ep chl --output "$OUT/RESULTS.md" 2>&1 | tee -a "$log"
done
echo "gpu_check done: $OUT/RESULTS.md" | tee -a "$log"
