"""A whole promptable SAM (image encoder + prompt encoder + mask decoder), sized to fit ESC-Net.

ESC-Net needs SAM's prompt encoder and two-way transformer pretrained at its own width; the real
``sam_vit_b`` has them at C = 256. `SAMConfig.matching(escnet_cfg)` gives a SAM whose decoder has
exactly the ESC-Net preset's SAM sizes (C, depth, heads, MLP width, mask-input channels) on its
token grid and crop, so training it (escnet.training.pretrain_sam) and saving its state dict gives a
file in the official layout (image_encoder.*, prompt_encoder.*, mask_decoder.*) that
escnet.weights.sam reads like ``sam_vit_b.pth``.

Shapes: B images, N prompt sets (each points into one image), (h, w) = (g, g) the grid, S the crop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from escnet.models.image_encoder import ImageEncoderViT
from escnet.models.mask_decoder import MaskDecoder
from escnet.models.sam import PromptEncoder, TwoWayTransformer

# segment-anything's pixel statistics (ImageNet, 0..255)
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SAMConfig:
    image_size: int = 96  # S, the square input
    patch_size: int = 8  # grid g = S / patch_size
    encoder_dim: int = 64
    encoder_depth: int = 3
    encoder_heads: int = 2
    dim: int = 32  # C: prompt embedding and transformer width
    depth: int = 2
    heads: int = 2
    mlp_dim: int = 64
    downsample: int = 2
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 32

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def matching(cls, escnet_cfg, **encoder) -> SAMConfig:
        """A SAM whose decoder pieces have the shapes of `escnet_cfg`'s SAM blocks (same crop and grid);
        `encoder` sets the image-encoder fields."""
        return cls(image_size=escnet_cfg.crop_size, patch_size=escnet_cfg.crop_size // escnet_cfg.grid,
                   dim=escnet_cfg.sam_dim, depth=escnet_cfg.sam_depth, heads=escnet_cfg.sam_heads,
                   mlp_dim=escnet_cfg.sam_mlp_dim, downsample=escnet_cfg.sam_downsample,
                   mask_in_chans=escnet_cfg.sam_mask_in_chans, **encoder)

    def replace(self, **changes) -> SAMConfig:
        return dataclasses.replace(self, **changes)


class SAM(nn.Module):
    """Promptable segmenter. `embed(images)` once per image, then `decode(...)` per prompt round."""

    def __init__(self, cfg: SAMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g = cfg.grid
        self.image_encoder = ImageEncoderViT(cfg.image_size, cfg.patch_size, cfg.encoder_dim, cfg.encoder_depth,
                                             cfg.encoder_heads, out_chans=cfg.dim)
        self.prompt_encoder = PromptEncoder(cfg.dim, (g, g), (cfg.image_size, cfg.image_size), cfg.mask_in_chans)
        transformer = TwoWayTransformer(cfg.depth, cfg.dim, cfg.heads, cfg.mlp_dim,
                                        attention_downsample_rate=cfg.downsample)
        self.mask_decoder = MaskDecoder(transformer, cfg.dim, cfg.iou_head_hidden_dim)
        self.register_buffer("pixel_mean", torch.tensor(SAM_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) RGB 0..255 -> image embeddings (B, C, g, g)."""
        return self.image_encoder((images.float() - self.pixel_mean) / self.pixel_std)

    def decode(self, embeddings: Tensor, image_index: Tensor, points: tuple[Tensor, Tensor] | None = None,
               boxes: Tensor | None = None, masks: Tensor | None = None,
               multimask_output: bool = False) -> tuple[Tensor, Tensor]:
        """Masks for N prompt sets.

        Args:
            embeddings: (B, C, g, g) from `embed`; image_index (N,) long: the image of each prompt set.
            points: (coords (N, P, 2) (x, y) pixels, labels (N, P)); boxes (N, 4) x0 y0 x1 y1 pixels;
                masks (N, 1, 4g, 4g) mask-prompt logits or {0, 1} masks. Any may be None.
        Returns:
            low-res mask logits (N, 3 or 1, 4g, 4g), predicted IoUs (N, 3 or 1).
        """
        sparse, dense = self.prompt_encoder(points, boxes, masks)
        if sparse.shape[0] != image_index.shape[0]:
            dense = dense.expand(image_index.shape[0], -1, -1, -1)
            sparse = sparse.expand(image_index.shape[0], -1, -1)
        return self.mask_decoder(embeddings[image_index], self.prompt_encoder.get_dense_pe(), sparse, dense,
                                 multimask_output)
