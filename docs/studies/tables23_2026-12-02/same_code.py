"""Same-code comparisons for the SAM learning-rate and layer-seed rows of the Tables 2/3 miniature.

The study's baseline for those rows (sam_lr_rule=all, sam_seed_layers=(0, 1)) is Table 2 (c)'s config,
whose runs (`t2c_pretrained_seed*`) were made from older commits than the new rows (af6442f). Table 2 (c)
was rerun at af6442f with the same config and seeds (`rerun_t2c_pretrained_seed*`, commands in
`rerun_t2c_pretrained.commands.log`). This prints (1) how far such a rerun moves the result (same config,
same seed, code that computes the same function up to float rounding) and (2) the new rows against the
same-code baseline. Paired differences B - A over seeds, mean [95 % t interval], from the committed metrics:

    python docs/studies/tables23_2026-12-02/same_code.py
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "tools"))
from study_tables23 import METRICS, final_eval_of, paired_summary  # noqa: E402

SEEDS = (0, 1, 2)
MAX_ITERS = 1000  # the study's run length: the evaluation at this step is the result
# (A, B, label): report B - A
PAIRS = [
    ("t2c_pretrained", "rerun_t2c_pretrained", "Table 2 (c) rerun at af6442f - the study's Table 2 (c) run (same config)"),
    ("rerun_t2c_pretrained", "lr_rule_attention", "SAM attention at low_lr, the rest at lr - all SAM at low_lr"),
    ("rerun_t2c_pretrained", "lr_sam_low", "SAM at main/100 (3e-5) - all SAM at low_lr (1e-3)"),
    ("rerun_t2c_pretrained", "lr_sam_main", "SAM at the main rate (3e-3) - all SAM at low_lr (1e-3)"),
    ("lr_sam_low", "lr_sam_main", "SAM at the main rate (3e-3) - SAM at main/100 (3e-5)"),
    ("rerun_t2c_pretrained", "seed_00", "blocks <- SAM layers (0, 0) - (0, 1)"),
    ("rerun_t2c_pretrained", "seed_11", "blocks <- SAM layers (1, 1) - (0, 1)"),
]


def final_evals(reading: str) -> list[dict]:
    """The evaluation at step MAX_ITERS of <reading>_seed<S>.metrics.jsonl, for each of SEEDS."""
    evals = []
    for seed in SEEDS:
        path = HERE / f"{reading}_seed{seed}.metrics.jsonl"
        found = final_eval_of(path, MAX_ITERS)
        if found is None:
            raise SystemExit(f"{path}: no evaluation at step {MAX_ITERS} (missing or unfinished run)")
        evals.append(found)
    return evals


def main() -> None:
    print("| paired difference (B - A), seeds 0, 1, 2 | seen mIoU | unseen mIoU | hIoU |")
    print("|---|---|---|---|")
    evals = {r: final_evals(r) for pair in PAIRS for r in pair[:2]}
    for a, b, label in PAIRS:
        cells = []
        for m in METRICS:
            s = paired_summary([e[m] for e in evals[a]], [e[m] for e in evals[b]])
            per_seed = ", ".join(f"{d:+.1f}" for d in s["diffs"])
            cells.append(f"{s['mean']:+.1f} [{s['low']:+.1f}, {s['high']:+.1f}] ({per_seed})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
