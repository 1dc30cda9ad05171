#!/bin/bash
# Recipe B (preregistration.md, Amendment 3), the remaining rows: Table 2 (a) as the paper words it,
# (b) at the main rate, Table 3 (a) point (primary, seed-major), then Table 3 (b), (c), (e), (f)
# (secondary). Table 3 (d) point + mask is the default prompt set, so its runs are Table 2 (c)'s
# (the runner reuses them: "[t3d_point_mask seed S = t2c_pretrained]"). Same output folder as
# run_lrhalf.sh, so the comparisons pair each row with the same seed's Table 2 (c).
# From the repository root, in the background, after run.sh has prepared the data and the tiny SAM:
#
#   nohup bash docs/studies/table2_powered/run_lrhalf_rows2.sh > docs/studies/table2_powered/run_rows2.log 2>&1 &
#
# Interrupted: run it again. It writes no summary; summarise all rows at once with
#   python tools/study_powered.py --sam output/sam_tiny/sam_tiny.pth --seeds 0,1,2,3,4,5,6,7 \
#       --rows t2c_pretrained,t2b_random_low,t2a_no_sam,t2a_paper,t2b_random_main,t3a_point,t3b_box,t3c_point_box,t3d_point_mask,t3e_box_mask,t3f_all \
#       --out output/table2_powered_lrhalf --eval-images 4000 --summarise-only --publish docs/studies/table2_powered lr=1.5e-3 low_lr=5e-4
set -euo pipefail
cd "$(dirname "$0")/../../.."
STUDY=docs/studies/table2_powered
OUT=${OUT:-output/table2_powered_lrhalf}
SEEDS_A=${SEEDS_A:-0,2,4}
SEEDS_B=${SEEDS_B:-1,3,5}
EVAL_IMAGES=${EVAL_IMAGES:-4000}
SAM=${SAM:-output/sam_tiny/sam_tiny.pth}
ROWS=${ROWS:-t2a_paper,t2b_random_main,t3a_point,t3b_box,t3c_point_box,t3e_box_mask,t3f_all}
RECIPE="lr=1.5e-3 low_lr=5e-4"
PY=${PY:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$PWD
mkdir -p $STUDY
echo "$(date -u '+%F %T') run_lrhalf_rows2.sh at $(git rev-parse HEAD) seeds $SEEDS_A / $SEEDS_B, rows $ROWS, $RECIPE"
for seeds in "$SEEDS_A" "$SEEDS_B"; do
  nice -n 10 $PY tools/study_powered.py --sam "$SAM" --seeds "$seeds" --out "$OUT" --eval-images "$EVAL_IMAGES" \
    --rows "$ROWS" $RECIPE > "$STUDY/runner_rows2_seeds_${seeds//,/-}.log" 2>&1 &
done
wait
echo "$(date -u '+%F %T') done"
