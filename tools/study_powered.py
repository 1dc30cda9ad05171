"""The paper's Tables 2 and 3, powered: paired-seed ESC-Net runs on the synthetic-grouping benchmark
with the variance of each run reduced at its source (docs/studies/table2_powered/README.md).

    python tools/study_powered.py --sam output/sam_tiny/sam_tiny.pth --seeds 0,1,2,3,4 --out output/table2_powered
    python tools/study_powered.py ... --dry-run          # the commands, and the rows this checkout cannot run
    python tools/study_powered.py ... --summarise-only   # summary.json from the runs finished so far
    python tools/study_powered.py --import-metrics docs/studies/table2_powered --summarise-only \\
        --sam output/sam_tiny/sam_tiny.pth --seeds 0,1,2,3,4 --out /tmp/t2p   # summary.json again, from the commits
    python tools/study_powered.py --plan pilot_summary.json   # paired seeds needed, from a pilot's differences
    python tools/study_powered.py --refresh-doc docs/studies/table2_powered/README.md   # its tables, from the commits

What each run is (one row `v` of VARIANTS, one seed `S`):

1. Once per seed, the CLIP warm-up: `escnet train` of the config with seed=S that stops after one
   step (stop_after=1) and keeps <out>/warmup/seed<S>/clip_warmup.pt. Every row of that seed starts
   from it (clip_warmup_init), so every variant of a seed has the same CLIP, bit for bit.
2. The row's training: `escnet train --config <config> <row overrides> seed=S clip_warmup_init=...
   threads=1 num_workers=0 eval_every=0 eval_limit=<--single-eval-images> save_every=<--eval-every>
   keep_last=<--last-k>`: data order and augmentation depend on (seed, step) alone
   (escnet.data.train_dataset; tests/engine/test_clip_warmup_init.py), threads are fixed at 1. Its own
   final evaluation (first 300 val images, one checkpoint) is the single number earlier studies used.
3. The study's evaluation: each of the last K checkpoints (steps max_iters - (K-1) * eval_every ...
   max_iters; by default 900, 950, 1000) on the first --eval-images val scenes (`escnet prepare synthetic-grouping --num-val N`),
   keeping each image's confusion counts, so that `bootstrap_sd` resamples the images. A run's value
   for a metric is the mean over the K checkpoints (the endpoint's own fluctuation averaged out).
   Written to <run>/study_evals.jsonl (one record per checkpoint, with its bootstrap sd), with the
   PPG statistics of the final checkpoint where this checkout has them (`ppg_record`).

Rows with override keys this checkout lacks (TrainConfig fields, model.<ESCNetConfig field>) are
skipped and listed, so the table runs before and after the options it names land; PAPER_NO_SAM and
the old PPG rule are such rows until then. Jobs run primary rows first, seed-major (all primary rows
of seed 0, then of seed 1, ...), then the secondary rows; a finished job is reused (the command it ran
is stamped in its folder), an interrupted training resumes from its last checkpoint.

Outputs in --out: summary.json (list of {"comparison", "metric", "pairs", "mean", "ci95", ...}),
summary.md, commands.log (every command, start, exit and wall time); --publish DIR copies summary.json,
summary.md, commands.log and each run's metrics as <row>_seed<S>.metrics.jsonl (the training's
metrics.jsonl followed by the study's evaluation records) into DIR; --import-metrics DIR reads such
files back (as the runs of this invocation), so --summarise-only reproduces DIR/summary.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_spec = importlib.util.spec_from_file_location("study_tables23", REPO / "tools" / "study_tables23.py")
tables23 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables23)
available_keys, missing_keys, t_critical = tables23.available_keys, tables23.missing_keys, tables23.t_critical

CONFIG = "configs/escnet_tiny_grouping.toml"
SAM = "{sam}"  # replaced by --sam
METRICS = {"seen_miou": "seen_mIoU", "unseen_miou": "unseen_mIoU", "hiou": "hIoU"}  # summary name -> eval key

# Options of the pseudo-prompt revision (a row whose keys a checkout lacks is skipped and listed).
# Table 2 (a) as the paper words it: no SAM block, F_v unrefined but still VLF's guidance.
PAPER_NO_SAM = ["model.use_sam=false", "model.no_sam_guidance=unrefined"]
# the PPG rule before the revision (escnet.models.escnet.PRE_PPG_REVISION on the revision's branch)
OLD_PPG_RULE = ["model.ppg_threshold=softmax_peak", "model.ppg_alpha=0.5", "model.ppg_smooth=1",
                "model.ppg_min_contrast=0.0", "model.ppg_region_min=0.0", "model.ppg_init=farthest_raster",
                "model.ppg_source=stem_inverse", "model.mask_combine=sum"]
# Random SAM blocks at the low rate (the paper's rule for SAM blocks; the default) and at the main rate
# (TrainConfig.sam_lr_random); the tiny recipe's low_lr is 1e-3, its lr 3e-3.
RANDOM_SAM_LOW = ["sam_lr_random=low"]
RANDOM_SAM_MAIN = ["sam_lr_random=main"]

P, T = {"init_sam": f"init_sam={SAM}"}, "model.prompt_"
_PROMPTS = {"point": [f"{T}points=true", f"{T}boxes=false", f"{T}masks=false"],
            "box": [f"{T}points=false", f"{T}boxes=true", f"{T}masks=false"],
            "point_box": [f"{T}points=true", f"{T}boxes=true", f"{T}masks=false"],
            "point_mask": [f"{T}points=true", f"{T}boxes=false", f"{T}masks=true"],
            "box_mask": [f"{T}points=false", f"{T}boxes=true", f"{T}masks=true"],
            "all": [f"{T}points=true", f"{T}boxes=true", f"{T}masks=true"]}

# name -> (tier, caption, overrides); tier 1 = primary (run first), 2 = secondary
VARIANTS: dict[str, tuple[int, str, list[str]]] = {
    "t2a_no_sam": (1, "Table 2 (a) W/O SAM (escnet's use_sam=false)", ["model.use_sam=false"]),
    "t2a_paper": (1, "Table 2 (a) W/O SAM as the paper words it (F_v unrefined, still VLF's guidance)",
                  PAPER_NO_SAM),
    "t2b_random_low": (1, "Table 2 (b) W/ SAM, random init, SAM at the low rate", RANDOM_SAM_LOW),
    "t2b_random_main": (1, "Table 2 (b) W/ SAM, random init, SAM at the main rate", RANDOM_SAM_MAIN),
    "t2c_pretrained": (1, "Table 2 (c) W/ SAM, pretrained", [P["init_sam"]]),
    **{f"t3{letter}_{form}": (1 if form in ("point", "point_mask") else 2, f"Table 3 ({letter}) {form.replace('_', ' + ')}",
                              [P["init_sam"], *_PROMPTS[form]])
       for letter, form in zip("abcdef", _PROMPTS)},
    **{f"mask_{form}": (2, f"dense mask prompt: {form}", [P["init_sam"], f"model.mask_combine={form}"])
       for form in ("logits", "union", "sum", "mean")},
    "ppg_new": (2, "PPG rule: the revision (default)", [P["init_sam"]]),
    "ppg_old": (2, "PPG rule: before the revision", [P["init_sam"], *OLD_PPG_RULE]),
}
# label -> (A, B): B - A; primary ones are the pre-registered hypotheses
COMPARISONS: dict[str, tuple[str, str]] = {
    "c-b": ("t2b_random_low", "t2c_pretrained"),
    "c-b_main": ("t2b_random_main", "t2c_pretrained"),
    "c-a": ("t2a_no_sam", "t2c_pretrained"),
    "c-a_paper": ("t2a_paper", "t2c_pretrained"),
    "b-a": ("t2a_no_sam", "t2b_random_low"),
    "t3d-t3a": ("t3a_point", "t3d_point_mask"),
    "t3d-t3b": ("t3b_box", "t3d_point_mask"),
    "t3d-t3c": ("t3c_point_box", "t3d_point_mask"),
    "t3e-t3d": ("t3d_point_mask", "t3e_box_mask"),
    "t3f-t3d": ("t3d_point_mask", "t3f_all"),
    "mask_logits-mask_sum": ("mask_sum", "mask_logits"),
    "mask_union-mask_sum": ("mask_sum", "mask_union"),
    "mask_mean-mask_sum": ("mask_sum", "mask_mean"),
    "ppg_new-ppg_old": ("ppg_old", "ppg_new"),
}
PRIMARY = ("c-b", "c-b_main", "c-a", "c-a_paper", "t3d-t3a")


# ---------------------------------------------------------------------------------------------
# statistics


def paired_interval(a: list[float], b: list[float]) -> dict:
    """Mean of the paired differences b - a, their sd and the 95 % t interval (n >= 2)."""
    s = tables23.paired_summary(a, b)
    sd = math.sqrt(sum((d - s["mean"]) ** 2 for d in s["diffs"]) / (s["n"] - 1))
    return {**s, "sd": sd, "half_width": (s["high"] - s["low"]) / 2}


def seeds_needed(diffs: list[float] | float, half_width: float = 3.0, minimum: int = 5, maximum: int = 200) -> int:
    """Paired seeds n for a 95 % t interval of half-width <= `half_width`: the smallest n >= `minimum`
    with t_{n-1} * sd / sqrt(n) <= half_width, sd the sample sd of the pilot's paired differences
    `diffs` (or sd given directly). Raises if even `maximum` seeds do not reach it."""
    if isinstance(diffs, (int, float)):
        sd = float(diffs)
    else:
        if len(diffs) < 2:
            raise ValueError("a pilot needs >= 2 paired differences to estimate their sd")
        m = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (len(diffs) - 1))
    if not (half_width > 0 and sd >= 0 and math.isfinite(sd)):
        raise ValueError(f"need half_width > 0 and a finite sd >= 0, got {half_width}, {sd}")
    for n in range(max(minimum, 2), maximum + 1):
        if t_critical(n - 1) * sd / math.sqrt(n) <= half_width:
            return n
    raise ValueError(f"sd {sd:.2f}: more than {maximum} seeds for a half-width of {half_width}")


def group_scores(matrix: np.ndarray, groups: dict[str, list[int]]) -> dict:
    """{seen_mIoU, unseen_mIoU, hIoU, mIoU} (percent) of a (..., T+1, T+1) confusion-count array
    (escnet.evaluation.metrics layout; leading axes batched, e.g. bootstrap resamples). A class absent
    from the ground truth is left out of its group's mean, as escnet.evaluation.evaluate does."""
    m = np.asarray(matrix, dtype=np.float64)
    t = m.shape[-1] - 1
    m = m[..., :t, :t]
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    gt, pred = m.sum(-2), m.sum(-1)
    present = gt > 0
    iou = np.where(present, tp / np.maximum(gt + pred - tp, 1), np.nan) * 100

    def mean_of(ids):
        vals = iou[..., ids]
        with np.errstate(invalid="ignore"):
            return np.nanmean(vals, -1) if vals.size else np.full(vals.shape[:-1], np.nan)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {"seen_mIoU": mean_of(groups["seen"]), "unseen_mIoU": mean_of(groups["unseen"]),
               "mIoU": mean_of(list(range(t)))}
    s, u = out["seen_mIoU"], out["unseen_mIoU"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["hIoU"] = np.where((s > 0) & (u > 0), 2 * s * u / (s + u), np.nan)
    return out


def _resampled_scores(counts: np.ndarray, groups: dict[str, list[int]], resamples: int, seed: int) -> dict:
    """counts (C, N, T+1, T+1) -> group scores (R, C) of R bootstrap resamples of the N images (the
    same resample for the C sets of counts)."""
    c, n = counts.shape[:2]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)  # (R, N)
    flat = counts.reshape(c, n, -1).astype(np.float64)
    sums = np.einsum("rn,cnk->rck", weights, flat).reshape(resamples, c, *counts.shape[2:])
    return group_scores(sums, groups)


