#!/bin/bash
# Recipe B, the secondary Table 3 rows row by row (preregistration.md, Amendment 5): each row at seeds
# 0-5 (two runners, 0,2,4 and 1,3,5) before the next starts, so whole rows finish. Each call is
# run_lrhalf_rows2.sh with one row: same output folder, same pairing with the same seed's Table 2 (c),
# finished runs reused, a cut training resumed. From the repository root:
#
#   nohup bash docs/studies/table2_powered/run_lrhalf_rows3.sh > docs/studies/table2_powered/run_rows3.log 2>&1 &
#
# Amendment 7 (same log): first seeds 6-11 of the primary H2p rows, seed-major, then the two rows of
# Amendment 6:
#
#   ROWS=t2c_pretrained,t2a_paper SEEDS_A=6,8,10 SEEDS_B=7,9,11 bash docs/studies/table2_powered/run_lrhalf_rows2.sh
#   ROWS_IN_ORDER="ppg_old mask_sum" bash docs/studies/table2_powered/run_lrhalf_rows3.sh
set -euo pipefail
for row in ${ROWS_IN_ORDER:-t3c_point_box t3b_box t3e_box_mask t3f_all}; do
  echo "$(date -u '+%F %T') row $row"
  ROWS=$row bash "$(dirname "$0")/run_lrhalf_rows2.sh"
done
echo "$(date -u '+%F %T') all rows done"
