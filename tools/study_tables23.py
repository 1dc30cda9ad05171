"""The paper's Tables 2 and 3 in miniature: paired-seed ESC-Net runs on the synthetic-grouping benchmark;
and the model-readings study (table "readings") on the synthetic colour benchmark.

    python tools/study_tables23.py --sam output/sam_tiny/sam_tiny.pth --seeds 0,1,2 --out output/study23
    python tools/study_tables23.py ... --dry-run        # list the commands (and the skipped readings)
    python tools/study_tables23.py --tables readings --seeds 0,1,2 --out output/study_readings
    python tools/study_tables23.py ... --summarise-only # the table from the runs finished so far

The readings study trains `configs/escnet_tiny_synthetic.toml` with only the model reading changed
(same seeds, so the same CLIP warm-up per seed) and compares each reading with today's earlier one
(`legacy`).

Each run is one `python -m escnet train --config configs/escnet_tiny_grouping.toml` with the
reading's overrides plus ``seed=S`` and its own output_dir; its final evaluation (metrics.jsonl)
gives seen / unseen mIoU and hIoU. Readings are data (`READINGS`); a reading whose override keys
are not fields of this checkout's TrainConfig / ESCNetConfig is skipped and listed as such, so the
same table runs before and after the model-readings change lands.

Paired differences: for each comparison (`COMPARISONS`) and seed, B - A of the two readings
trained with the same seed (same data order, same initialisation of the shared parts); reported
as mean and 95 % t interval over seeds. Written: <out>/study.json, <out>/study.md, and every
command with its wall time in <out>/commands.log. A finished run of the same command (its
study_command.txt) is reused, so an interrupted study continues where it stopped; an unfinished
or different run in the way is an error (remove its folder).

`--import-metrics DIR` continues a study on another machine or checkout from the metrics kept in the
repository (docs/studies/*/<reading>_seed<S>.metrics.jsonl, as this script's runs are committed):
each finished file becomes <out>/<reading>/seed<S>/metrics.jsonl with the stamp of the command this
invocation would run, so those runs are reused instead of trained again. The stamp then says "the
same command", not "the same code": say so when mixing code versions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = "configs/escnet_tiny_grouping.toml"
SAM = "{sam}"  # replaced by --sam
METRICS = ("seen_mIoU", "unseen_mIoU", "hIoU")

# name -> (table, caption, overrides). The reference reading of ESC-Net is "t2c_pretrained":
# pretrained SAM blocks, point + mask prompts.
READINGS: dict[str, tuple[str, str, list[str]]] = {
    "t2a_no_sam": ("2", "(a) W/O SAM", ["model.use_sam=false"]),
    "t2b_random": ("2", "(b) W/ SAM (rand init)", []),
    "t2c_pretrained": ("2", "(c) W/ SAM (pretrained)", [f"init_sam={SAM}"]),
    "t3a_point": ("3", "(a) point", [f"init_sam={SAM}", "model.prompt_points=true", "model.prompt_boxes=false",
                                     "model.prompt_masks=false"]),
    "t3b_box": ("3", "(b) box", [f"init_sam={SAM}", "model.prompt_points=false", "model.prompt_boxes=true",
                                 "model.prompt_masks=false"]),
    "t3c_point_box": ("3", "(c) point + box", [f"init_sam={SAM}", "model.prompt_points=true",
                                               "model.prompt_boxes=true", "model.prompt_masks=false"]),
    "t3d_point_mask": ("3", "(d) point + mask", [f"init_sam={SAM}", "model.prompt_points=true",
                                                 "model.prompt_boxes=false", "model.prompt_masks=true"]),
    "t3e_box_mask": ("3", "(e) box + mask", [f"init_sam={SAM}", "model.prompt_points=false",
                                             "model.prompt_boxes=true", "model.prompt_masks=true"]),
    "t3f_all": ("3", "(f) point + box + mask", [f"init_sam={SAM}", "model.prompt_points=true",
                                                "model.prompt_boxes=true", "model.prompt_masks=true"]),
    # SAM learning rate. The tiny recipe trains all of CLIP at low_lr = 1e-3 (it starts random), so
    # a SAM rate of its own is needed to vary SAM alone: TrainConfig's `sam_lr`. 3e-5 = main lr 3e-3 / 100, the paper's 2e-4 : 2e-6.
    "lr_sam_low": ("lr", "SAM at main/100 (paper's 2e-6 : 2e-4)", [f"init_sam={SAM}", "sam_lr=3e-5"]),
    "lr_sam_main": ("lr", "SAM at the main rate", [f"init_sam={SAM}", "sam_lr=3e-3"]),
    "lr_rule_attention": ("lr", "SAM attention at low_lr, the rest at lr", [f"init_sam={SAM}",
                                                                            "sam_lr_rule=attention"]),
    "lr_rule_all": ("lr", "all SAM parameters at low_lr", [f"init_sam={SAM}", "sam_lr_rule=all"]),
    # which pretrained SAM transformer layer seeds each of the tiny model's 2 ESC blocks
    "seed_01": ("seeds", "block k <- SAM layer k (0, 1)", [f"init_sam={SAM}", "model.sam_seed_layers=0,1"]),
    "seed_00": ("seeds", "every block <- SAM layer 0 (0, 0)", [f"init_sam={SAM}", "model.sam_seed_layers=0,0"]),
    "seed_11": ("seeds", "every block <- SAM layer 1 (1, 1)", [f"init_sam={SAM}", "model.sam_seed_layers=1,1"]),
}
# The model readings (escnet.models.escnet.READINGS), on the synthetic colour benchmark.
READINGS.update({
    "r_legacy": ("readings", "legacy (escnet < 0.2)", ["reading=legacy"]),
    "r_paper": ("readings", "paper (default)", ["reading=paper"]),
    "r_efficient": ("readings", "efficient (no class FFN)", ["reading=efficient"]),
    "r_nosam_single": ("readings", "no SAM, one Swin per VLF", ["reading=paper", "model.use_sam=false"]),
    "r_merge_full_pair": ("readings", "merge + full SAM + Swin pair", ["reading=legacy", "model.sam_guidance=merge"]),
    "r_nosam_pair": ("readings", "no SAM, Swin pair", ["reading=legacy", "model.use_sam=false"]),
})
TABLE_CONFIG = {"readings": "configs/escnet_tiny_synthetic.toml"}  # other tables: --config

# (A, B): report B - A
COMPARISONS = [
    ("t2a_no_sam", "t2b_random"), ("t2a_no_sam", "t2c_pretrained"), ("t2b_random", "t2c_pretrained"),
    ("t3d_point_mask", "t3a_point"), ("t3d_point_mask", "t3b_box"), ("t3d_point_mask", "t3c_point_box"),
    ("t3d_point_mask", "t3e_box_mask"), ("t3d_point_mask", "t3f_all"),
    ("lr_sam_low", "lr_sam_main"), ("lr_rule_attention", "lr_rule_all"),
    ("seed_01", "seed_00"), ("seed_01", "seed_11"),
    ("r_legacy", "r_paper"), ("r_legacy", "r_efficient"), ("r_legacy", "r_nosam_single"),
    ("r_legacy", "r_merge_full_pair"), ("r_legacy", "r_nosam_pair"), ("r_paper", "r_efficient"),
]
TABLES = {"2": "Table 2: SAM blocks", "3": "Table 3: pseudo prompts", "lr": "SAM learning rate",
          "seeds": "SAM layer seeding each ESC block", "readings": "ESC-Net readings (synthetic colour benchmark)"}

# two-sided 95 % critical values of Student's t, by degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}


def t_critical(df: int) -> float:
    """Two-sided 95 % critical value of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError("a t interval needs at least two paired values")
    known = max(k for k in _T975 if k <= df)
    return _T975[known] if df <= 30 else 1.960 + 2.4 / df  # beyond 30: within 0.002 of the exact value


