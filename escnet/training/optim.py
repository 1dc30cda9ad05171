"""The optimiser and its schedule: parameter groups with the paper's two learning rates (CLIP and the
pretrained SAM pieces at the low rate, the rest at the main rate) and no weight decay on norms,
biases and embeddings; AdamW; the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from escnet.training.config import TrainConfig

SAM_LR_RULES = ("all", "attention")
_PRETRAINED_SAM = ("prompt_encoder", "transformer", "iou_token", "mask_tokens", "mask_head")


def _pretrained_sam_params(model: nn.Module, rule: str) -> set[int]:
    """ids of the SAM parameters trained at the low rate: rule 'all' = every pretrained SAM piece
    (attention, MLP, norms, prompt encoder, output tokens; the paper: "the CLIP encoder and SAM blocks
    are trained with 2e-6"), 'attention' = SAM's attention layers only. The layers ESC-Net adds around
    SAM (image projection, eq. 2's merge conv, text token projection) are new and train at the main rate."""
    from escnet.models.sam import Attention

    if rule not in SAM_LR_RULES:
        raise ValueError(f"unknown SAM learning-rate rule {rule!r}; choose from {', '.join(SAM_LR_RULES)}")
    ids: set[int] = set()
    for block in getattr(model, "sam", None) or []:
        for name, child in block.named_children():
            if name not in _PRETRAINED_SAM:
                continue
            if rule == "all":
                ids.update(id(p) for p in child.parameters())
            else:
                ids.update(id(p) for m in child.modules() if isinstance(m, Attention) for p in m.parameters())
    return ids


def param_groups(model: nn.Module, lr: float = 2e-4, low_lr: float = 2e-6, weight_decay: float = 1e-4,
                 sam_rule: str = "all", sam_lr: float | None = None) -> list[dict]:
    """AdamW groups: trainable CLIP weights and the pretrained SAM pieces (`sam_rule`, see
    `_pretrained_sam_params`) at `low_lr`, the rest at `lr`; no weight decay on norms, biases and
    embeddings (1-D tensors and nn.Embedding / norm-layer weights). Frozen parameters are left out.
    With `sam_lr` the SAM pieces get groups of their own ('sam_*') at that rate instead of low_lr.
    Each group has a 'name'."""
    if sam_lr is not None and not (sam_lr > 0 and math.isfinite(sam_lr)):
        raise ValueError(f"sam_lr must be a positive learning rate, got {sam_lr!r}")
    clip_ids = {id(p) for p in model.clip.parameters()}
    sam_ids = _pretrained_sam_params(model, sam_rule)
    sam_kind = "low" if sam_lr is None else "sam"
    no_decay_ids = set()
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.BatchNorm2d)) or type(m).__name__ == "LayerNorm2d":
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = "low" if id(p) in clip_ids else sam_kind if id(p) in sam_ids else "main"
        decay = p.dim() > 1 and id(p) not in no_decay_ids
        key = f"{kind}_{'decay' if decay else 'no_decay'}"
        rate = {"sam": sam_lr, "low": low_lr, "main": lr}[kind]
        g = groups.setdefault(key, {"name": key, "params": [], "param_names": [], "lr": rate,
                                    "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
        g["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def cosine_schedule(max_iters: int, warmup_iters: int = 0):
    """LR multiplier of step s: linear warm-up, then 0.5 (1 + cos(pi s / max_iters)) (detectron2's WarmupCosineLR)."""
    def factor(step: int) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, max_iters) / max_iters))
        if step < warmup_iters:
            return cosine * (step + 1) / warmup_iters
        return cosine

    return factor


def sam_rate(cfg: "TrainConfig") -> float | None:
    """The rate of the SAM parameters (`param_groups`' sam_lr; None: low_lr): cfg.sam_lr when set;
    cfg.lr when sam_lr_random = "main" and the SAM pieces start random (ESC-Net without init_sam and
    init_model: Table 2 (b) "rand init", where there is nothing pretrained for the low rate to keep)."""
    if cfg.sam_lr:
        return cfg.sam_lr
    random_sam = cfg.arch == "escnet" and not cfg.init_sam and not cfg.init_model
    return cfg.lr if cfg.sam_lr_random == "main" and random_sam else None


def make_optimizer(model: nn.Module, cfg: "TrainConfig") -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups = param_groups(model, lr=cfg.lr, low_lr=cfg.low_lr, weight_decay=cfg.weight_decay, sam_rule=cfg.sam_lr_rule,
                          sam_lr=sam_rate(cfg))
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.max_iters, cfg.warmup_iters))
    return optimizer, scheduler
