"""Vision-Language Fusion (paper Sec. 3.5).

(a) image guidance: a spatial Swin block over every (image, class) correlation embedding whose
    queries/keys also see F'_v, the SAM-refined image features (the paper's reading: one map per image,
    shared by all classes; `sam_guidance = "perclass"`: each class's own refined features). One Swin
    block per VLF, the shift alternating over the ESC blocks (`vlf_swin = "pair"`: two per VLF);
(b) text guidance: linear attention over the class axis with the text features as keys and values,
    no positional embedding, so the block is order-agnostic and takes any number of classes.

Because keys and values come from text alone, the class-attention statistics
sum_t phi(k_t) v_t^T and sum_t phi(k_t) are per-vocabulary constants: `text_state` computes
them once over all T classes and `forward` can then run on any chunk of classes with exactly the
result of the unchunked pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from escnet.models.swin import LinearAttentionState, SwinBlockPair, linear_attention_query, linear_attention_state


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


class VLFBlock(nn.Module):
    """One VLF block: Swin over space with SAM image guidance, then class attention with text.

    dim: embedding C (128); guidance_dim: channels of the SAM guidance; text_dim: D;
    shifts: the Swin blocks' shifts ((0,) or (window // 2,) for one block, (0, window // 2) for a pair);
    class_ffn: a feed-forward after the class attention.
    """

    def __init__(self, dim: int, guidance_dim: int, text_dim: int, heads: int = 4, window: int = 12,
                 shifts: tuple[int, ...] | None = None, class_ffn: bool = True):
        super().__init__()
        self.spatial = SwinBlockPair(dim, guidance_dim, heads=heads, window=window, shifts=shifts)
        self.classes = TextClassAttention(dim, text_dim, heads=heads, mlp_ratio=4 if class_ffn else 0)

    def forward(self, x: Tensor, guidance: Tensor | None, state: LinearAttentionState, num_classes: int) -> Tensor:
        """x (B, C, T', h, w); guidance (B, G, h, w) shared by an image's classes, (B*T', G, h, w) per
        class, or None -> (B, C, T', h, w)."""
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = self.spatial(y, guidance)
        y = y.view(b, t, c, h, w).permute(0, 1, 3, 4, 2)  # (B, T', h, w, C)
        y = self.classes(y, state, num_classes)
        return y.permute(0, 4, 1, 2, 3)