def paired_summary(a: list[float], b: list[float]) -> dict:
    """Mean and 95 % t interval of the paired differences b - a."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired values needed for >= 2 seeds, got {len(a)} and {len(b)}")
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    half = t_critical(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "diffs": d}


def available_keys() -> set[str]:
    """The override keys this checkout understands: TrainConfig fields and model.<ESCNetConfig field>."""
    from escnet.training.config import TrainConfig
    from escnet.models.escnet import ESCNetConfig

    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    return keys | {f"model.{f.name}" for f in dataclasses.fields(ESCNetConfig)}


def missing_keys(overrides: list[str], keys: set[str]) -> list[str]:
    return [o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] not in keys]


def final_eval(run_dir: Path, max_iters: int) -> dict | None:
    """The evaluation at step max_iters in run_dir/metrics.jsonl, or None if the run has not finished."""
    return final_eval_of(run_dir / "metrics.jsonl", max_iters)


def final_eval_of(path: Path, max_iters: int) -> dict | None:
    """The evaluation at step max_iters in the metrics file `path`, or None if it has none."""
    if not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        record = json.loads(line)
        if record.get("step") == max_iters and "eval" in record:
            return record["eval"]
    return None


def command(reading: str, seed: int, args: argparse.Namespace) -> tuple[list[str], Path]:
    run_dir = Path(args.out) / reading / f"seed{seed}"
    overrides = [o.replace(SAM, args.sam or "") for o in READINGS[reading][2]]
    config = str(REPO / TABLE_CONFIG[READINGS[reading][0]]) if READINGS[reading][0] in TABLE_CONFIG else args.config
    cmd = [sys.executable, "-m", "escnet", "train", "--config", config, *overrides, f"seed={seed}",
           f"output_dir={run_dir}", f"max_iters={args.max_iters}", f"threads={args.threads}", "num_workers=0",
           *args.extra]
    return cmd, run_dir


def signature(cmd: list[str]) -> str:
    """The run's resolved training config (every field, output_dir left out) as JSON: two readings
    whose overrides resolve to the same config (e.g. Table 3's point + mask row and Table 2's
    pretrained row, both the default prompts) are one run, trained once."""
    from escnet.training.config import load_config

    at = cmd.index("--config")
    overrides = [o for o in cmd[at + 2:] if not o.startswith("output_dir=")]
    cfg = load_config(cmd[at + 1], overrides)
    values = cfg.to_dict()
    values.pop("output_dir")
    values["model"] = dataclasses.asdict(cfg.model_config)  # resolved: a default set explicitly is the default
    return json.dumps(values, sort_keys=True)


_SIGNATURES: dict[tuple[str, int], str] = {}


def owner_of(reading: str, seed: int, args: argparse.Namespace, keys: set[str]) -> str:
    """The first reading of READINGS (all tables, not only those asked for) whose run resolves to the
    same config as `reading`'s for this seed: the one whose folder holds the run."""
    def sig(r: str) -> str:
        if (r, seed) not in _SIGNATURES:
            _SIGNATURES[(r, seed)] = signature(command(r, seed, args)[0])
        return _SIGNATURES[(r, seed)]

    mine = sig(reading)
    return next(r for r in READINGS if not missing_keys(READINGS[r][2], keys) and sig(r) == mine)


