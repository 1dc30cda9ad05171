#!/bin/bash
# Recipe B of the powered Table 2 study (preregistration.md, Amendment 3): the tiny recipe with both
# learning rates halved (lr 1.5e-3, low_lr 5e-4), the rows of H1/H2 first, seed-major, two runners.
# From the repository root, in the background, after run.sh has prepared the data and the tiny SAM:
#
#   nohup bash docs/studies/table2_powered/run_lrhalf.sh > docs/studies/table2_powered/run.log 2>&1 &
#
# Interrupted: run it again (finished runs are reused, a cut training resumes). Partial results:
#   python tools/study_powered.py --sam output/sam_tiny/sam_tiny.pth --seeds 0,1,2,3,4,5,6,7,8,9,10,11,12 \
#       --rows t2c_pretrained,t2b_random_low,t2a_no_sam,t2a_paper,t2b_random_main,t3a_point,t3b_box,t3c_point_box,t3d_point_mask,t3e_box_mask,t3f_all \
#       --out output/table2_powered_lrhalf --eval-images 4000 \
#       --summarise-only --publish docs/studies/table2_powered lr=1.5e-3 low_lr=5e-4
set -euo pipefail
cd "$(dirname "$0")/../../.."
STUDY=docs/studies/table2_powered
OUT=${OUT:-output/table2_powered_lrhalf}
SEEDS_A=${SEEDS_A:-0,2,4,6,8,10,12}
SEEDS_B=${SEEDS_B:-1,3,5,7,9,11}
EVAL_IMAGES=${EVAL_IMAGES:-4000}
SAM=${SAM:-output/sam_tiny/sam_tiny.pth}
ROWS=${ROWS:-t2c_pretrained,t2b_random_low,t2a_no_sam}
# the summary covers every recipe-B row finished so far, not only the rows this call trains
ALL_ROWS=t2c_pretrained,t2b_random_low,t2a_no_sam,t2a_paper,t2b_random_main,t3a_point,t3b_box,t3c_point_box,t3d_point_mask,t3e_box_mask,t3f_all
RUNNER_LOG=${RUNNER_LOG:-runner_seeds}
RECIPE="lr=1.5e-3 low_lr=5e-4"
PY=${PY:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$PWD
mkdir -p $STUDY
echo "$(date -u '+%F %T') $(basename "$0") at $(git rev-parse HEAD) seeds $SEEDS_A / $SEEDS_B, rows $ROWS, $RECIPE"
for seeds in "$SEEDS_A" "$SEEDS_B"; do
  nice -n 10 $PY tools/study_powered.py --sam "$SAM" --seeds "$seeds" --out "$OUT" --eval-images "$EVAL_IMAGES" \
    --rows "$ROWS" $RECIPE > "$STUDY/${RUNNER_LOG}_${seeds//,/-}.log" 2>&1 &
done
wait
$PY tools/study_powered.py --sam "$SAM" --seeds "$SEEDS_A,$SEEDS_B" --out "$OUT" --eval-images "$EVAL_IMAGES" \
  --rows "$ALL_ROWS" --summarise-only --publish "$STUDY" $RECIPE
echo "$(date -u '+%F %T') done: $STUDY/summary.json"
