"""Segment Anything (SAM) mask-decoder pieces used by ESC-Net's SAM block (paper Sec. 3.4).

Only the prompt encoder and the two-way transformer (plus SAM's output tokens, owned by the
caller) are needed; SAM's image encoder and mask heads are not. Module and parameter names are
exactly those of facebookresearch/segment-anything, so the decoder part of an official
``sam_vit_{b,l,h}.pth`` loads 1:1 (see ``escnet.weights.sam``). Semantics follow SAM:

- points are in input-image pixels; SAM shifts them by +0.5 (pixel centre) and divides by the
  input size before the random-Fourier positional encoding;
- label 1 = foreground, 0 = background, -1 = "not a point" (its positional encoding is zeroed and
  replaced by ``not_a_point_embed``); without boxes one not-a-point is appended as padding;
- masks are given at 4x the embedding grid and downscaled by a small conv stack; without a mask
  the dense embedding is the learned ``no_mask_embed`` broadcast over the grid.

Shapes: N prompts sets (ESC-Net: N = B*T, one per image and class), P points, C channels,
(h, w) the image-embedding grid.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (N, C, H, W) map (SAM/ConvNeXt style, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C, H, W) -> (N, C, H, W), contiguous."""
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        # Back to the standard layout: a channels-last result would make every later conv output
        # channels-last too, and .view() on (C, H, W) of those fails.
        return y.permute(0, 3, 1, 2).contiguous()


class MLPBlock(nn.Module):
    """Two-layer MLP ``lin2(act(lin1(x)))``: (..., C) -> (..., C) through a hidden width mlp_dim."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width to embedding_dim // downsample_rate.

    SAM uses the shrunken width (128 for C = 256) for the token<->image cross attentions.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {self.internal_dim} "
                             f"(embedding_dim={embedding_dim} // downsample_rate={downsample_rate})")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        """(N, L, D) -> (N, heads, L, D // heads)."""
        n, length, d = x.shape
        return x.reshape(n, length, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (N, Lq, C), k and v (N, Lk, C) -> (N, Lq, C)."""
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention on already projected inputs: q (N, Lq, I), k and v (N, Lk, I), I = internal_dim -> (N, Lq, C).

        ESC-Net's SAM block computes the projections of its per-class image tokens in a cheaper,
        exactly equal form and enters here."""
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        n, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, length, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """SAM's decoder block: token self-attention, token->image cross attention, token MLP,
    image->token cross attention; post-norm after each. Layer 0 skips the query PE in self-attention
    (the queries *are* the prompt embeddings there)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """queries, query_pe (N, P, C); keys (N, L, C); key_pe (N or 1, L, C) -> (queries, keys)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=queries + query_pe, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))

        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=queries + query_pe, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer between prompt tokens and image tokens."""

    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Run the prompt tokens against the image tokens.

        Args:
            image_embedding: (N, C, h, w); may be an ``expand``ed view (stride 0 over N).
            image_pe: (N or 1, C, h, w) positional encoding of the image grid.
            point_embedding: (N, P, C) prompt tokens (SAM: iou + mask tokens + sparse prompts); also their PE.
        Returns:
            queries (N, P, C) the processed tokens, keys (N, h*w, C) the processed image tokens.
        """
        if image_embedding.dim() != 4 or image_embedding.shape[1] != self.embedding_dim:
            raise ValueError(f"TwoWayTransformer: image_embedding must be (N, {self.embedding_dim}, h, w), "
                             f"got {tuple(image_embedding.shape)}")
        n, c, h, w = image_embedding.shape
        if image_pe.dim() != 4 or image_pe.shape[0] not in (1, n) or tuple(image_pe.shape[1:]) != (c, h, w):
            raise ValueError(f"TwoWayTransformer: image_pe must be ({n} or 1, {c}, {h}, {w}), got {tuple(image_pe.shape)}")
        if point_embedding.dim() != 3 or point_embedding.shape[0] != n or point_embedding.shape[2] != c:
            raise ValueError(f"TwoWayTransformer: point_embedding must be ({n}, P, {c}), got {tuple(point_embedding.shape)}")

        # flatten is a view even for a stride-0 batch axis, so an expanded image is never copied here.
        keys = image_embedding.flatten(2).transpose(1, 2)  # (N, hw, C)
        key_pe = image_pe.flatten(2).transpose(1, 2)  # (N or 1, hw, C)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
        attn = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + key_pe, v=keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding: [sin, cos](2*pi * (2*xy - 1) @ G), G ~ scale * N(0, 1) of shape (2, F).

    Output width is 2F (= C for SAM's F = C / 2). Coordinates are (x, y) in [0, 1].
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """coords (..., 2) in [0, 1] -> (..., 2F)."""
        g = self.positional_encoding_gaussian_matrix
        proj = (2 * math.pi) * ((2 * coords.to(g.dtype) - 1) @ g)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """Encoding of the pixel centres of an (h, w) grid -> (2F, h, w)."""
        h, w = size
        dev = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)  # (h, w, 2) as (x, y)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: Tensor, image_size: tuple[int, int]) -> Tensor:
        """coords_input (..., 2) as (x, y) in pixels of an image of size (H, W) -> (..., 2F)."""
        scale = coords_input.new_tensor([image_size[1], image_size[0]], dtype=torch.float32)
        return self._pe_encoding(coords_input.float() / scale)


