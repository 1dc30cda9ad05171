"""The training losses, one place for all of escnet's training programs.

- `segmentation_loss`: ESC-Net's and CAT-Seg's objective (escnet train).
- `dense_clip_loss`: the dense CLIP warm-up before it (escnet train, `clip_warmup_iters`).
- `mask_losses`: SAM's focal + dice per predicted mask (escnet pretrain-sam).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def segmentation_loss(logits: Tensor, labels: Tensor, ignore_label: int) -> Tensor:
    """CAT-Seg's loss. logits (B, T, H, W), labels (B, H, W) int -> scalar: sigmoid BCE against
    one-hot targets, mean over B, T, H, W; ignored pixels are negatives for every class."""
    t = logits.shape[1]
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    valid = labels != ignore_label
    target = F.one_hot(torch.where(valid, labels, 0), t).permute(0, 3, 1, 2).to(logits.dtype)
    target = target * valid[:, None].to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target)


def dense_clip_loss(model: nn.Module, images: Tensor, labels: Tensor, class_names: list[str], ignore_label: int) -> Tensor:
    """The warm-up loss. images (B, 3, H, W) uint8, labels (B, H, W) -> per-pixel softmax
    cross-entropy of exp(logit_scale) * cos(F_v, F_l) (B, T, H, W) against the labels."""
    feats, _, size = model.encode_image(images.float())
    text = model.encode_text(class_names)
    corr = torch.einsum("bdhw,td->bthw", F.normalize(feats, dim=1), text)
    logits = F.interpolate(corr, size=size, mode="bilinear", align_corners=False) * model.clip.logit_scale.exp()
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_label)


def mask_losses(logits: Tensor, targets: Tensor, focal_weight: float) -> Tensor:
    """SAM's loss per mask: focal_weight x focal (gamma 2, alpha 0.25) + dice.
    logits (N, K, s, s), targets (N, s, s) in [0, 1] -> (N, K)."""
    t = targets[:, None].float().expand_as(logits)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).mean((2, 3))
    dice = 1 - (2 * (p * t).sum((2, 3)) + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    return focal_weight * focal + dice
