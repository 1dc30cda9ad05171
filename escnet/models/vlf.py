"""Vision-Language Fusion (paper Sec. 3.5).

(a) image guidance: a spatial Swin block over every (image, class) correlation embedding whose
    queries/keys also see F'_v, the SAM-refined image features (the paper's reading: one map per image,
    shared by all classes; `sam_guidance = "perclass"`: each class's own refined features). One Swin
    block per VLF, the shift alternating over the ESC blocks (`vlf_swin = "pair"`: two per VLF);
(b) text guidance: linear attention over the class axis with the text features as keys and values,
    no positional embedding, so the block is order-agnostic and takes any number of classes
    (`class_attention = "catseg"`: CAT-Seg's class aggregation instead, `CostClassAttention`: keys and
    values from the class embeddings at each pixel, the projected text as guidance of queries and keys).

Because keys and values come from text alone, the class-attention statistics
sum_t phi(k_t) v_t^T and sum_t phi(k_t) are per-vocabulary constants: `text_state` computes
them once over all T classes and `forward` can then run on any chunk of classes with exactly the
result of the unchunked pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from escnet.models.swin import (ClassAttention, LinearAttentionState, SwinBlockPair, linear_attention_query,
                                linear_attention_state)


class _GeluLinear(torch.autograd.Function):
    """linear(gelu(h), weight, bias) that keeps only h for the backward pass and recomputes gelu(h)
    there (exact gradients). Autograd would keep both h and gelu(h): the class-attention feed-forward
    runs at every pixel of every class, so this halves its share of training memory."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.bias_dtype = bias.dtype
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        """Under autocast the forward ran in a lower precision than the fp32 weight (and backward runs
        outside autocast): compute in grad's dtype, as autograd of the autocast linear does, and hand
        each gradient back in its input's dtype."""
        h, weight = ctx.saved_tensors
        dt = grad.dtype
        g = F.gelu(h).to(dt).reshape(-1, h.shape[-1])
        grad_h = torch.ops.aten.gelu_backward((grad @ weight.to(dt)).to(h.dtype), h)
        grad2d = grad.reshape(-1, grad.shape[-1])
        return grad_h, (grad2d.t() @ g).to(weight.dtype), grad2d.sum(0).to(ctx.bias_dtype)


class TextClassAttention(nn.Module):
    """Linear attention over classes; queries from the correlation embedding, keys/values from text.

    dim: C of the embedding; text_dim: D of the CLIP text features; heads: attention heads.
    """

    def __init__(self, dim: int, text_dim: int, heads: int = 4, mlp_ratio: int = 4):
        """mlp_ratio 0: attention only, no feed-forward after it (the paper names only the attention)."""
        super().__init__()
        if dim % heads:
            raise ValueError(f"class attention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(text_dim, dim)
        self.v = nn.Linear(text_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim) if mlp_ratio else None
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)) if mlp_ratio else None

    def text_state(self, text: Tensor) -> LinearAttentionState:
        """text (T, D) -> key/value sums over all T classes (kv (heads, d, d), ksum (heads, d))."""
        t = text.shape[0]
        return linear_attention_state(self.k(text).view(t, self.heads, -1), self.v(text).view(t, self.heads, -1), t)

    def forward(self, x: Tensor, state: LinearAttentionState, num_classes: int) -> Tensor:
        """x (B, T', h, w, C) for any chunk of T' classes, `state` of all `num_classes` -> (B, T', h, w, C)."""
        shape = x.shape
        q = self.q(self.norm1(x)).view(*shape[:-1], self.heads, -1)  # (B, T', h, w, heads, d)
        x = x + self.proj(linear_attention_query(q.unsqueeze(-3), state, num_classes).reshape(shape))
        if self.mlp is None:
            return x
        fc1, _, fc2 = self.mlp
        h = fc1(self.norm2(x))
        if torch.is_grad_enabled() and (h.requires_grad or fc2.weight.requires_grad):
            return x + _GeluLinear.apply(h, fc2.weight, fc2.bias)
        return x + self.mlp[2](self.mlp[1](h))


