"""What ESC-Net and CAT-Seg share around CLIP: input checks and normalisation, text features with
the prompt template, and which CLIP weights train."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from escnet.data.vocab import display_name
from escnet.models.tokenizer import tokenize

# CLIP's pixel statistics on the 0..255 scale (docs/design.md).
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)


def run_block(module: nn.Module, fn, *args, checkpoint_always: bool = False):
    """fn(*args), under activation checkpointing when `module.cfg.grad_checkpointing` is on and
    a backward will follow (training with grad enabled): the block's activations are recomputed
    in the backward pass instead of kept, trading compute for memory. Results and gradients are
    the same (PPG's k-means is deterministic, so the recomputation sees the same prompts)."""
    wanted = checkpoint_always or getattr(module.cfg, "grad_checkpointing", False)
    if wanted and module.training and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class CLIPBackedModel(nn.Module):
    """Base of ESCNet and CATSeg. Subclasses set `self.cfg` (with clip, crop_size, template,
    clip_finetune), `self.clip`, and the `pixel_mean` / `pixel_std` buffers (1, 3, 1, 1)."""

    def encode_text(self, class_names: list[str]) -> Tensor:
        """class_names (T strings) -> L2-normalised text features F_l (T, D), template applied."""
        if not class_names:
            raise ValueError("encode_text needs at least one class name")
        prompts = [self.cfg.template.format(display_name(n)) for n in class_names]
        device = next(self.clip.parameters()).device
        return F.normalize(self.clip.encode_text(tokenize(prompts).to(device)), dim=-1)

    def encode_image(self, images: Tensor) -> tuple[Tensor, list[Tensor], tuple[int, int]]:
        """images (B, 3, H, W) RGB 0..255 -> F_v (B, D, g, g), skips [(B, W, g, g)], (H, W).

        The view is resized to clip.image_size when they differ (ViT-L/14: 384 crop -> 336).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        size = (images.shape[-2], images.shape[-1])
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        side = self.cfg.clip.image_size
        if size != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        feats, skips = self.clip.encode_image_dense(x.to(self.clip.visual.conv1.weight.dtype))
        return feats, skips, size

    def set_finetune(self, mode: str) -> None:
        """Choose which CLIP weights train: 'attention' (q and v projection weights of both towers,
        as CAT-Seg), 'full', or 'none'. The last image block runs as the value path, which never
        uses its query and key projections, and no segmentation forward uses CLIP's logit scale: those
        stay frozen in every mode (no gradient reaches them), so that every trainable parameter gets a
        gradient (DDP needs no unused-parameter search)."""
        if mode not in ("attention", "full", "none"):
            raise ValueError(f"unknown clip_finetune {mode!r}; choose attention, full or none")
        last = f"visual.transformer.resblocks.{len(self.clip.visual.transformer.resblocks) - 1}.attn."
        unused = (last + "q_proj_weight", last + "k_proj_weight", "logit_scale")
        for name, p in self.clip.named_parameters():
            if mode == "attention":
                p.requires_grad_(name.endswith(("attn.q_proj_weight", "attn.v_proj_weight")) and name not in unused)
            else:
                p.requires_grad_(mode == "full" and name not in unused)
