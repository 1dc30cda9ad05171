"""OpenAI CLIP (ViT towers) with CAT-Seg's dense "value path" image features.

Parameter names follow OpenAI's CLIP (``visual.conv1.weight``, ``visual.transformer.resblocks.{i}.ln_1`` ...)
so OpenAI / open_clip state dicts map one to one, except the attention projections, which use CAT-Seg's
split names (``attn.q_proj_weight``, ``attn.k_proj_weight``, ``attn.v_proj_weight``, fused ``attn.in_proj_bias``,
``attn.out_proj``) so CAT-Seg checkpoints load unchanged and the q / v projections can be trained on their own.

Letters in shapes: B images, T texts (classes), L tokens, W tower width, D joint embedding, h x w token grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CLIPConfig", "CLIP", "resize_pos_embed", "default_skip_layers"]


def default_skip_layers(layers: int) -> tuple[int, int]:
    """Two resblock indices feeding the decoder: (3, 7) for 12 layers and (7, 15) for 24, as in CAT-Seg.

    Other depths use the same rule (about one third and two thirds of the depth), kept distinct where possible.
    """
    first = max(layers // 3 - 1, 0)
    second = min(max(2 * layers // 3 - 1, first + 1), layers - 1)
    return first, second


@dataclass
class CLIPConfig:
    """Sizes of a ViT CLIP. ``image_size // patch_size`` is the token grid the positional embedding is stored at."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int = 77
    vocab_size: int = 49408
    skip_layers: tuple[int, ...] = field(default=(3, 7))

    def __post_init__(self) -> None:
        self.skip_layers = tuple(int(i) for i in self.skip_layers)
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for name, width, heads in (("vision", self.vision_width, self.vision_heads), ("text", self.text_width, self.text_heads)):
            if width % heads:
                raise ValueError(f"CLIPConfig: {name}_width {width} is not divisible by {name}_heads {heads}")
        bad = [i for i in self.skip_layers if not 0 <= i < self.vision_layers]
        if bad:
            raise ValueError(f"CLIPConfig: skip_layers {bad} outside 0..{self.vision_layers - 1}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def preset(cls, name: str) -> "CLIPConfig":
        """Named sizes: "vitb16" (OpenAI ViT-B/16 run at 384), "vitl14" (ViT-L/14 at 336), "tiny" (tests)."""
        presets = {
            "vitb16": dict(embed_dim=512, image_size=384, patch_size=16, vision_width=768, vision_layers=12,
                           vision_heads=12, text_width=512, text_layers=12, text_heads=8, skip_layers=(3, 7)),
            "vitl14": dict(embed_dim=768, image_size=336, patch_size=14, vision_width=1024, vision_layers=24,
                           vision_heads=16, text_width=768, text_layers=12, text_heads=12, skip_layers=(7, 15)),
            "tiny": dict(embed_dim=32, image_size=96, patch_size=16, vision_width=64, vision_layers=2,
                         vision_heads=2, text_width=64, text_layers=2, text_heads=2, skip_layers=(0, 1)),
        }
        if name not in presets:
            raise ValueError(f"unknown CLIP preset {name!r}; choose one of {sorted(presets)}")
        return cls(**presets[name])


def resize_pos_embed(pos_embed: Tensor, new_grid: int | tuple[int, int]) -> Tensor:
    """Bicubically resize a ViT positional embedding to another token grid (CAT-Seg / HF convention).

    pos_embed (1 + g*g, W): the class token's row first, then a square g x g grid in row-major order.
    new_grid: n or (h, w). Returns (1 + h*w, W); the class row is kept, and an unchanged grid is returned as is.
    """
    h, w = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    n, width = pos_embed.shape
    g = math.isqrt(n - 1)
    if g * g != n - 1:
        raise ValueError(f"positional embedding with {n} rows is not 1 + a square grid")
    if (g, g) == (h, w):
        return pos_embed
    grid = pos_embed[1:].reshape(1, g, g, width).permute(0, 3, 1, 2)
    # bicubic is not implemented for half precision on every device, so interpolate in float32
    grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(pos_embed.dtype)
    return torch.cat([pos_embed[:1], grid.permute(0, 2, 3, 1).reshape(h * w, width)], dim=0)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, so a half-precision tower keeps OpenAI's numerics."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation x * sigmoid(1.702 x) (the pretrained weights expect it, not exact GELU)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class SplitAttention(nn.Module):
    """Multi-head self-attention with separate q / k / v weights and one fused bias (CAT-Seg's names)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj_weight = nn.Parameter(torch.empty(width, width))
        self.k_proj_weight = nn.Parameter(torch.empty(width, width))
        self.v_proj_weight = nn.Parameter(torch.empty(width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        """x (N, L, W) -> (N, L, W); causal: each token sees only itself and earlier tokens."""
        n, length, width = x.shape
        q_bias, k_bias, v_bias = self.in_proj_bias.chunk(3)

        def heads(weight: Tensor, bias: Tensor) -> Tensor:
            return F.linear(x, weight, bias).view(n, length, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj_weight, q_bias), heads(self.k_proj_weight, k_bias),
                                             heads(self.v_proj_weight, v_bias), is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))

    def value(self, x: Tensor) -> Tensor:
        """out_proj(V x): the attention output if every token attended only to itself. x (N, L, W) -> (N, L, W)."""
        return self.out_proj(F.linear(x, self.v_proj_weight, self.in_proj_bias.chunk(3)[2]))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1 x), then + mlp(ln_2 .)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = SplitAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        """x (N, L, W) -> (N, L, W)."""
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))

    def forward_value_path(self, x: Tensor) -> Tensor:
        """CAT-Seg's dense last block. x (N, 1 + h*w, W), class token first -> (N, 1 + h*w, W).

        No token mixing: v = out_proj(V ln_1(x)) + x_cls, where the residual is the block input's class token
        broadcast to every position (CAT-Seg's ``forward_dense``), then v + mlp(ln_2 v). The class position goes
        through the same formula; callers drop it.
        """
        v = self.attn.value(self.ln_1(x)) + x[:, :1]
        return v + self.mlp(self.ln_2(v))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        width = cfg.vision_width
        self.patch_size = cfg.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.grid_size ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, cfg.embed_dim))

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """images (B, 3, H, W) -> tokens (B, 1 + h*w, W) after ln_pre, and the grid (h, w)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[2] % self.patch_size or images.shape[3] % self.patch_size:
            raise ValueError(f"CLIP image size {tuple(images.shape[2:])} is not a multiple of the patch size {self.patch_size}")
        x = self.conv1(images.to(self.conv1.weight.dtype))
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + resize_pos_embed(self.positional_embedding, grid).to(x.dtype)
        return self.ln_pre(x), grid


class CLIP(nn.Module):
    """CLIP image and text towers. See the module docstring for parameter naming."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.ln_final = LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation on OpenAI's scales (used by tests and tiny models; real runs load weights)."""
        for tower, width, layers in ((self.visual.transformer, self.cfg.vision_width, self.cfg.vision_layers),
                                     (self.transformer, self.cfg.text_width, self.cfg.text_layers)):
            attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
            for block in tower.resblocks:
                for weight in (block.attn.q_proj_weight, block.attn.k_proj_weight, block.attn.v_proj_weight):
                    nn.init.normal_(weight, std=attn_std)
                nn.init.zeros_(block.attn.in_proj_bias)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        scale = self.cfg.vision_width ** -0.5
        for p in (self.visual.class_embedding, self.visual.positional_embedding, self.visual.proj):
            nn.init.normal_(p, std=scale)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.cfg.text_width ** -0.5)

    def encode_image(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W), CLIP-normalised -> (B, D) = ln_post(class token) @ proj (unnormalised)."""
        x, _ = self.visual.embed(images)
        for block in self.visual.transformer.resblocks:
            x = block(x)
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj

    def encode_image_dense(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Dense CLIP features for segmentation (CAT-Seg's ``dense=True`` path).

        images (B, 3, H, W), CLIP-normalised; h, w = H / patch, W / patch.
        Returns F_v (B, D, h, w): the last block runs as the value path (``forward_value_path``), then ln_post and
        @ proj on every token, class token dropped; and skips: one (B, vision_width, h, w) tensor per index in
        ``cfg.skip_layers``, the raw output of that resblock with the class token dropped (for the last block,
        its value-path output).
        """
        x, (h, w) = self.visual.embed(images)
        blocks = self.visual.transformer.resblocks
        outputs = {}
        for i, block in enumerate(blocks):
            x = block.forward_value_path(x) if i == len(blocks) - 1 else block(x)
            if i in self.cfg.skip_layers:
                outputs[i] = x
        skips = [outputs[i][:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w) for i in self.cfg.skip_layers]
        dense = self.visual.ln_post(x[:, 1:]) @ self.visual.proj
        return dense.transpose(1, 2).reshape(dense.shape[0], -1, h, w), skips

    def encode_text(self, tokens: Tensor) -> Tensor:
        """tokens (T, L) int64, L <= context_length, each row ending in the end-of-text token (the largest id)
        -> (T, D) = ln_final(token at EOT) @ text_projection (unnormalised)."""
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.context_length:
            raise ValueError(f"CLIP expects tokens of shape (T, L<={self.cfg.context_length}), got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.transformer.resblocks:
            x = block(x, causal=True)
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)])
        return x @ self.text_projection