class PromptEncoder(nn.Module):
    """SAM's prompt encoder: points/boxes -> sparse tokens, masks -> dense map."""

    def __init__(self, embed_dim: int = 256, image_embedding_size: tuple[int, int] = (24, 24),
                 input_image_size: tuple[int, int] = (384, 384), mask_in_chans: int = 16,
                 activation: type[nn.Module] = nn.GELU) -> None:
        """
        Args:
            embed_dim: C, the prompt embedding width.
            image_embedding_size: (h, w) of the image embedding grid.
            input_image_size: (H, W) of the pixel canvas the point coordinates live in.
            mask_in_chans: hidden width of the mask downscaling stack.
        """
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # background, foreground, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid -> (1, C, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """Point tokens.

        Args:
            coords: (N, P, 2) float (x, y) in input-image pixels (SAM adds the 0.5 pixel-centre shift here).
            labels: (N, P) int: 1 foreground, 0 background, -1 not-a-point, 2 / 3 a box's top-left /
                bottom-right corner (what SAM's box embedding adds to a corner's encoding).
            pad: append one not-a-point token (SAM does this when there are no boxes).
        Returns:
            (N, P + pad, C).
        """
        if coords.dim() != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
            raise ValueError(f"PromptEncoder: points must be coords (N, P, 2) and labels (N, P), "
                             f"got {tuple(coords.shape)} and {tuple(labels.shape)}")
        coords = coords + 0.5
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        lab = labels[..., None]
        # where (not masked in-place writes) keeps this a pure, batched, autograd-friendly program.
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.to(pe.dtype), pe)
        # Every label's embedding enters the graph (times 0 where unused), so all of them receive a
        # gradient and DDP needs no unused-parameter search.
        for label in range(self.num_point_embeddings):
            emb = emb + (lab == label).to(emb.dtype) * self.point_embeddings[label].weight
        return emb

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """boxes (N, 4) as (x0, y0, x1, y1) in input-image pixels -> corner tokens (N, 2, C)."""
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"PromptEncoder: boxes must be (N, 4), got {tuple(boxes.shape)}")
        corners = self.pe_layer.forward_with_coords((boxes + 0.5).reshape(-1, 2, 2), self.input_image_size)
        return corners + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)

    def embed_masks(self, masks: Tensor) -> Tensor:
        """masks (N, 1, 4h, 4w) -> dense embedding (N, C, h, w)."""
        if masks.dim() != 4 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != self.mask_input_size:
            raise ValueError(f"PromptEncoder: masks must be (N, 1, {self.mask_input_size[0]}, {self.mask_input_size[1]}) "
                             f"(4x the embedding grid), got {tuple(masks.shape)}")
        return self.mask_downscaling(masks)

    def no_mask_dense(self, n: int) -> Tensor:
        """Dense embedding for "no mask": no_mask_embed broadcast (expanded view) to (n, C, h, w)."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *self.image_embedding_size)

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None = None,
                masks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Embed prompts.

        Args:
            points: (coords (N, P, 2), labels (N, P)) or None; see ``embed_points``.
            boxes: (N, 4) or None.
            masks: (N, 1, 4h, 4w) or None.
        Returns:
            sparse (N, P', C) with P' = P + 1 without boxes (one not-a-point pad) or P + 2 with boxes;
            dense (N, C, h, w).
        """
        if points is not None:
            n = points[0].shape[0]
        elif boxes is not None:
            n = boxes.shape[0]
        elif masks is not None:
            n = masks.shape[0]
        else:
            n = 1
        sparse = [self.no_mask_embed.weight.new_empty(n, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        dense = self.embed_masks(masks) if masks is not None else self.no_mask_dense(n)
        return torch.cat(sparse, dim=1), dense
