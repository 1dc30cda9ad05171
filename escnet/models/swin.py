"""Cost-aggregation layers shared by CAT-Seg and ESC-Net's VLF, with CAT-Seg's semantics.

- `SwinBlockPair`: two Swin blocks (shift 0, then window // 2) over a per-class correlation embedding.
  Queries and keys see concat(x, guidance), values see x alone; no relative position bias.
- Linear attention (Katharopoulos et al., "Transformers are RNNs"): feature map elu(x) + 1, eps 1e-6.
  It is split into `linear_attention_state` (sums over the key/value sequence) and
  `linear_attention_query`, so a long sequence (the class axis) can be processed in chunks exactly:
  accumulate the state over all chunks, then query chunk by chunk.
- `ClassAttentionLayer`: CAT-Seg's class-aggregation layer (per-pixel linear attention over the
  class axis, q/k from concat(x, text guidance), v from x, optional pooling, learnable padding
  tokens up to `pad_len`), with a chunk-exact interface.

Parameter names follow CAT-Seg's checkpoints (cat_seg/modeling/transformer/model.py), so its
trained weights load without renaming.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# CAT-Seg (like Swin) masks cross-region pairs of a shifted window with -100, not -inf.
_MASK_VALUE = -100.0


def elu_feature_map(x: Tensor) -> Tensor:
    """Linear-attention feature map phi(x) = elu(x) + 1 (positive, so the normaliser is > 0)."""
    return F.elu(x) + 1


class LinearAttentionState(NamedTuple):
    """Sums over a key/value sequence of length S, for `linear_attention_query`.

    kv: (..., heads, d, e) = sum_s phi(k_s) v_s^T / S;  ksum: (..., heads, d) = sum_s phi(k_s).
    States of disjoint parts of one sequence add up (`a + b` concatenates tuples, so use `add`).
    """

    kv: Tensor
    ksum: Tensor

    def add(self, other: LinearAttentionState) -> LinearAttentionState:
        return LinearAttentionState(self.kv + other.kv, self.ksum + other.ksum)


def linear_attention_state(k: Tensor, v: Tensor, length: int) -> LinearAttentionState:
    """Key/value sums of one part of a sequence.

    k: (..., S', heads, d), v: (..., S', heads, e); `length` is the length S of the WHOLE sequence
    (all parts). Values are divided by S before summing, as CAT-Seg does to keep fp16 in range.
    Returns a state with kv (..., heads, d, e) and ksum (..., heads, d).
    """
    phi_k = elu_feature_map(k)
    kv = torch.einsum("...shd,...she->...hde", phi_k, v / length)
    return LinearAttentionState(kv, phi_k.sum(dim=-3))


def linear_attention_query(q: Tensor, state: LinearAttentionState, length: int, eps: float = 1e-6) -> Tensor:
    """Attend queries q (..., L, heads, d) to a sequence summarised by `state` -> (..., L, heads, e).

    out_l = phi(q_l) . sum_s phi(k_s) v_s^T / (phi(q_l) . sum_s phi(k_s) + eps); `length` must be the
    S used to build the state. The state's leading dims broadcast against q's.
    """
    phi_q = elu_feature_map(q)
    z = 1.0 / (torch.einsum("...lhd,...hd->...lh", phi_q, state.ksum) + eps)
    return torch.einsum("...lhd,...hde->...lhe", phi_q, state.kv) * (z * length).unsqueeze(-1)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = 1e-6) -> Tensor:
    """Linear attention: q (..., L, heads, d), k (..., S, heads, d), v (..., S, heads, e) -> (..., L, heads, e)."""
    length = k.shape[-3]
    return linear_attention_query(q, linear_attention_state(k, v, length), length, eps)


def _split_linear(layer: nn.Linear, x: Tensor, guidance: Tensor | None) -> Tensor:
    """layer(concat(x, guidance)) without materialising the concatenation.

    x (..., C) and guidance (..., G) may differ in broadcastable leading dims: guidance shared by
    all classes of an image is projected once and broadcast, instead of being repeated T times.
    """
    c = x.shape[-1]
    out = F.linear(x, layer.weight[:, :c], layer.bias)
    if guidance is not None:
        out = out + F.linear(guidance, layer.weight[:, c:])
    return out


class WindowAttention(nn.Module):
    """Multi-head attention inside windows; q/k from concat(x, guidance), v from x; no position bias.

    dim: C; guidance_dim: G (0 for none); heads: attention heads (head dim = C // heads).
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"window attention: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, guidance: Tensor | None, mask: Tensor | None) -> Tensor:
        """x (Bg, T, nW, L, C) windows of L tokens; guidance (Bg, 1, nW, L, G) or None;
        mask (nW, L, L) additive or None -> (Bg, T, nW, L, C)."""
        def heads(t: Tensor) -> Tensor:  # (..., L, C) -> (..., heads, L, C // heads)
            return t.unflatten(-1, (self.heads, -1)).transpose(-2, -3)

        q = heads(_split_linear(self.q, x, guidance))
        k = heads(_split_linear(self.k, x, guidance))
        v = heads(self.v(x))
        shape = q.shape  # (Bg, T, nW, heads, L, d)
        # 4-D inputs and a 4-D mask reach the fused attention kernels (CPU and CUDA) and torch.compile;
        # more leading dims fall back to the unfused path.
        flat = lambda t: t.reshape(-1, shape[2] * shape[3], *shape[-2:])  # noqa: E731 - (Bg*T, nW*heads, L, d)
        if mask is not None:
            mask = mask.unsqueeze(1).expand(-1, shape[3], -1, -1).reshape(1, -1, *mask.shape[-2:])
        out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=mask).view(shape)
        return self.proj(out.transpose(-2, -3).flatten(-2))