def _nan_sd(x: np.ndarray) -> float | None:
    import warnings

    with warnings.catch_warnings():  # a score undefined in every resample (no unseen pixel) is None
        warnings.simplefilter("ignore", RuntimeWarning)
        return _number(np.nanstd(x, ddof=1))


def bootstrap_sd(per_image: np.ndarray, groups: dict[str, list[int]], resamples: int = 200, seed: int = 0) -> dict:
    """sd over `resamples` bootstrap resamples of the images of each group score: per_image (N, T+1,
    T+1) confusion counts of N images (or (C, N, T+1, T+1): C checkpoints evaluated on the same
    images, resampled jointly, the score being the mean over the C checkpoints)."""
    counts = np.asarray(per_image)
    counts = counts[None] if counts.ndim == 3 else counts
    scores = _resampled_scores(counts, groups, resamples, seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: _nan_sd(np.nanmean(v, axis=1)) for k, v in scores.items()}


def paired_bootstrap_sd(a: np.ndarray, b: np.ndarray, groups: dict[str, list[int]], resamples: int = 200,
                        seed: int = 0) -> dict:
    """sd of score(b) - score(a) over bootstrap resamples of the images, both runs scored on the same
    resample: the evaluation set's share of a paired difference's noise. a, b: (N, T+1, T+1)."""
    scores = _resampled_scores(np.stack([np.asarray(a), np.asarray(b)]), groups, resamples, seed)
    return {k: _nan_sd(v[:, 1] - v[:, 0]) for k, v in scores.items()}


