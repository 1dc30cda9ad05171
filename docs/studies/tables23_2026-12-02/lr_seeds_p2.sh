cd /work/study
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
A="--sam output/sam_tiny/sam_tiny.pth --tables lr,seeds --out /work/main/output/study23"
$PY tools/study_tables23.py $A --readings lr_sam_main,seed_11 --seeds 0,1,2
$PY tools/study_tables23.py $A --readings lr_rule_attention --seeds 1,2
echo P2 DONE
