"""SAM's ViT image encoder, small: patch embedding, global-attention blocks, conv neck.

Parameter names follow segment-anything's ``image_encoder.*`` (patch_embed.proj, pos_embed,
blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.lin1, mlp.lin2}, neck.{0,1,2,3}). Left out, as a
tiny encoder on a 12 x 12 grid does not need them: windowed attention and relative positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from escnet.models.sam import LayerNorm2d, MLPBlock


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, H/p, W/p, D) by a p x p stride-p convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class EncoderAttention(nn.Module):
    """Global multi-head self-attention over the grid: (B, h, w, D) -> (B, h, w, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"EncoderAttention: num_heads {num_heads} must divide dim {dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, d = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, hw, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); (B, h, w, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EncoderAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """images (B, 3, H, W), normalised -> image embedding (B, out_chans, H/p, W/p)."""

    def __init__(self, img_size: int = 96, patch_size: int = 8, embed_dim: int = 64, depth: int = 3,
                 num_heads: int = 2, mlp_ratio: float = 4.0, out_chans: int = 32) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"ImageEncoderViT: img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        g = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, g, g, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.img_size, self.img_size):
            raise ValueError(f"ImageEncoderViT: images must be (B, 3, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
