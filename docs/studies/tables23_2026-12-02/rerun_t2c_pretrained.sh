# usage: rerun_t2c_pretrained.sh WAIT_FOR_LOG SEEDS...   (Table 2 (c) = t2c_pretrained rerun at the current commit)
# The record of what ran on 2026-12-02 (paths of that machine). Elsewhere the runner gives the same training
# command, but with output_dir <out>/t2c_pretrained/seedS:
#   python tools/study_tables23.py --sam SAM --tables 2 --readings t2c_pretrained --seeds 0,1,2 --out output/rerun_t2c
log=$1; shift
until grep -q "DONE" "$log"; do sleep 30; done
cd /work/study
export OMP_NUM_THREADS=1
for s in "$@"; do
  out=/work/main/output/rerun_t2c/seed$s
  cmd="/work/main/.venv/bin/python -m escnet train --config /work/study/configs/escnet_tiny_grouping.toml init_sam=/work/main/output/sam_tiny/sam_tiny.pth seed=$s output_dir=$out max_iters=1000 threads=1 num_workers=0"
  t0=$(date +%s); echo "$(date -u '+%F %T') start at $(git rev-parse --short HEAD): $cmd" >> /work/main/output/rerun_t2c.commands.log
  $cmd; rc=$?
  echo "$(date -u '+%F %T') exit $rc after $(( $(date +%s) - t0 )) s: $out" >> /work/main/output/rerun_t2c.commands.log
done
echo RERUN DONE
