#!/bin/bash
# Pseudo prompts of a model TRAINED with the revised PPG default, beside the bundled model (trained with
# the old rule): per-block PPG statistics against the ground truth, and the rules on each model's maps
# (issue 25). From the repository root; CPU, one thread each; ~15-40 min in all on a 2-core machine.
# The results are written up in docs/ppg.md, "A model trained with the new default".
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=docs/studies/ppg_trained
OUT=${OUT:-output/escnet_tiny_synthetic_newppg}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# 1. the bundled model's recipe, unchanged, with today's defaults (the revised PPG)
escnet prepare synthetic
[ -f "$OUT/model/model.safetensors" ] || \
  escnet train --config configs/escnet_tiny_synthetic.toml output_dir="$OUT" threads=1 num_workers=0 > $HERE/train.log 2>&1
cp "$OUT/metrics.jsonl" $HERE/train_metrics.jsonl
# 2. escnet evaluate on the synthetic validation split, both models, one view; PPG lines + results.json
escnet evaluate --model default --dataset synthetic --protocol single --device cpu --threads 1 \
  --output output/ppg_trained/eval_bundled > $HERE/eval_bundled.log 2>&1
escnet evaluate --model "$OUT/model" --dataset synthetic --protocol single --device cpu --threads 1 \
  --output output/ppg_trained/eval_newppg > $HERE/eval_newppg.log 2>&1
cp output/ppg_trained/eval_bundled/results.json $HERE/results_bundled.json
cp output/ppg_trained/eval_newppg/results.json $HERE/results_newppg.json
# 3. every PPG rule on the new model's own maps (the bundled model's: docs/ppg_study.json)
python tools/ppg_study.py --part real --scenes 100 --model "$OUT/model" --json $HERE/rules_newppg.json \
  > $HERE/rules_newppg.md
