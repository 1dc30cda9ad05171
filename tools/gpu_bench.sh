#!/usr/bin/env bash
# The GPU benchmark set for the README, in one go (under 8 minutes on one H200):
#   ESC-Net and CAT-Seg x ViT-B/16 and ViT-L/14 x T = 150 x single view and sliding window, under
#   bf16 autocast and in fp32, each against the GPU's own measured matmul throughput of that dtype
#   (latency, images/s over 10 timed images after 3 warm-up images, peak allocated and reserved
#   memory); the same at ViT-B/16, one view, compiled (torch.compile, inductor; compile time reported
#   separately: warm-up passes are not timed); the per-part profile (kernel time) of both models at
#   ViT-B/16, T = 150, one view, bf16; and a short training-step benchmark (ViT-B/16, T = 171, bf16).
# Usage: bash tools/gpu_bench.sh [OUTDIR]   (default: $OUT if set, else ./gpu_bench)
#   PYTHON picks the interpreter (default python3); it needs torch with CUDA, numpy, safetensors.
# Writes OUTDIR/{device.txt, models_bf16.json, models_fp32.json, compiled_bf16.json, compiled_fp32.json,
#   profile_bf16.json, train_bf16.json} and a .log per step;
# exits non-zero if a step failed (the other steps still run).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-gpu_bench}}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$py" - <<'PY' | tee "$out/device.txt" || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_bench.sh: torch sees no CUDA GPU")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY

failed=0
step() {
    local name=$1 start=$SECONDS
    shift
    if "$py" -m escnet benchmark "$@" --json "$out/$name.json" >"$out/$name.log" 2>&1; then
        echo "$name: done in $((SECONDS - start)) s"
    else
        echo "$name: FAILED after $((SECONDS - start)) s (see $out/$name.log)"
        failed=1
    fi
}
models=(--device cuda --sizes vitb16 vitl14 --classes 150 --protocols single sliding --warmup 3 --repeats 10)
step models_bf16 --what roofline models --dtype bf16 "${models[@]}"
step models_fp32 --what roofline models --dtype fp32 "${models[@]}"
compiled=(--device cuda --sizes vitb16 --classes 150 --protocols single --warmup 2 --repeats 10 --compile)
step compiled_bf16 --what roofline models --dtype bf16 "${compiled[@]}"
step compiled_fp32 --what roofline models --dtype fp32 "${compiled[@]}"
step profile_bf16 --what profile --dtype bf16 --device cuda --sizes vitb16 --classes 150 --protocols single --warmup 3
step train_bf16 --what train --dtype bf16 --device cuda --train-size vitb16 --train-classes 171 --train-batch 4 \
    --train-steps 10 --warmup 3
for name in models_bf16 models_fp32 compiled_bf16 compiled_fp32 profile_bf16 train_bf16; do
    echo "== $name"
    grep -E '^(\||matmul|Profile)' "$out/$name.log" || true
done
exit $failed