def _number(x) -> float | None:
    """A float for JSON; None where undefined (NaN)."""
    x = float(x)
    return None if math.isnan(x) else x


# ---------------------------------------------------------------------------------------------
# runs


def _absolute(args: argparse.Namespace) -> None:
    args.sam = str(Path(args.sam).resolve()) if args.sam else None
    args.out = str(Path(args.out).resolve())
    args.config = str(Path(args.config).resolve() if Path(args.config).exists() else REPO / args.config)


def base_args(args: argparse.Namespace) -> list[str]:
    data = [f"data_root={args.data_root}"] if args.data_root else []
    return [f"max_iters={args.max_iters}", f"threads={args.threads}", "num_workers=0", *data, *args.extra]


def warmup_command(seed: int, args: argparse.Namespace) -> tuple[list[str], Path]:
    run_dir = Path(args.out) / "warmup" / f"seed{seed}"
    cmd = [sys.executable, "-m", "escnet", "train", "--config", args.config, f"seed={seed}", f"output_dir={run_dir}",
           *base_args(args), "stop_after=1", "eval_dataset=", f"save_every={args.max_iters}", "keep_last=1"]
    return cmd, run_dir


def command(variant: str, seed: int, args: argparse.Namespace) -> tuple[list[str], Path]:
    run_dir = Path(args.out) / variant / f"seed{seed}"
    warm = Path(args.out) / "warmup" / f"seed{seed}" / "clip_warmup.pt"
    overrides = [o.replace(SAM, args.sam or "") for o in VARIANTS[variant][2]]
    cmd = [sys.executable, "-m", "escnet", "train", "--config", args.config, *overrides, f"seed={seed}",
           f"output_dir={run_dir}", *base_args(args), f"clip_warmup_init={warm}", "eval_every=0",
           f"eval_limit={args.single_eval_images}", f"save_every={args.eval_every}", f"keep_last={args.last_k}"]
    return cmd, run_dir


def signature(cmd: list[str]) -> str:
    """The resolved training config of a run command (output_dir left out): rows that resolve to the
    same config (Table 3 (d) and Table 2 (c)) are one run."""
    return tables23.signature(cmd)


_SIGNATURES: dict[tuple, str | None] = {}


def _signature_of(variant: str, seed: int, args: argparse.Namespace) -> str | None:
    """The row's resolved config for this seed, or None where this checkout cannot build it."""
    key = (variant, seed, args.out, args.sam, args.config, tuple(base_args(args)))
    if key not in _SIGNATURES:
        try:
            _SIGNATURES[key] = signature(command(variant, seed, args)[0])
        except ValueError:  # ConfigError: an unknown key or value
            _SIGNATURES[key] = None
    return _SIGNATURES[key]


def owner_of(variant: str, seed: int, args: argparse.Namespace) -> str:
    """The first row of VARIANTS (all of them, not only those asked for) whose run is the same config
    as `variant`'s: its folder holds the run (Table 3 (d) is Table 2 (c)'s run)."""
    mine = _signature_of(variant, seed, args)
    return next((v for v in VARIANTS if mine is not None and _signature_of(v, seed, args) == mine), variant)


def final_eval_of(path: Path, step: int) -> dict | None:
    return tables23.final_eval_of(path, step)


def eval_steps(args: argparse.Namespace) -> list[int]:
    """The checkpoints the study evaluates: the last K saved ones."""
    steps = [args.max_iters - i * args.eval_every for i in range(args.last_k)][::-1]
    if steps[0] <= 0:
        raise ValueError(f"--last-k {args.last_k} x --eval-every {args.eval_every} reaches before step 1")
    return steps


def study_records(run_dir: Path) -> list[dict]:
    path = run_dir / "study_evals.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evals_by_step(records: list[dict], args: argparse.Namespace) -> dict[int, dict]:
    """The study's evaluation records on --eval-images scenes among `records`, by step."""
    return {r["step"]: r for r in records if "eval" in r and r.get("eval_images") == args.eval_images}


def last_k_mean(evals: dict[int, dict], steps: list[int], key: str) -> float | None:
    """Mean of the evaluation key over the checkpoints `steps`; None if any of them is missing a value."""
    vals = [evals[s]["eval"][key] for s in steps]
    return None if any(v is None or v != v for v in vals) else float(np.mean(vals))


def run_done(run_dir: Path, args: argparse.Namespace) -> bool:
    steps = set(evals_by_step(study_records(run_dir), args))
    return set(eval_steps(args)) <= steps and final_eval_of(run_dir / "metrics.jsonl", args.max_iters) is not None


def _load_model(checkpoint: Path):
    import torch  # noqa: F401

    from escnet.training.checkpoint import load_checkpoint
    from escnet.training.config import config_from_dict
    from escnet.models.factory import model_from_config

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    model = model_from_config(cfg.model_config)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def per_image_confusions(model, cfg, images: int) -> tuple[np.ndarray, dict]:
    """(N, T+1, T+1) int64 confusion counts of each of the first `images` scenes of the config's
    evaluation split (escnet.evaluation.metrics.ConfusionMatrix per image; their sum is what
    escnet.evaluation.evaluate scores), and the split's class groups."""
    from escnet.data.train_dataset import resolve_dataset
    from escnet.inference.segmenter import Segmenter
    from escnet.evaluation.metrics import ConfusionMatrix

    split = resolve_dataset(cfg.eval_dataset, cfg.data_root or None, cfg.eval_split)
    data = split.dataset
    if len(data) < images:
        raise ValueError(f"{data.name} has {len(data)} images, the study evaluates {images}: run "
                         f"`escnet prepare {cfg.eval_dataset} --num-val {images}`")
    segmenter = Segmenter(model, device="cpu", protocol=cfg.eval_protocol, text_cache=False)
    out = np.zeros((images, data.num_classes + 1, data.num_classes + 1), np.int64)
    for i in range(images):
        image, gt = data[i]
        cm = ConfusionMatrix(data.num_classes, data.ignore_label)
        cm.update(np.asarray(segmenter.segment(image, data.prompt_classes).labels), gt, source=str(data.items[i][1]))
        out[i] = cm.numpy()
    return out, split.groups


