#!/bin/bash
# Recipe B (preregistration.md, Amendments 3-4), the remaining rows: Table 2 (a) as the paper words it,
# (b) at the main rate, Table 3 (a) point (primary, seed-major), then Table 3 (b), (c), (e), (f)
# (secondary), over seeds 0-5. Table 3 (d) point + mask is the default prompt set, so its runs are
# Table 2 (c)'s (the runner reuses them: "[t3d_point_mask seed S = t2c_pretrained]"). It is
# run_lrhalf.sh with these rows and seeds: same output folder, so each row pairs with the same seed's
# Table 2 (c), and the same summary of every finished row at the end. From the repository root:
#
#   nohup bash docs/studies/table2_powered/run_lrhalf_rows2.sh > docs/studies/table2_powered/run_rows2.log 2>&1 &
#
# Interrupted: run it again (finished runs are reused, a cut training resumes).
ROWS=${ROWS:-t2a_paper,t2b_random_main,t3a_point,t3b_box,t3c_point_box,t3e_box_mask,t3f_all} \
SEEDS_A=${SEEDS_A:-0,2,4} SEEDS_B=${SEEDS_B:-1,3,5} RUNNER_LOG=runner_rows2_seeds \
  exec bash "$(dirname "$0")/run_lrhalf.sh"