def import_metrics(folder: Path, args: argparse.Namespace) -> list[Path]:
    """Copy every finished <reading>_seed<S>.metrics.jsonl of `folder` (a reading of READINGS, a seed
    of --seeds) into its run folder under args.out with this invocation's stamp; a run folder that
    already holds a run is left alone. Returns the run folders written."""
    seeds = {int(s) for s in args.seeds.split(",")}
    written = []
    for path in sorted(Path(folder).glob("*_seed*.metrics.jsonl")):
        reading, _, seed = path.name[: -len(".metrics.jsonl")].rpartition("_seed")
        if reading not in READINGS or not seed.isdigit() or int(seed) not in seeds:
            continue
        cmd, run_dir = command(reading, int(seed), args)
        if run_dir.exists():
            continue
        if final_eval_of(path, args.max_iters) is None:
            raise RuntimeError(f"{path}: no evaluation at step {args.max_iters}: not a finished run of this study")
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text(path.read_text())
        (run_dir / "study_command.txt").write_text(shlex.join(cmd))
        written.append(run_dir)
    return written


def run_study(args: argparse.Namespace) -> dict:
    keys = available_keys()
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = [r for r in READINGS if READINGS[r][0] in args.tables.split(",")
              and (not args.readings or r in args.readings.split(","))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    skipped: dict[str, list[str]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    with open(out / "commands.log", "a") as log:
        for reading in wanted:
            missing = missing_keys(READINGS[reading][2], keys)
            if missing:
                skipped[reading] = missing
                print(f"skip {reading}: this checkout has no {', '.join(missing)}")
                continue
            results[reading] = {}
        # --order seed: every reading for seed 0, then for seed 1, ...: a study stopped part-way has
        # complete pairs for the seeds it reached; --order reading: every seed of one reading first
        runnable = list(results)
        jobs = ([(r, s) for s in seeds for r in runnable] if args.order == "seed"
                else [(r, s) for r in runnable for s in seeds])
        for reading, seed in jobs:
            owner = owner_of(reading, seed, args, keys)
            cmd, run_dir = command(owner, seed, args)
            if owner != reading and args.dry_run:
                print(f"[{reading} seed {seed} = {owner}]")
            line = shlex.join(cmd)
            # reuse a finished run only if it ran this very command
            stamp = run_dir / "study_command.txt"
            same = stamp.exists() and stamp.read_text() == line
            done = final_eval(run_dir, args.max_iters) if same else None
            if args.dry_run:
                if owner == reading:
                    print(("[done] " if done else "") + line)
                continue
            if done is None and args.summarise_only:
                continue
            if done is None:
                if run_dir.exists():
                    raise RuntimeError(f"{run_dir} holds another or unfinished run; remove it to rerun")
                start = time.time()
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} start {line}\n")
                log.flush()
                proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} exit {proc.returncode} after "
                          f"{time.time() - start:.0f} s: {run_dir}\n")
                log.flush()
                if proc.returncode != 0:
                    raise RuntimeError(f"{line}\nfailed ({proc.returncode}):\n{proc.stderr[-2000:]}")
                done = final_eval(run_dir, args.max_iters)
                stamp.write_text(line)
            results[reading][seed] = {k: done.get(k) for k in (*METRICS, "mIoU")}
    if args.dry_run:
        return {"skipped": skipped}
    comparisons = []
    for a, b in COMPARISONS:
        if a in results and b in results:
            entry = {"a": a, "b": b}
            for m in METRICS:
                # a group absent from the evaluated images has no mIoU (None), and with
                # --summarise-only a seed may not have finished: such seeds are left out
                pairs = [(results[a][s][m], results[b][s][m]) for s in seeds if s in results[a] and s in results[b]]
                pairs = [p for p in pairs if None not in p]
                entry[m] = paired_summary(*map(list, zip(*pairs))) if len(pairs) >= 2 else None
            comparisons.append(entry)
    tables = {READINGS[r][0] for r in results}
    config = ", ".join(sorted({TABLE_CONFIG.get(t, args.config) for t in tables})) or args.config
    study = {"seeds": seeds, "max_iters": args.max_iters, "config": config, "sam": args.sam,
             "results": results, "comparisons": comparisons, "skipped": skipped}
    (out / "study.json").write_text(json.dumps(study, indent=1))
    (out / "study.md").write_text(markdown(study))
    return study


