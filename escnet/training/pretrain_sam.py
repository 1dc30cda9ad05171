"""Pretrain a tiny SAM on synthetic promptable segmentation; save it in the official SAM layout:
`pretrain(cfg)`. The model, the data, the training and the evaluation are described with the
command that runs them, `escnet pretrain-sam` (escnet/commands/pretrain_sam.py, or
`escnet pretrain-sam --help`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from escnet.training.config import ConfigError, _read_toml, coerce, parse_text
from escnet.fileio import atomic_write
from escnet.models.sam_model import SAM, SAMConfig
from escnet.training.losses import mask_losses  # noqa: F401 - also this module's API

COMBOS = ("point", "box", "mask", "point+box", "point+mask", "box+mask", "point+box+mask")
WEIGHTS_NAME = "sam_tiny.pth"


@dataclass
class PretrainSAMConfig:
    preset: str = "tiny"  # the ESC-Net preset whose SAM-block sizes the decoder takes
    image_size: int = 96  # crop S (ESC-Net's synthetic configs: clip.image_size = crop = 96)
    patch_size: int = 8  # grid g = S / patch_size (ESC-Net's synthetic configs: 12 x 12)
    encoder_dim: int = 64
    encoder_depth: int = 3
    encoder_heads: int = 2
    # SAM's 16; the `tiny` preset's 4 leaves one channel before the first LayerNorm2d, which then
    # outputs a constant: the mask prompt would carry no information. ESC-Net must use the same
    # value (escnet_tiny_grouping.toml: model.sam_mask_in_chans = 16) to load the pretrained SAM.
    mask_in_chans: int = 16
    num_train_scenes: int = 800
    num_eval_scenes: int = 100
    batch_images: int = 8
    objects_per_image: int = 4
    corrective_rounds: int = 2
    iters: int = 1500
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_iters: int = 50
    grad_clip: float = 1.0
    focal_weight: float = 20.0
    seed: int = 0
    threads: int = 1
    log_every: int = 50
    output_dir: str = "output/sam_tiny"


# ---------------------------------------------------------------------------------------------
# config


def load_config(path: str | None = None, overrides: typing.Sequence[str] = ()) -> PretrainSAMConfig:
    """Config from a flat TOML file and key=value overrides; an unknown key or bad type names itself."""
    hints = typing.get_type_hints(PretrainSAMConfig)
    values = {}
    if path is not None:
        for key, value in _read_toml(Path(path)).items():
            if key not in hints:
                raise ConfigError(f"{path}: unknown key {key!r} (fields of PretrainSAMConfig: {', '.join(hints)})")
            values[key] = coerce(value, hints[key], key, str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in hints:
            raise ConfigError(f"override {item!r}: expected key=value with key one of {', '.join(hints)}")
        values[key] = parse_text(text, hints[key], key, "command line")
    cfg = PretrainSAMConfig(**values)
    for key in ("num_train_scenes", "num_eval_scenes", "batch_images", "objects_per_image", "iters", "threads",
                "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.image_size % cfg.patch_size:
        raise ConfigError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
    return cfg


def model_config(cfg: PretrainSAMConfig) -> SAMConfig:
    from escnet.models.escnet import ESCNetConfig

    sam = SAMConfig.matching(ESCNetConfig.preset(cfg.preset))
    return sam.replace(image_size=cfg.image_size, patch_size=cfg.patch_size, encoder_dim=cfg.encoder_dim,
                       encoder_depth=cfg.encoder_depth, encoder_heads=cfg.encoder_heads,
                       mask_in_chans=cfg.mask_in_chans)


# ---------------------------------------------------------------------------------------------
# data and prompts


def render_scenes(split: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n scenes of synthetic_grouping split `split` -> images (n, S, S, 3) uint8, instances (n, S, S) int32."""
    from escnet.data.synthetic_grouping import scene

    scenes = [scene(split, i, size) for i in range(n)]
    return np.stack([s.image for s in scenes]), np.stack([s.instances for s in scenes])