def ppg_record(model, cfg, images: int) -> dict:
    """Mechanism check on the final checkpoint: the PPG statistics (foreground IoU with the ground
    truth, ...) of escnet.models.ppg_stats where this checkout has it; otherwise a note saying so."""
    try:
        from escnet.models.ppg_stats import grid_truth, ppg_statistics
    except ImportError:
        return {"ppg": None, "ppg_note": "escnet.models.ppg_stats not in this checkout"}
    import torch

    from escnet.data.train_dataset import resolve_dataset

    if not getattr(model.cfg, "use_sam", True):
        return {"ppg": None, "ppg_note": "no SAM block, no pseudo prompts"}
    data = resolve_dataset(cfg.eval_dataset, cfg.data_root or None, cfg.eval_split).dataset
    size = model.cfg.crop_size
    stats: dict[str, list[float]] = {}
    with torch.no_grad():
        text = model.encode_text(data.prompt_classes)
        for i in range(images):
            image, gt = data[i]
            img = torch.nn.functional.interpolate(torch.as_tensor(image).permute(2, 0, 1)[None].float(),
                                                  size=(size, size), mode="bilinear", align_corners=False)
            gt = np.where(gt == data.ignore_label, 0, gt)  # unlabelled pixels count as no class's
            lab = torch.nn.functional.interpolate(torch.as_tensor(gt.astype(np.int64))[None, None].float(),
                                                  size=(size, size), mode="nearest")[0, 0].long()
            _, records = model(img, text, return_ppg=True)
            grid = tuple(records[0].foreground.shape[-2:])
            truth = grid_truth(lab.numpy(), len(data.prompt_classes), grid)
            for key, value in ppg_statistics(records[0], truth[None]).items():
                stats.setdefault(key, []).append(value)
    return {"ppg": {k: float(np.nanmean(v)) for k, v in stats.items()}, "ppg_images": images}


def study_eval(run_dir: Path, args: argparse.Namespace) -> None:
    """Evaluate the run's last K checkpoints on the study's evaluation images (module docstring, 3.)."""
    from escnet.training.checkpoint import checkpoint_path

    done = {r["step"] for r in study_records(run_dir) if "eval" in r and r.get("eval_images") == args.eval_images}
    per_step = {}
    with open(run_dir / "study_evals.jsonl", "a") as out:
        for step in eval_steps(args):
            path = checkpoint_path(run_dir, step)
            cache = run_dir / f"per_image_{step}.npz"
            if step in done and cache.exists():
                per_step[step] = np.load(cache)["counts"]
                continue
            if not path.exists():
                raise RuntimeError(f"{path} missing: the run kept no checkpoint at step {step} (keep_last too small?)")
            model, cfg = _load_model(path)
            counts, groups = per_image_confusions(model, cfg, args.eval_images)
            np.savez_compressed(cache, counts=counts)
            per_step[step] = counts
            scores = {k: _number(v) for k, v in group_scores(counts.sum(0), groups).items()}
            record = {"study": True, "step": step, "eval_images": args.eval_images, "eval": scores,
                      "bootstrap_sd": bootstrap_sd(counts, groups)}
            if step == args.max_iters:
                try:
                    record.update(ppg_record(model, cfg, min(args.eval_images, args.ppg_images)))
                except Exception as exc:  # noqa: BLE001 - the hook must not cost the run; the record says why
                    record.update({"ppg": None, "ppg_note": f"{type(exc).__name__}: {str(exc)[:300]}"})
            if step not in done:
                out.write(json.dumps(record) + "\n")
                out.flush()
    if len(per_step) == args.last_k:
        groups = _groups(args)
        stacked = np.stack([per_step[s] for s in sorted(per_step)])
        with open(run_dir / "study_evals.jsonl", "a") as out:
            out.write(json.dumps({"study": True, "last_k_bootstrap_sd": bootstrap_sd(stacked, groups),
                                  "steps": sorted(per_step), "eval_images": args.eval_images}) + "\n")


def _groups(args: argparse.Namespace) -> dict[str, list[int]]:
    from escnet.training.config import load_config
    from escnet.data.train_dataset import resolve_dataset

    cfg = load_config(args.config, [f"data_root={args.data_root}"] if args.data_root else [])
    return resolve_dataset(cfg.eval_dataset, cfg.data_root or None, cfg.eval_split).groups


def _run(cmd: list[str], run_dir: Path, log, env: dict, resume: bool = False) -> None:
    line = shlex.join(cmd + (["--resume"] if resume else []))
    start = time.time()
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} start {line}\n")
    log.flush()
    proc = subprocess.run(cmd + (["--resume"] if resume else []), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} exit {proc.returncode} after {time.time() - start:.0f} s: "
              f"{run_dir}\n")
    log.flush()
    if proc.returncode != 0:
        raise RuntimeError(f"{line}\nfailed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def _ensure(cmd: list[str], run_dir: Path, finished, log, env: dict) -> None:
    """Run `cmd` into run_dir unless a run of this very command finished there; a run of it that was
    cut short resumes from its last checkpoint; a folder of another command is an error."""
    line = shlex.join(cmd)
    stamp = run_dir / "study_command.txt"
    if stamp.exists() and stamp.read_text() != line:
        raise RuntimeError(f"{run_dir} holds a run of another command; remove it to rerun:\n{stamp.read_text()}")
    if stamp.exists() and finished():
        return
    if run_dir.exists() and not stamp.exists() and any(run_dir.iterdir()):
        raise RuntimeError(f"{run_dir} holds an unstamped run; remove it to rerun")
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(line)
    _run(cmd, run_dir, log, env, resume=any(run_dir.glob("checkpoint_*.pt")) and not finished())


def plan_jobs(args: argparse.Namespace, keys: set[str]) -> tuple[list[tuple[str, int]], dict[str, list[str]]]:
    """(row, seed) jobs in run order (tier, then seed, then row) and the skipped rows with their
    missing keys."""
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = [v for v in VARIANTS if VARIANTS[v][0] <= args.tier and (not args.rows or v in args.rows.split(","))]
    skipped = {v: [f"no {k}" for k in missing_keys(VARIANTS[v][2], keys)] for v in wanted}
    for v in [v for v in wanted if not skipped[v]]:
        try:  # a key this checkout has, with a value it does not (e.g. a new choice)
            signature(command(v, seeds[0], args)[0])
        except ValueError as exc:  # ConfigError
            skipped[v] = [str(exc).splitlines()[0]]
    skipped = {v: m for v, m in skipped.items() if m}
    runnable = [v for v in wanted if v not in skipped]
    jobs = [(v, s) for tier in (1, 2) for s in seeds for v in runnable if VARIANTS[v][0] == tier]
    return jobs, skipped


def run_study(args: argparse.Namespace) -> dict:
    keys = available_keys()
    jobs, skipped = plan_jobs(args, keys)
    runnable = [v for v in VARIANTS if v not in skipped and any(j[0] == v for j in jobs)]
    for v, missing in skipped.items():
        print(f"skip {v}: {'; '.join(missing)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(REPO)}
    owners = {}
    with open(out / "commands.log", "a") as log:
        for variant, seed in jobs:
            owner = owners.setdefault((variant, seed), owner_of(variant, seed, args))
            cmd, run_dir = command(owner, seed, args)
            wcmd, wdir = warmup_command(seed, args)
            if args.dry_run:
                if owner == variant:
                    print(shlex.join(cmd))
                else:
                    print(f"[{variant} seed {seed} = {owner}]")
                continue
            if args.summarise_only:
                continue
            _ensure(wcmd, wdir, lambda: (wdir / "clip_warmup.pt").is_file(), log, env)
            _ensure(cmd, run_dir, lambda: final_eval_of(run_dir / "metrics.jsonl", args.max_iters) is not None,
                    log, env)
            if not run_done(run_dir, args):
                start = time.time()
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} study evaluation {run_dir}\n")
                study_eval(run_dir, args)
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} study evaluation done after "
                          f"{time.time() - start:.0f} s: {run_dir}\n")
                log.flush()
    if args.dry_run:
        return {"skipped": skipped}
    return summarise(args, jobs, skipped, runnable)