class Mlp(nn.Module):
    """Transformer MLP: fc1 -> GELU -> fc2 (names as timm's Mlp, which CAT-Seg uses)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


@lru_cache(maxsize=32)
def window_attention_mask(h: int, w: int, window: int, shift: int) -> Tensor | None:
    """Additive mask (nW, L, L), L = window**2, for windows over an (h, w) grid padded up to multiples of
    `window` and cyclically shifted by `shift`; windows in row-major order of the padded grid.

    Tokens may attend to each other only if they come from the same region of the unshifted grid
    (Swin's shifted-window rule; this equals the `attn_mask` buffer CAT-Seg stores for 24 x 24,
    window 12, shift 6) and are both real or both padding. None when nothing is masked.
    """
    hp, wp = -(-h // window) * window, -(-w // window) * window
    if shift == 0 and (hp, wp) == (h, w):
        return None
    label = torch.zeros(hp, wp, device="cpu")  # cached: never on an ambient (e.g. meta) device
    if shift > 0:
        # Swin's three bands per axis in the shifted frame; equal labels = same source region.
        bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        for i, hs in enumerate(bands):
            for j, ws in enumerate(bands):
                label[hs, ws] = 3 * i + j
    pad = torch.ones(hp, wp, dtype=torch.bool, device="cpu")
    pad[:h, :w] = False
    label = label + 9 * torch.roll(pad, shifts=(-shift, -shift), dims=(0, 1))
    windows = label.view(hp // window, window, wp // window, window).transpose(1, 2).reshape(-1, window * window)
    diff = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(diff.shape, device="cpu").masked_fill(diff, _MASK_VALUE)


def effective_window(h: int, w: int, window: int, shift: int) -> tuple[int, int]:
    """(window, shift) actually used on an (h, w) grid: CAT-Seg's rule makes a grid no larger than
    the window a single unshifted window of side min(h, w)."""
    if min(h, w) <= window:
        return min(h, w), 0
    return window, shift


class SwinBlock(nn.Module):
    """One pre-norm Swin block with guidance (CAT-Seg's SwinTransformerBlock).

    dim: C; guidance_dim: G; heads; window: window side; shift: cyclic shift (0 or window // 2).
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int, window: int, shift: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, guidance_dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (N, h, w, C) channels-last; guidance (Bg, h, w, G) with N = Bg * T (the T entries of one
        guidance row are consecutive in N), already normalised, or None -> (N, h, w, C)."""
        n, h, w, c = x.shape
        window, shift = effective_window(h, w, self.window, self.shift)
        hp, wp = -(-h // window) * window, -(-w // window) * window

        def to_windows(t: Tensor) -> Tensor:  # (M, h, w, K) -> (M, nW, L, K)
            t = F.pad(t, (0, 0, 0, wp - w, 0, hp - h))
            if shift:
                t = torch.roll(t, shifts=(-shift, -shift), dims=(1, 2))
            t = t.view(t.shape[0], hp // window, window, wp // window, window, t.shape[-1])
            return t.transpose(2, 3).reshape(t.shape[0], -1, window * window, t.shape[-1])

        xw = to_windows(self.norm1(x))
        gw = None
        if guidance is not None:
            bg = guidance.shape[0]
            if n % bg:
                raise ValueError(f"Swin block: batch {n} is not a multiple of the guidance batch {bg}")
            gw = to_windows(guidance).unsqueeze(1)
        else:
            bg = n
        mask = window_attention_mask(h, w, window, shift)
        if mask is not None:
            mask = mask.to(x.device, x.dtype)
        y = self.attn(xw.view(bg, n // bg, *xw.shape[1:]), gw, mask).reshape(n, hp // window, wp // window, window, window, c)
        y = y.transpose(2, 3).reshape(n, hp, wp, c)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class SwinBlockPair(nn.Module):
    """Swin blocks with appearance guidance over a per-class embedding; by default two (shift 0, then
    window // 2: CAT-Seg's SwinTransformerBlockWrapper). ESC-Net's VLF uses one block per ESC block,
    its shift alternating over the blocks: `shifts=(0,)` or `shifts=(window // 2,)`.

    dim: C of x; guidance_dim: G of the guidance (0 = no guidance); heads; window (12 in CAT-Seg);
    shifts: the cyclic shift of each block in order (modules block_1, block_2, ...).
    Any h, w works: grids not a multiple of the window are padded, and padding is masked out.
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int = 4, window: int = 12,
                 shifts: tuple[int, ...] | None = None):
        super().__init__()
        shifts = (0, window // 2) if shifts is None else tuple(shifts)
        self.blocks = [f"block_{i + 1}" for i in range(len(shifts))]
        for name, shift in zip(self.blocks, shifts):
            self.add_module(name, SwinBlock(dim, guidance_dim, heads, window, shift=shift))
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (N, C, h, w); guidance (N, G, h, w), or (B, G, h, w) shared by consecutive groups of
        N / B rows of x (e.g. N = B*T classes of B images), or None -> (N, C, h, w)."""
        if (guidance is None) != (self.guidance_norm is None):
            raise ValueError("SwinBlockPair: guidance must be given exactly when guidance_dim > 0")
        x = x.permute(0, 2, 3, 1).contiguous()  # (N, h, w, C); no copy when x is channels-last in memory
        if guidance is not None:
            if guidance.shape[-2:] != x.shape[1:3]:
                raise ValueError(f"SwinBlockPair: guidance grid {tuple(guidance.shape[-2:])} != x grid {tuple(x.shape[1:3])}")
            guidance = self.guidance_norm(guidance.permute(0, 2, 3, 1))
        for name in self.blocks:
            x = getattr(self, name)(x, guidance)
        return x.permute(0, 3, 1, 2)


class ClassAttention(nn.Module):
    """Multi-head linear attention projections: q/k from concat(x, guidance), v from x, no output
    projection (CAT-Seg's AttentionLayer). dim: C; guidance_dim: G (0 for none); heads."""

    def __init__(self, dim: int, guidance_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"class attention: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.guidance_dim = guidance_dim
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)

    def project(self, layer: nn.Linear, x: Tensor, guidance: Tensor | None) -> Tensor:
        """(..., C) [+ (..., G)] -> (..., heads, C // heads)."""
        if layer is not self.v and (guidance is None) != (self.guidance_dim == 0):
            raise ValueError(f"class attention: text guidance must be given exactly when guidance_dim > 0 (is {self.guidance_dim})")
        return _split_linear(layer, x, guidance).unflatten(-1, (self.heads, -1))


class ClassAttentionLayer(nn.Module):
    """CAT-Seg's class-aggregation layer (ClassTransformerLayer): per pixel, linear attention over
    the class axis, then an MLP; exact in class chunks.

    dim: C of the embedding; guidance_dim: G of the text guidance (0 = none); heads;
    pool_train / pool_eval: average-pooling window applied before the attention (CAT-Seg: 2x2 in
    training, 1x1 at evaluation), the result is bilinearly upsampled back;
    pad_len: when fewer than pad_len classes are given, learnable padding tokens fill the class
    axis up to pad_len (0 disables), so the attention always sees >= pad_len tokens.

    Note the residual structure, kept from CAT-Seg: with y = pool(x) + attn, y = y + mlp(y),
    the output is x + upsample(y), i.e. x enters twice.
    """

    def __init__(self, dim: int, guidance_dim: int, heads: int = 4, pool_train: tuple[int, int] = (2, 2),
                 pool_eval: tuple[int, int] = (1, 1), pad_len: int = 256):
        super().__init__()
        self.pool_train = tuple(pool_train)
        self.pool_eval = tuple(pool_eval)
        self.pad_len = pad_len
        self.attention = ClassAttention(dim, guidance_dim, heads)
        self.MLP = nn.Sequential(nn.Linear(dim, dim * 4), nn.ReLU(), nn.Linear(dim * 4, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim)) if pad_len > 0 else None
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim)) if pad_len > 0 and guidance_dim > 0 else None

    def num_padding(self, num_classes: int) -> int:
        """Padding tokens added to a class axis of length num_classes."""
        return max(self.pad_len - num_classes, 0)

    def _pooled_tokens(self, x: Tensor) -> Tensor:
        """x (B, t, C, h, w) -> pooled tokens (B, t, h', w', C). A view without a copy when x is
        channels-last in memory (as the Swin blocks leave it): every op here then works on
        contiguous (..., C) rows, and only the linear-attention sums see the class axis."""
        pool = self.pool_train if self.training else self.pool_eval
        if pool != (1, 1):
            b = x.shape[0]
            x = F.avg_pool2d(x.flatten(0, 1), pool).unflatten(0, (b, -1))
        return x.permute(0, 1, 3, 4, 2)

    def state(self, x: Tensor, guidance: Tensor | None, length: int) -> LinearAttentionState:
        """Attention sums of one chunk of classes.

        x (B, t, C, h, w); guidance (B, t, G) or None; length: the total number of tokens on the
        class axis (all chunks + `num_padding`). Returns kv (B, h', w', heads, d, d), ksum (B, h', w', heads, d).
        """
        tokens = self.norm1(self._pooled_tokens(x))  # (B, t, h', w', C)
        g = guidance[:, :, None, None] if guidance is not None else None
        k = self.attention.project(self.attention.k, tokens, g)  # (B, t, h', w', heads, d)
        v = self.attention.project(self.attention.v, tokens, None)
        return linear_attention_state(k.permute(0, 2, 3, 1, 4, 5), v.permute(0, 2, 3, 1, 4, 5), length)

    def padding_state(self, num_pad: int, length: int) -> LinearAttentionState:
        """Sums contributed by num_pad identical padding tokens: kv (heads, d, d), ksum (heads, d)."""
        token = self.norm1(self.padding_tokens[0])  # (1, C)
        g = self.padding_guidance[0] if self.padding_guidance is not None else None
        k = self.attention.project(self.attention.k, token, g)
        v = self.attention.project(self.attention.v, token, None)
        s = linear_attention_state(k, v, length)
        return LinearAttentionState(s.kv * num_pad, s.ksum * num_pad)

    def apply_state(self, x: Tensor, guidance: Tensor | None, state: LinearAttentionState, length: int) -> Tensor:
        """Update one chunk of classes x (B, t, C, h, w) with guidance (B, t, G) or None, given the
        state summed over all chunks and padding -> (B, t, C, h, w)."""
        h, w = x.shape[-2:]
        y = self._pooled_tokens(x)  # (B, t, h', w', C)
        g = guidance[:, :, None, None] if guidance is not None else None
        q = self.attention.project(self.attention.q, self.norm1(y), g)  # (B, t, h', w', heads, d)
        out = linear_attention_query(q.permute(0, 2, 3, 1, 4, 5), state, length)  # (B, h', w', t, heads, d)
        y = y + out.permute(0, 3, 1, 2, 4, 5).flatten(-2)
        y = y + self.MLP(self.norm2(y))
        y = y.permute(0, 1, 4, 2, 3)  # (B, t, C, h', w'), channels-last in memory
        if y.shape[-2:] != (h, w):
            b = y.shape[0]
            y = F.interpolate(y.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=True).unflatten(0, (b, -1))
        return x + y

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """All classes at once: x (B, T, C, h, w), guidance (B, T, G) or None -> (B, T, C, h, w)."""
        t = x.shape[1]
        num_pad = self.num_padding(t)
        length = t + num_pad
        state = self.state(x, guidance, length)
        if num_pad:
            state = state.add(self.padding_state(num_pad, length))
        return self.apply_state(x, guidance, state, length)