def _pick_objects(instances: np.ndarray, per_image: int, rng: np.random.Generator,
                  min_area: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_image` objects of each scene -> image index (N,), target masks (N, S, S) bool."""
    index, targets = [], []
    for b, inst in enumerate(instances):
        ids = [k for k in np.unique(inst)[1:] if (inst == k).sum() >= min_area]
        for k in rng.permutation(ids)[:per_image]:
            index.append(b)
            targets.append(inst == k)
    return np.array(index, np.int64), np.stack(targets)


def sample_points(targets: Tensor, gen: torch.Generator) -> Tensor:
    """One point uniform in each mask: targets (N, S, S) bool -> (N, 1, 2) float (x, y) pixels."""
    n, s, _ = targets.shape
    score = torch.rand(n, s * s, generator=gen) + targets.flatten(1).float()  # inside > any outside
    flat = score.argmax(1)
    return torch.stack([flat % s, flat // s], -1).float()[:, None]


def boxes_of(targets: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """Tight boxes (N, 4) x0 y0 x1 y1 of masks (N, S, S); with `gen`, SAM's jitter (N(0, 0.1 side), <= 20 px)."""
    s = targets.shape[-1]
    cols, rows = targets.any(1), targets.any(2)  # (N, S)
    ar = torch.arange(s, dtype=torch.float32)
    x0 = torch.where(cols, ar, float(s)).amin(1)
    x1 = torch.where(cols, ar, -1.0).amax(1)
    y0 = torch.where(rows, ar, float(s)).amin(1)
    y1 = torch.where(rows, ar, -1.0).amax(1)
    box = torch.stack([x0, y0, x1, y1], 1)
    if gen is not None:
        side = torch.stack([x1 - x0, y1 - y0, x1 - x0, y1 - y0], 1) + 1
        box = box + (0.1 * side * torch.randn(box.shape, generator=gen)).clamp(-20, 20)
    return box.clamp(0, s - 1)


def coarse_masks(targets: Tensor, grid: int, gen: torch.Generator | None = None) -> Tensor:
    """ESC-Net-like pseudo masks: each grid cell's coverage > threshold (0.5, or U(0.3, 0.7) and 5 %
    flipped cells with `gen`), never empty, nearest-upsampled to 4 x grid -> (N, 1, 4g, 4g) {0, 1}."""
    n = targets.shape[0]
    cover = F.adaptive_avg_pool2d(targets[:, None].float(), grid)  # (N, 1, g, g)
    if gen is None:
        cells = cover > 0.5
    else:
        cells = cover > 0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
        cells ^= torch.rand(cells.shape, generator=gen) < 0.05
    best = cover.flatten(1).argmax(1)
    cells = cells.flatten(1)
    cells[torch.arange(n), best] |= ~cells.any(1)
    return F.interpolate(cells.view(n, 1, grid, grid).float(), scale_factor=4, mode="nearest")


def corrective_points(pred: Tensor, targets: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A point uniform in each error region (missed -> label 1, spilled -> label 0); a perfect
    mask gets a foreground point. pred, targets (N, S, S) bool -> coords (N, 1, 2), labels (N, 1)."""
    n, s, _ = targets.shape
    error = (pred ^ targets).flatten(1)
    region = torch.where(error.any(1, keepdim=True), error, targets.flatten(1))
    flat = (torch.rand(n, s * s, generator=gen) + region.float()).argmax(1)
    labels = targets.flatten(1)[torch.arange(n), flat].long()
    return torch.stack([flat % s, flat // s], -1).float()[:, None], labels[:, None]


# ---------------------------------------------------------------------------------------------
# losses and scores


def mask_iou(pred: Tensor, targets: Tensor) -> Tensor:
    """pred (N, K, S, S) or (N, S, S) bool vs targets (N, S, S) bool -> IoU (N, K) or (N,)."""
    t = targets if pred.dim() == 3 else targets[:, None]
    inter = (pred & t).flatten(-2).sum(-1).float()
    union = (pred | t).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


# ---------------------------------------------------------------------------------------------
# prompting rounds


def run_rounds(model: SAM, emb: Tensor, index: Tensor, targets: Tensor, combo: str, rounds: int,
               gen: torch.Generator, jitter: bool, focal_weight: float = 20.0) -> tuple[list[Tensor], list[Tensor]]:
    """Round 0 with the prompts of `combo`, then `rounds` corrective rounds.
    Returns per round the loss (scalar) and the chosen mask logits upsampled to the crop (N, S, S)."""
    s, g = targets.shape[-1], model.cfg.grid
    use = set(combo.split("+"))
    points = (sample_points(targets, gen), torch.ones(len(targets), 1, dtype=torch.long)) if "point" in use else None
    boxes = boxes_of(targets, gen if jitter else None) if "box" in use else None
    masks = coarse_masks(targets, g, gen if jitter else None) if "mask" in use else None
    coverage = F.adaptive_avg_pool2d(targets[:, None].float(), 4 * g)[:, 0]  # (N, 4g, 4g) in [0, 1]
    losses, outputs = [], []
    for r in range(rounds + 1):
        multimask = r == 0 and use == {"point"}
        low, iou_pred = model.decode(emb, index, points, boxes, masks, multimask_output=multimask)
        # the loss is taken on the low-res logits against the targets' coverage of each low-res pixel
        # (4x cheaper than SAM's full-resolution loss, which a CPU budget cannot pay for)
        loss = mask_losses(low, coverage, focal_weight)  # (N, K)
        with torch.no_grad():
            iou = mask_iou(F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False) > 0, targets)
        # training keeps the best output (SAM: back-propagate the lowest loss); inference picks the
        # output with the highest predicted IoU
        pick = loss.argmin(1) if model.training else iou_pred.argmax(1)
        rows = torch.arange(len(targets))
        losses.append(loss[rows, pick].mean() + F.mse_loss(iou_pred, iou))
        chosen = F.interpolate(low[rows, pick][:, None], size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        outputs.append(chosen)
        if r < rounds:
            cp, cl = corrective_points(chosen.detach() > 0, targets, gen)
            points = (cp, cl) if points is None else (torch.cat([points[0], cp], 1), torch.cat([points[1], cl], 1))
            masks = low[rows, pick][:, None].detach()
    return losses, outputs


@torch.no_grad()
def evaluate(model: SAM, images: np.ndarray, instances: np.ndarray, seed: int = 1234) -> dict:
    """Held-out mIoU (%) over all objects for each prompt combination, a point with 2 corrective
    points, and the trivial baselines."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    index, targets = _pick_objects(instances, 10**6, np.random.default_rng(seed))
    index, targets = torch.from_numpy(index), torch.from_numpy(targets)
    emb = model.embed(torch.from_numpy(images).permute(0, 3, 1, 2))
    out = {"num_objects": int(len(targets))}
    for combo in COMBOS:
        _, outputs = run_rounds(model, emb, index, targets, combo, 0, gen, jitter=False)
        out[combo] = 100 * mask_iou(outputs[0] > 0, targets).mean().item()
    _, outputs = run_rounds(model, emb, index, targets, "point", 2, gen, jitter=False)
    out["point+2 corrective"] = 100 * mask_iou(outputs[-1] > 0, targets).mean().item()
    s = targets.shape[-1]
    box = boxes_of(targets).long()
    ar = torch.arange(s)
    inside = ((ar[None, None] >= box[:, 0, None, None]) & (ar[None, None] <= box[:, 2, None, None])
              & (ar[None, :, None] >= box[:, 1, None, None]) & (ar[None, :, None] <= box[:, 3, None, None]))
    coarse = F.interpolate(coarse_masks(targets, model.cfg.grid), size=(s, s), mode="nearest")[:, 0] > 0
    out["baseline: whole image"] = 100 * mask_iou(torch.ones_like(targets), targets).mean().item()
    out["baseline: box filled"] = 100 * mask_iou(inside, targets).mean().item()
    out["baseline: coarse mask prompt"] = 100 * mask_iou(coarse, targets).mean().item()
    model.train()
    return out


# ---------------------------------------------------------------------------------------------
# training


def _augment(images: np.ndarray, instances: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal flip and quarter turn, the same for each image and its instance map."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    images, instances = np.rot90(images, k, axes=(1, 2)), np.rot90(instances, k, axes=(1, 2))
    if flip:
        images, instances = images[:, :, ::-1], instances[:, :, ::-1]
    return np.ascontiguousarray(images), np.ascontiguousarray(instances)


def pretrain(cfg: PretrainSAMConfig, log=print) -> dict:
    """Train, evaluate, save `output_dir`/sam_tiny.pth (plain state dict, official SAM names) and
    metrics.json. Returns the metrics."""
    from escnet.training.loop import run_steps
    from escnet.training.optim import cosine_schedule
    from escnet.runtime import set_threads

    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = time.time()
    model = SAM(model_config(cfg))
    train_images, train_inst = render_scenes("sam-train", cfg.num_train_scenes, cfg.image_size)
    eval_images, eval_inst = render_scenes("sam-eval", cfg.num_eval_scenes, cfg.image_size)
    log(f"pretrain-sam: {sum(p.numel() for p in model.parameters())} parameters, {cfg.num_train_scenes} training "
        f"and {cfg.num_eval_scenes} held-out scenes rendered in {time.time() - start:.1f} s")
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and "token" not in n and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() > 1 and "token" not in n and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_schedule(cfg.iters, cfg.warmup_iters))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    before = evaluate(model, eval_images, eval_inst)
    history = []

    def batches():  # each step's scenes, flipped and turned: (images (B, 3, S, S) uint8, instances (B, S, S))
        while True:
            pick = rng.choice(cfg.num_train_scenes, cfg.batch_images, replace=False)
            images, inst = _augment(train_images[pick], train_inst[pick], rng)
            yield torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(inst)

    def loss_of(images: Tensor, inst: Tensor) -> Tensor:  # the objects and the prompt combination, then the rounds
        index, targets = _pick_objects(inst.numpy(), cfg.objects_per_image, rng)
        combo = COMBOS[rng.integers(len(COMBOS))]
        emb = model.embed(images)
        losses, _ = run_rounds(model, emb, torch.from_numpy(index), torch.from_numpy(targets), combo,
                               cfg.corrective_rounds, gen, jitter=True, focal_weight=cfg.focal_weight)
        return torch.stack(losses).mean()

    def report(step: int, window) -> None:
        history.append({"step": step, "loss": window.mean_loss})
        log(f"pretrain-sam: step {step}/{cfg.iters} loss {window.mean_loss:.4f} ({time.time() - start:.0f} s)")

    run_steps(loss_of, batches(), opt, sched, range(1, cfg.iters + 1), cfg, torch.device("cpu"),
              contextlib.nullcontext(), report, phase="pretrain-sam", clip_params=model.parameters())
    after = evaluate(model, eval_images, eval_inst)
    metrics = {"config": dataclasses.asdict(cfg), "model": dataclasses.asdict(model.cfg), "loss": history,
               "eval_before": before, "eval": after, "seconds": time.time() - start}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, lambda tmp: torch.save(model.state_dict(), tmp))
    text = json.dumps(metrics, indent=2)
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(text))
    return metrics


def format_eval(before: dict, after: dict) -> str:
    """A Markdown table of the held-out mIoU per prompt type, before and after training."""
    lines = ["| prompt | mIoU before training | mIoU after |", "|---|---:|---:|"]
    lines += [f"| {k} | {before[k]:.1f} | {after[k]:.1f} |" for k in after if k != "num_objects"]
    return "\n".join(lines)