def run_values(run_dir: Path, args: argparse.Namespace) -> dict | None:
    """A finished run's numbers: per metric the mean over the last K checkpoints on the study's
    images ("last_k"), the final checkpoint alone on them ("final"), and the training's own final
    evaluation ("single": one checkpoint, --single-eval-images images); None if unfinished."""
    stamp = run_dir / "study_command.txt"
    if not stamp.exists() or not run_done(run_dir, args):
        return None
    recs = evals_by_step(study_records(run_dir), args)
    steps = eval_steps(args)
    single = final_eval_of(run_dir / "metrics.jsonl", args.max_iters)
    out = {}
    for name, key in METRICS.items():
        vals = [recs[s]["eval"][key] for s in steps]
        out[name] = {"last_k": last_k_mean(recs, steps, key),
                     "final": recs[steps[-1]]["eval"][key], "single": single.get(key),
                     "checkpoints": vals, "bootstrap_sd_final": recs[steps[-1]]["bootstrap_sd"].get(key)}
    out["ppg"] = recs[steps[-1]].get("ppg")
    out["recipe"] = run_recipe(run_dir / "metrics.jsonl")
    return out


RECIPE_KEYS = ("lr", "low_lr", "max_iters")


def run_recipe(metrics: Path) -> dict:
    """The learning rates and length a run trained with, read from the config its training wrote into
    metrics.jsonl (the first record that has one): the recipe is the run's own record, not an argument."""
    for line in metrics.read_text().splitlines():
        if line.strip() and "config" in (rec := json.loads(line)):
            return {k: rec["config"][k] for k in RECIPE_KEYS}
    raise ValueError(f"{metrics}: no record with the training config")


def summarise(args: argparse.Namespace, jobs, skipped: dict, runnable: list[str]) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    values: dict[str, dict[int, dict]] = {}
    for variant, seed in jobs:
        owner = owner_of(variant, seed, args)
        v = run_values(command(owner, seed, args)[1], args)
        if v is not None:
            values.setdefault(variant, {})[seed] = v
    rows = []
    for label, (a, b) in COMPARISONS.items():
        if a not in values or b not in values:
            continue
        paired = [s for s in seeds if s in values[a] and s in values[b]]
        recipes = {json.dumps(values[v][s]["recipe"], sort_keys=True) for v in (a, b) for s in paired}
        for metric in METRICS:
            pairs = [(values[a][s][metric]["last_k"], values[b][s][metric]["last_k"]) for s in paired]
            pairs = [p for p in pairs if None not in p]
            if len(pairs) < 2:
                continue
            s = paired_interval(*map(list, zip(*pairs)))
            if len(recipes) != 1:
                raise ValueError(f"{label}: its runs trained with different recipes {sorted(recipes)}")
            rows.append({"comparison": label, "metric": metric, "pairs": s["n"], "mean": round(s["mean"], 4),
                         "ci95": [round(s["low"], 4), round(s["high"], 4)], "half_width": round(s["half_width"], 4),
                         "sd": round(s["sd"], 4), "a": a, "b": b, "primary": label in PRIMARY,
                         "recipe": json.loads(next(iter(recipes))), "diffs": [round(d, 4) for d in s["diffs"]]})
    out = Path(args.out)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(rows, values, skipped, args))
    return {"rows": rows, "values": values, "skipped": skipped}