def markdown(study: dict) -> str:
    """Per table: each reading's mean over seeds, then the paired differences with 95 % intervals."""
    lines = [f"Seeds {', '.join(map(str, study['seeds']))}; {study['max_iters']} ESC-Net steps per run; "
             f"config {study['config']}; mIoU in %.", ""]
    for table, title in TABLES.items():
        names = [r for r in READINGS if READINGS[r][0] == table and r in study["results"]]
        if not names:
            continue
        lines += [f"### {title}", "", "| reading | seen mIoU | unseen mIoU | hIoU |", "|---|---:|---:|---:|"]
        for r in names:
            cells = []
            for m in METRICS:
                vals = [v[m] for v in study["results"][r].values() if v[m] is not None]
                cells.append(f"{sum(vals) / len(vals):.1f}" if vals else "n/a")
            lines.append(f"| {READINGS[r][1]} | " + " | ".join(cells) + " |")
        comps = [c for c in study["comparisons"] if READINGS[c["a"]][0] == table]
        if comps:
            lines += ["", "| paired difference (B - A) | seen | unseen | hIoU |", "|---|---:|---:|---:|"]
            for c in comps:
                cells = [f"{c[m]['mean']:+.1f} [{c[m]['low']:+.1f}, {c[m]['high']:+.1f}]" if c[m] else "n/a"
                         for m in METRICS]
                lines.append(f"| {READINGS[c['b']][1]} - {READINGS[c['a']][1]} | " + " | ".join(cells) + " |")
        lines.append("")
    if study["skipped"]:
        lines += ["Skipped (fields not in this checkout): "
                  + "; ".join(f"{r} ({', '.join(k)})" for r, k in study["skipped"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sam", help="the pretrained tiny SAM (escnet pretrain-sam's sam_tiny.pth; not for 'readings')")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (>= 2 for intervals)")
    p.add_argument("--tables", default="2,3,lr,seeds", help=f"comma-separated subset of {', '.join(TABLES)}")
    p.add_argument("--out", default="output/study23")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--max-iters", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (runs are sequential)")
    p.add_argument("--readings", default="", help="comma-separated subset of the readings (default: all of --tables)")
    p.add_argument("--order", default="seed", choices=["seed", "reading"],
                   help="run order: seed-major (default; partial studies keep their pairs) or reading-major")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--summarise-only", action="store_true", help="run nothing; tabulate the runs finished so far")
    p.add_argument("--import-metrics", metavar="DIR", help="first reuse the finished runs whose metrics are kept in "
                   "DIR as <reading>_seed<S>.metrics.jsonl (e.g. docs/studies/tables23_2026-12-02)")
    p.add_argument("extra", nargs="*", help="more key=value overrides for every run (e.g. eval_limit=100)")
    args = p.parse_args(argv)
    needs_sam = set(args.tables.split(",")) - set(TABLE_CONFIG)
    if needs_sam and not args.dry_run and not (args.sam and Path(args.sam).is_file()):
        p.error(f"--sam {args.sam}: file not found (run `escnet pretrain-sam --config configs/sam_tiny_synthetic.toml`)")
    # the runs start in the repository root: paths given from elsewhere are made absolute first
    args.sam = str(Path(args.sam).resolve()) if args.sam else None
    args.out = str(Path(args.out).resolve())
    args.config = str(Path(args.config).resolve() if Path(args.config).exists() else REPO / args.config)
    if args.import_metrics:
        for run_dir in import_metrics(Path(args.import_metrics), args):
            print(f"imported {run_dir}")
    run_study(args)
    if not args.dry_run:
        print((Path(args.out) / "study.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