class CostClassAttention(nn.Module):
    """CAT-Seg-style class aggregation (`class_attention = "catseg"`): at every pixel, linear attention
    over the classes whose queries and keys are the class embeddings there concatenated with the
    class's projected text (Linear + ReLU, CAT-Seg's text guidance) and whose values are the class
    embeddings, so the classes exchange information at each pixel. Pre-norm, output projection and
    (mlp_ratio > 0) a feed-forward, as `TextClassAttention`; no pooling and no padding tokens. The
    keys/values now depend on the embedding, so their sums are per pixel and per image: `state` over
    each chunk of classes, added up, then `forward` on each chunk (exact in chunks).

    dim: C; text_dim: D; guidance_dim: G of the projected text; heads."""

    def __init__(self, dim: int, text_dim: int, guidance_dim: int, heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.text_guidance = nn.Sequential(nn.Linear(text_dim, guidance_dim), nn.ReLU())
        self.norm1 = nn.LayerNorm(dim)
        self.attention = ClassAttention(dim, guidance_dim, heads)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim) if mlp_ratio else None
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)) if mlp_ratio else None

    def _guidance(self, text: Tensor) -> Tensor:
        """text (T', D) -> (1, T', 1, 1, G), broadcast over images and pixels."""
        return self.text_guidance(text)[None, :, None, None]

    def state(self, x: Tensor, text: Tensor, num_classes: int) -> LinearAttentionState:
        """x (B, T', h, w, C) and text (T', D) of one chunk, num_classes T of all chunks -> this chunk's
        key/value sums per pixel: kv (B, h, w, heads, d, d), ksum (B, h, w, heads, d)."""
        tokens = self.norm1(x)
        a = self.attention
        k = a.project(a.k, tokens, self._guidance(text)).permute(0, 2, 3, 1, 4, 5)  # (B, h, w, T', heads, d)
        v = a.project(a.v, tokens, None).permute(0, 2, 3, 1, 4, 5)
        return linear_attention_state(k, v, num_classes)

    def forward(self, x: Tensor, state: LinearAttentionState, num_classes: int, text: Tensor) -> Tensor:
        """x (B, T', h, w, C), text (T', D) of a chunk, `state` summed over all `num_classes` -> (B, T', h, w, C)."""
        shape = x.shape
        a = self.attention
        q = a.project(a.q, self.norm1(x), self._guidance(text)).permute(0, 2, 3, 1, 4, 5)  # (B, h, w, T', heads, d)
        out = linear_attention_query(q, state, num_classes).permute(0, 3, 1, 2, 4, 5)  # (B, T', h, w, heads, d)
        x = x + self.proj(out.reshape(shape))
        if self.mlp is None:
            return x
        return x + self.mlp(self.norm2(x))


class VLFBlock(nn.Module):
    """One VLF block: Swin over space with SAM image guidance, then class attention with text.

    dim: embedding C (128); guidance_dim: channels of the SAM guidance; text_dim: D;
    shifts: the Swin blocks' shifts ((0,) or (window // 2,) for one block, (0, window // 2) for a pair);
    class_ffn: a feed-forward after the class attention; class_attention: text (the paper's: text as
    keys and values, `TextClassAttention`) | catseg (`CostClassAttention`, text guidance of width
    text_guidance_dim; run it through `spatial_part` / `class_part`, its state summed over all chunks).
    """

    def __init__(self, dim: int, guidance_dim: int, text_dim: int, heads: int = 4, window: int = 12,
                 shifts: tuple[int, ...] | None = None, class_ffn: bool = True, class_attention: str = "text",
                 text_guidance_dim: int = 128):
        super().__init__()
        self.spatial = SwinBlockPair(dim, guidance_dim, heads=heads, window=window, shifts=shifts)
        mlp_ratio = 4 if class_ffn else 0
        if class_attention == "text":
            self.classes = TextClassAttention(dim, text_dim, heads=heads, mlp_ratio=mlp_ratio)
        elif class_attention == "catseg":
            self.classes = CostClassAttention(dim, text_dim, text_guidance_dim, heads=heads, mlp_ratio=mlp_ratio)
        else:
            raise ValueError(f"VLFBlock: class_attention = {class_attention!r}; choose one of text, catseg")

    def spatial_part(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """(a): x (B, C, T', h, w), guidance as in `forward` -> (B, T', h, w, C)."""
        b, c, t, h, w = x.shape
        y = self.spatial(x.transpose(1, 2).reshape(b * t, c, h, w), guidance)
        return y.view(b, t, c, h, w).permute(0, 1, 3, 4, 2)

    def class_part(self, y: Tensor, state: LinearAttentionState, num_classes: int, text: Tensor | None = None) -> Tensor:
        """(b): y (B, T', h, w, C) from `spatial_part`, the class attention's state over all classes
        (and the chunk's text (T', D) for "catseg") -> (B, C, T', h, w)."""
        y = self.classes(y, state, num_classes) if text is None else self.classes(y, state, num_classes, text)
        return y.permute(0, 4, 1, 2, 3)

    def forward(self, x: Tensor, guidance: Tensor | None, state: LinearAttentionState, num_classes: int) -> Tensor:
        """x (B, C, T', h, w); guidance (B, G, h, w) shared by an image's classes, (B*T', G, h, w) per
        class, or None -> (B, C, T', h, w). The text class attention only ("catseg": `spatial_part`,
        then `class_part` once the state of all chunks is summed)."""
        if not isinstance(self.classes, TextClassAttention):
            raise ValueError("VLFBlock.forward runs the text class attention; class_attention = 'catseg' runs "
                             "spatial_part, then class_part with the state summed over all classes")
        return self.class_part(self.spatial_part(x, guidance), state, num_classes)