def markdown(rows: list[dict], values: dict, skipped: dict, args: argparse.Namespace) -> str:
    lines = [f"{args.max_iters} steps per run; each value the mean of the checkpoints at steps "
             f"{', '.join(map(str, eval_steps(args)))} on the first {args.eval_images} val scenes; mIoU in %.",
             "Recipe (from the runs' own configs): " + "; ".join(sorted({
                 ", ".join(f"{k} {v}" for k, v in r["recipe"].items())
                 for by_seed in values.values() for r in by_seed.values()})) + ".", "",
             "| row | seeds | seen mIoU | unseen mIoU | hIoU |", "|---|---:|---:|---:|---:|"]
    for v in VARIANTS:
        if v in values:
            cells = []
            for m in METRICS:
                xs = [r[m]["last_k"] for r in values[v].values() if r[m]["last_k"] is not None]
                cells.append(f"{np.mean(xs):.1f}" if xs else "n/a")
            owner = owner_of(v, next(iter(values[v])), args) if values[v] else v
            caption = VARIANTS[v][1] + (f" (= {VARIANTS[owner][1]}: the same runs)" if owner != v else "")
            lines.append(f"| {caption} | {len(values[v])} | " + " | ".join(cells) + " |")
    lines += ["", "| comparison (B - A) | metric | pairs | mean | 95 % CI |", "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['comparison']}{' (primary)' if r['primary'] else ''} | {r['metric']} | {r['pairs']} | "
                     f"{r['mean']:+.2f} | [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] |")
    if skipped:
        lines += ["", "Skipped (options not in this checkout): "
                  + "; ".join(f"{v} ({'; '.join(k)})" for v, k in skipped.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# what each variance-reduction step buys (the pilot)


def _sd(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x == x]
    return float(np.std(xs, ddof=1)) if len(xs) >= 2 else None


def variance_report(args: argparse.Namespace) -> dict:
    """From the finished runs under --out: per run, the bootstrap sd of the final checkpoint's score on
    the first --single-eval-images scenes and on all --eval-images, of the K-checkpoint mean, and the
    sd over the K checkpoints; per row, the seed-to-seed sd of the single evaluation (one checkpoint,
    few scenes: earlier studies), of the final checkpoint on all scenes (step i) and of the K mean
    (steps i + ii); per pair of rows, the same for their paired differences. Needs the runs' cached
    per-image counts (per_image_<step>.npz), so it runs where the study ran."""
    groups = _groups(args)
    steps = eval_steps(args)
    runs: dict[str, dict[int, dict]] = {}
    for run_dir in sorted(Path(args.out).glob("*/seed*")):
        if run_dir.parent.name == "warmup" or not (run_dir / "study_command.txt").exists() or not run_done(run_dir, args):
            continue
        values = run_values(run_dir, args)
        counts = [np.load(run_dir / f"per_image_{s}.npz")["counts"] for s in steps]
        few = counts[-1][: args.single_eval_images]
        entry = {"values": {m: values[m] for m in METRICS},
                 "study_first_scenes": {m: _number(group_scores(few.sum(0), groups)[k]) for m, k in METRICS.items()},
                 "bootstrap_sd_single": {m: bootstrap_sd(few, groups)[k] for m, k in METRICS.items()},
                 "bootstrap_sd_final": {m: bootstrap_sd(counts[-1], groups)[k] for m, k in METRICS.items()},
                 "bootstrap_sd_last_k": {m: bootstrap_sd(np.stack(counts), groups)[k] for m, k in METRICS.items()},
                 "checkpoint_sd": {m: _sd(values[m]["checkpoints"]) for m in METRICS}}
        runs.setdefault(run_dir.parent.name, {})[int(run_dir.name[4:])] = entry
    rows = {}
    for row, by_seed in runs.items():
        rows[row] = {f"seed_sd_{how}": {m: _sd([e["values"][m][how] for e in by_seed.values()]) for m in METRICS}
                     for how in ("single", "final", "last_k")}
        rows[row]["seeds"] = sorted(by_seed)
    pairs = {}
    names = sorted(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(set(runs[a]) & set(runs[b]))
            if len(common) >= 2:
                pairs[f"{b}-{a}"] = {f"diff_sd_{how}": {m: _sd([runs[b][s]["values"][m][how] - runs[a][s]["values"][m][how]
                                                               for s in common
                                                               if None not in (runs[a][s]["values"][m][how],
                                                                               runs[b][s]["values"][m][how])])
                                                        for m in METRICS} for how in ("single", "final", "last_k")}
                pairs[f"{b}-{a}"]["seeds"] = common
            for seed in common:  # the evaluation set's share of each seed's paired difference
                ca, cb = (np.load(Path(args.out) / r / f"seed{seed}" / f"per_image_{steps[-1]}.npz")["counts"]
                          for r in (a, b))
                n = args.single_eval_images
                pairs.setdefault(f"{b}-{a}", {"seeds": common}).setdefault("paired_bootstrap_sd", {})[str(seed)] = {
                    "single": paired_bootstrap_sd(ca[:n], cb[:n], groups), "final": paired_bootstrap_sd(ca, cb, groups)}
    report = {"eval_images": args.eval_images, "single_eval_images": args.single_eval_images, "steps": steps,
              "runs": {r: {str(s): e for s, e in v.items()} for r, v in runs.items()}, "rows": rows, "pairs": pairs}
    (Path(args.out) / "variance.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


# ---------------------------------------------------------------------------------------------
# the study README's tables, from the committed metrics

# The paper's A-150 mIoU (ViT-L/14) for the rows it has: Table 2 (a)-(c), Table 3 (a)-(f). The
# miniature's seen mIoU is not on its scale; the paper's differences are what a comparison is read
# against (PAPER_A150[b] - PAPER_A150[a]).
PAPER_A150 = {"t2a_no_sam": 24.2, "t2a_paper": 24.2, "t2b_random_low": 28.4, "t2b_random_main": 28.4,
              "t2c_pretrained": 41.8, "t3a_point": 37.8, "t3b_box": 33.5, "t3c_point_box": 38.1,
              "t3d_point_mask": 41.8, "t3e_box_mask": 39.9, "t3f_all": 41.9}
METRIC_NAMES = {"seen_miou": "seen mIoU", "unseen_miou": "unseen mIoU", "hiou": "hIoU"}
# A run whose seen mIoU is below this is marked collapsed in the per-seed tables (the all-background
# runs of recipe A score 1-4; every other run scores above 30).
COLLAPSED_BELOW = 20.0
_BLOCK = re.compile(r"<!-- study-table (seeds|comparisons|bonferroni|ppg) ([^>]*?) -->\n.*?<!-- /study-table -->", re.S)
# Two-sided 99 % critical values of Student's t (df 1-30; scipy.stats.t.ppf(0.995, df), to 3 places)
_T995 = [63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169, 3.106, 3.055, 3.012, 2.977,
         2.947, 2.921, 2.898, 2.878, 2.861, 2.845, 2.831, 2.819, 2.807, 2.797, 2.787, 2.779, 2.771, 2.763,
         2.756, 2.750]


def t_critical_99(df: int) -> float:
    """Two-sided 99 % critical value of Student's t with `df` degrees of freedom (df >= 1; beyond 30
    an approximation within 0.002)."""
    if df < 1:
        raise ValueError("a t interval needs at least two paired values")
    return _T995[df - 1] if df <= 30 else 2.576 + 5.0 / df


def bonferroni_table(summary: list[dict], comparisons: list[str], metric: str = "seen_miou") -> str:
    """Markdown: the pre-registered Bonferroni check of the primary comparisons (0.05 / 5 = 0.01):
    each one's 99 % paired t interval on `metric`, from the differences summary.json lists, and
    whether it still excludes 0."""
    lines = ["| comparison (B - A) | pairs | mean | 95 % CI | 99 % CI | survives (99 % CI excludes 0) |",
             "|---|---:|---:|---|---|---|"]
    for c in comparisons:
        r = next((x for x in summary if x["comparison"] == c and x["metric"] == metric), None)
        if r is None:
            lines.append(f"| `{c}` | 0 | - | - | - | not run |")
            continue
        n = r["pairs"]
        st = paired_interval([0.0] * n, r["diffs"])
        mean = st["mean"]
        half = t_critical_99(n - 1) * st["sd"] / math.sqrt(n)
        lo, hi = mean - half, mean + half
        verdict = "yes (> 0)" if lo > 0 else "yes (< 0)" if hi < 0 else "no"
        lines.append(f"| `{c}` | {n} | {mean:+.2f} | [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] | "
                     f"[{lo:+.2f}, {hi:+.2f}] | {verdict} |")
    return "\n".join(lines)


def committed_values(folder: Path, rows: list[str], args: argparse.Namespace,
                     seeds: set[int] | None = None) -> dict[str, dict[int, dict]]:
    """Per row (a row whose runs are another row's reads that row's files: Table 3 (d) is Table 2
    (c)'s run) and seed (all, or those in `seeds`), from `folder`'s <row>_seed<S>.metrics.jsonl: each
    metric's mean over the study's checkpoints (eval_steps) on --eval-images scenes, and the final
    checkpoint's "ppg" record."""
    steps = eval_steps(args)
    # which row's run a row is depends on its config; without --sam, init_sam would be empty and the
    # pretrained rows would look like the random-SAM row
    args = argparse.Namespace(**{**vars(args), "sam": args.sam or "sam_tiny.pth"})
    out: dict[str, dict[int, dict]] = {}
    for row in rows:
        if row not in VARIANTS:
            raise ValueError(f"unknown row {row!r}; the rows are {', '.join(VARIANTS)}")
        out[row] = {}
        for path in sorted(folder.glob("*_seed*.metrics.jsonl")):
            owner, _, seed = path.name[: -len(".metrics.jsonl")].rpartition("_seed")
            if not seed.isdigit() or (seeds is not None and int(seed) not in seeds) \
                    or owner != owner_of(row, int(seed), args):
                continue
            records = [r for r in map(json.loads, filter(str.strip, path.read_text().splitlines())) if r.get("study")]
            recs = evals_by_step(records, args)
            if not set(steps) <= set(recs):
                continue
            out[row][int(seed)] = {**{m: last_k_mean(recs, steps, k) for m, k in METRICS.items()},
                                   "ppg": recs[steps[-1]].get("ppg")}
    return out


def _seed_cell(v: dict | None) -> str:
    if v is None:
        return "-"
    cell = " / ".join("n/a" if v[m] is None else f"{v[m]:.1f}" for m in ("seen_miou", "unseen_miou"))
    return f"**{cell}** (collapsed)" if v["seen_miou"] is not None and v["seen_miou"] < COLLAPSED_BELOW else cell


def seed_table(values: dict[str, dict[int, dict]]) -> str:
    """Markdown: one line per seed, seen / unseen mIoU of each row (a collapsed run marked); then
    seeds run, mean seen mIoU and the paper's A-150 mIoU of the row."""
    rows = list(values)
    lines = ["| seed | " + " | ".join(f"{VARIANTS[r][1]} seen / unseen" for r in rows) + " |",
             "|---:|" + "---:|" * len(rows)]
    for s in sorted({s for by_seed in values.values() for s in by_seed}):
        lines.append(f"| {s} | " + " | ".join(_seed_cell(values[r].get(s)) for r in rows) + " |")
    lines.append("| seeds run | " + " | ".join(str(len(values[r])) for r in rows) + " |")
    seen = {r: [v["seen_miou"] for v in values[r].values() if v["seen_miou"] is not None] for r in rows}
    lines.append("| mean seen mIoU | " + " | ".join(f"{np.mean(seen[r]):.1f}" if seen[r] else "-" for r in rows) + " |")
    lines.append("| paper, A-150 mIoU | " + " | ".join(
        f"{PAPER_A150[r]}" if r in PAPER_A150 else "-" for r in rows) + " |")
    return "\n".join(lines)


def comparison_table(summary: list[dict], comparisons: list[str], metrics: list[str]) -> str:
    """Markdown: per comparison and metric the summary's pairs, mean, 95 % interval and half-width;
    on seen mIoU the paper's difference (A-150) and a reading: fewer than 5 pairs is partial, else
    whether the interval holds 0 and the paper's difference."""
    lines = ["| comparison (B - A) | metric | pairs | mean | 95 % CI | half-width | paper (A-150) | reading |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for c in comparisons:
        if c not in COMPARISONS:
            raise ValueError(f"unknown comparison {c!r}; the comparisons are {', '.join(COMPARISONS)}")
        a, b = COMPARISONS[c]
        paper = PAPER_A150[b] - PAPER_A150[a] if a in PAPER_A150 and b in PAPER_A150 else None
        for m in metrics:
            r = next((x for x in summary if x["comparison"] == c and x["metric"] == m), None)
            name = f"`{c}`" + (" (primary)" if c in PRIMARY else "")
            paper_cell = f"{paper:+.1f}" if paper is not None and m == "seen_miou" else "-"
            if r is None:
                lines.append(f"| {name} | {METRIC_NAMES[m]} | 0 | - | - | - | {paper_cell} | not run |")
                continue
            lo, hi = r["ci95"]
            if r["pairs"] < 5:
                reading = "partial (< 5 pairs), no result"
            else:
                reading = "interval > 0" if lo > 0 else "interval < 0" if hi < 0 else "interval holds 0"
                if paper is not None and m == "seen_miou":
                    reading += f"; {'holds' if lo <= paper <= hi else 'excludes'} the paper's {paper:+.1f}"
            lines.append(f"| {name} | {METRIC_NAMES[m]} | {r['pairs']} | {r['mean']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | "
                         f"{r['half_width']:.2f} | {paper_cell} | {reading} |")
    return "\n".join(lines)


def ppg_lines(values: dict[str, dict[int, dict]]) -> str:
    """Markdown list: per row the range over seeds of the PPG foreground IoU and of the share of
    points inside an object (final checkpoint), or that the row has no PPG record."""
    lines = []
    for r, by_seed in values.items():
        got = [v["ppg"] for v in by_seed.values() if isinstance(v["ppg"], dict) and "iou" in v["ppg"]]
        if got:
            iou, inside = [g["iou"] for g in got], [g["points_inside"] for g in got]
            lines.append(f"- {VARIANTS[r][1]}: foreground IoU {min(iou):.2f}-{max(iou):.2f}, points inside "
                         f"{min(inside):.2f}-{max(inside):.2f} ({len(got)} seeds)")
        else:
            lines.append(f"- {VARIANTS[r][1]}: no PPG record (no SAM block, so no pseudo prompts)")
    return "\n".join(lines)


def refresh_doc(path: Path, args: argparse.Namespace) -> str:
    """The markdown file at `path` with each generated block written again from the committed runs
    beside it (its folder's metrics and summary.json, or those of its subfolder `dir=`). A block is
    `<!-- study-table KIND rows=a,b comparisons=x,y metrics=m seeds=0-5 dir=sub -->` ...
    `<!-- /study-table -->`, KIND one of seeds (seed_table), comparisons (comparison_table), bonferroni
    (bonferroni_table), ppg (ppg_lines); `seeds` (a range lo-hi or a list) limits the per-seed
    tables to those seeds."""
    text = path.read_text()

    def fill(match: re.Match) -> str:
        kind, spec = match.group(1), dict(kv.split("=", 1) for kv in match.group(2).split())
        folder = (path.parent / spec.get("dir", ".")).resolve()
        if path.parent.resolve() not in (folder, *folder.parents):
            raise ValueError(f"{path}: study-table dir={spec['dir']} is outside {path.parent}")
        if kind in ("comparisons", "bonferroni"):
            summary = json.loads((folder / "summary.json").read_text())
            if kind == "bonferroni":
                body = bonferroni_table(summary, spec["comparisons"].split(","))
            else:
                body = comparison_table(summary, spec["comparisons"].split(","),
                                        spec.get("metrics", "seen_miou").split(","))
        else:
            seeds = None
            if "seeds" in spec:
                lo, dash, hi = spec["seeds"].partition("-")
                seeds = set(range(int(lo), int(hi) + 1)) if dash else {int(x) for x in spec["seeds"].split(",")}
            values = committed_values(folder, spec["rows"].split(","), args, seeds)
            body = seed_table(values) if kind == "seeds" else ppg_lines(values)
        return f"<!-- study-table {kind} {match.group(2)} -->\n{body}\n<!-- /study-table -->"

    return _BLOCK.sub(fill, text)


# ---------------------------------------------------------------------------------------------
# committed metrics


def publish(args: argparse.Namespace, folder: Path) -> list[Path]:
    """Copy summary.json, summary.md, commands.log and every finished run's metrics (training
    metrics.jsonl then study_evals.jsonl) as <row>_seed<S>.metrics.jsonl into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run_dir in sorted(Path(args.out).glob("*/seed*")):
        if run_dir.parent.name == "warmup" or not run_done(run_dir, args):
            continue
        target = folder / f"{run_dir.parent.name}_{run_dir.name}.metrics.jsonl"
        target.write_text((run_dir / "metrics.jsonl").read_text() + (run_dir / "study_evals.jsonl").read_text())
        written.append(target)
    for name in ("summary.json", "summary.md", "commands.log"):
        if (Path(args.out) / name).exists():
            shutil.copyfile(Path(args.out) / name, folder / name)
    return written


def import_metrics(folder: Path, args: argparse.Namespace) -> list[Path]:
    """Each <row>_seed<S>.metrics.jsonl of `folder` (a row of VARIANTS, a seed of --seeds) becomes
    that run's folder under --out (metrics.jsonl, study_evals.jsonl and the stamp of the command this
    invocation would run), so the study counts it as finished; an existing run folder is left alone.
    The stamp then says "the same command", not "the same code"."""
    seeds = {int(s) for s in args.seeds.split(",")}
    written = []
    for path in sorted(Path(folder).glob("*_seed*.metrics.jsonl")):
        variant, _, seed = path.name[: -len(".metrics.jsonl")].rpartition("_seed")
        if variant not in VARIANTS or not seed.isdigit() or int(seed) not in seeds:
            continue
        cmd, run_dir = command(variant, int(seed), args)
        if run_dir.exists():
            continue
        lines = path.read_text().splitlines()
        study = [x for x in lines if x.strip() and json.loads(x).get("study")]
        train = [x for x in lines if x.strip() and not json.loads(x).get("study")]
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text("".join(x + "\n" for x in train))
        (run_dir / "study_evals.jsonl").write_text("".join(x + "\n" for x in study))
        (run_dir / "study_command.txt").write_text(shlex.join(cmd))
        if not run_done(run_dir, args):
            raise RuntimeError(f"{path}: not a finished run of this study (no evaluations at steps "
                               f"{eval_steps(args)} on {args.eval_images} images)")
        written.append(run_dir)
    return written


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sam", help="the pretrained tiny SAM (escnet pretrain-sam's sam_tiny.pth)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds")
    p.add_argument("--tier", type=int, default=2, choices=(1, 2), help="1: primary rows only; 2: also secondary")
    p.add_argument("--rows", default="", help="comma-separated subset of the rows (default: all of --tier)")
    p.add_argument("--out", default="output/table2_powered")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--data-root", default="", help="datasets folder (default: $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--max-iters", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=50, help="steps between the evaluated checkpoints")
    p.add_argument("--last-k", type=int, default=3, help="checkpoints evaluated and averaged (the last K)")
    p.add_argument("--eval-images", type=int, default=4000, help="val scenes the study evaluates on")
    p.add_argument("--single-eval-images", type=int, default=300, help="val scenes of the training's own final evaluation")
    p.add_argument("--ppg-images", type=int, default=200, help="val scenes of the PPG statistics")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--summarise-only", action="store_true", help="run nothing; summarise the runs finished so far")
    p.add_argument("--import-metrics", metavar="DIR", help="first take the finished runs kept in DIR as "
                   "<row>_seed<S>.metrics.jsonl (e.g. docs/studies/table2_powered)")
    p.add_argument("--publish", metavar="DIR", help="at the end copy the summary and each finished run's metrics to DIR")
    p.add_argument("--plan", metavar="SUMMARY", help="from a pilot's summary.json: the paired seeds each comparison "
                   "needs for a 95 %% half-width <= --half-width on each metric; runs nothing")
    p.add_argument("--half-width", type=float, default=3.0)
    p.add_argument("--variance", action="store_true", help="run nothing; write <out>/variance.json: what each "
                   "variance-reduction step buys, from the finished runs (variance_report)")
    p.add_argument("--refresh-doc", metavar="MD", help="run nothing; write MD's generated tables again from the "
                   "committed runs in its folder (refresh_doc); --check: only say whether they are current")
    p.add_argument("--check", action="store_true", help="with --refresh-doc: exit 1 if MD is not current")
    p.add_argument("extra", nargs="*", help="more key=value overrides for every run")
    return p


def plan(summary: list[dict], half_width: float = 3.0, minimum: int = 5) -> list[dict]:
    """Per summary row: the pilot's sd of the paired differences and the seeds needed (seeds_needed)."""
    out = []
    for r in summary:
        try:
            n = seeds_needed(r["sd"], half_width, minimum)
        except ValueError as exc:
            n = str(exc)
        out.append({"comparison": r["comparison"], "metric": r["metric"], "pilot_pairs": r["pairs"],
                    "pilot_sd": r["sd"], "seeds_needed": n})
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.refresh_doc:
        md = Path(args.refresh_doc)
        if not md.is_file():
            p.error(f"--refresh-doc {md}: file not found")
        new = refresh_doc(md, args)
        if args.check:
            current = new == md.read_text()
            print(f"{md}: {'current' if current else 'out of date (run --refresh-doc without --check)'}")
            return 0 if current else 1
        from escnet.fileio import atomic_write

        atomic_write(md, lambda tmp: tmp.write_text(new))
        print(f"{md}: tables written again")
        return 0
    if args.plan:
        for row in plan(json.loads(Path(args.plan).read_text()), args.half_width):
            print(json.dumps(row))
        return 0
    needs_sam = any("init_sam" in o for v, _ in plan_jobs(args, available_keys())[0] for o in VARIANTS[v][2])
    if needs_sam and not (args.dry_run or args.summarise_only or args.variance) and not (args.sam and Path(args.sam).is_file()):
        p.error(f"--sam {args.sam}: file not found (run `escnet pretrain-sam --config configs/sam_tiny_synthetic.toml`)")
    _absolute(args)
    if args.variance:
        print(json.dumps(variance_report(args), indent=1))
        return 0
    if args.import_metrics:
        for run_dir in import_metrics(Path(args.import_metrics), args):
            print(f"imported {run_dir}")
    result = run_study(args)
    if not args.dry_run:
        print((Path(args.out) / "summary.md").read_text())
        if args.publish:
            publish(args, Path(args.publish))
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
