#!/bin/bash
# Stability pilot (preregistration.md, Amendment 3; ../README.md, "Seed-to-seed sd, before and after"): do the two runs that collapsed to
# all-background under the tiny recipe (Table 2 (c) seed 4, Table 2 (a) seed 7) train when the two
# learning rates are halved (lr 3e-3 -> 1.5e-3, low_lr 1e-3 -> 5e-4), and what does halving cost a
# run that did not collapse (Table 2 (c) seed 0)? Same warm-up checkpoints as the study's runs.
# Run from the root of the checkout that ran the study (commit fb983b5), after run.sh made the warm-ups:
#   bash docs/studies/table2_powered/pilot_stability/run.sh   (PY=... for another interpreter)
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-output/pilot_stability}
SAM=${SAM:-output/sam_tiny/sam_tiny.pth}
W=${W:-output/table2_powered/warmup}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$PWD
common="--config configs/escnet_tiny_grouping.toml max_iters=1000 threads=1 num_workers=0 eval_limit=300 save_every=1000 keep_last=1 lr=1.5e-3 low_lr=5e-4"
mkdir -p $OUT
run() {  # name seed overrides...
  local name=$1 seed=$2; shift 2
  echo "$(date -u '+%F %T') start $name: $PY -m escnet train $common $* seed=$seed output_dir=$OUT/$name clip_warmup_init=$W/seed$seed/clip_warmup.pt" >> $OUT/commands.log
  $PY -m escnet train $common "$@" seed=$seed output_dir=$OUT/$name clip_warmup_init=$W/seed$seed/clip_warmup.pt > $OUT/$name.log 2>&1
  echo "$(date -u '+%F %T') exit $? $name" >> $OUT/commands.log
}
run t2c_pretrained_halflr_seed4 4 init_sam=$SAM &
run t2a_no_sam_halflr_seed7 7 model.use_sam=false &
run t2c_pretrained_halflr_seed0 0 init_sam=$SAM &
wait
