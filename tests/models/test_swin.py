"""Aggregation layers against dense, loop-free restatements of CAT-Seg's formulas."""
import pytest
import torch
import torch.nn.functional as F

from escnet.models.swin import (
    ClassAttentionLayer,
    SwinBlockPair,
    effective_window,
    linear_attention,
    linear_attention_query,
    linear_attention_state,
    window_attention_mask,
)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (zero-initialised padding tokens and unit norms would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _dense_swin_block(block, x, g, window, shift):
    """One CAT-Seg Swin block computed as full attention over all h*w tokens with an explicit mask.

    Two tokens may attend iff, after padding to multiples of `window` and rolling by -shift, they sit in
    the same window and on the same side of the wrap-around (per axis); padded keys are never attended.
    x (N, h, w, C); g (N, h, w, G) already normalised, or None.
    """
    n, h, w, c = x.shape
    hp, wp = -(-h // window) * window, -(-w // window) * window
    xn = block.norm1(x).reshape(n, h * w, c)
    inp = xn if g is None else torch.cat([xn, g.reshape(n, h * w, -1)], -1)
    heads = block.attn.heads

    def split(t):
        return t.view(n, h * w, heads, -1).transpose(1, 2)

    q, k, v = split(block.attn.q(inp)), split(block.attn.k(inp)), split(block.attn.v(xn))
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    si, sj = (ii.flatten() - shift) % hp, (jj.flatten() - shift) % wp  # shifted-frame coordinates
    key = torch.stack([si // window, sj // window, si >= hp - shift, sj >= wp - shift], -1)
    allowed = (key[:, None] == key[None]).all(-1)
    logits = q @ k.transpose(-1, -2) / (c // heads) ** 0.5
    attn = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    y = block.attn.proj((attn @ v).transpose(1, 2).reshape(n, h * w, c)).view(n, h, w, c)
    x = x + y
    return x + block.mlp(block.norm2(x))


def _dense_pair(pair, x, g):
    """SwinBlockPair reference. x (N, C, h, w); g (N, G, h, w) or None."""
    h, w = x.shape[-2:]
    x = x.permute(0, 2, 3, 1)
    g = pair.guidance_norm(g.permute(0, 2, 3, 1)) if g is not None else None
    for blk in (pair.block_1, pair.block_2):
        window, shift = effective_window(h, w, blk.window, blk.shift)
        x = _dense_swin_block(blk, x, g, window, shift)
    return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("h,w,window", [(24, 24, 12), (8, 8, 4), (7, 10, 4), (4, 4, 12), (5, 9, 12)])
def test_swin_pair_matches_dense_reference(h, w, window):
    torch.manual_seed(0)
    pair = SwinBlockPair(16, 8, heads=2, window=window)
    _randomise(pair)
    x, g = torch.randn(3, 16, h, w), torch.randn(3, 8, h, w)
    with torch.no_grad():
        out = pair(x, g)
        ref = _dense_pair(pair, x, g)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_swin_pair_shared_guidance_equals_repeated():
    """Guidance (B, G, h, w) shared by the T classes of each image == guidance repeated to (B*T, ...)."""
    torch.manual_seed(1)
    pair = SwinBlockPair(16, 8, heads=4, window=4)
    _randomise(pair, 1)
    x, g = torch.randn(2 * 3, 16, 8, 8), torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(pair(x, g), pair(x, g.repeat_interleave(3, 0)), atol=1e-6, rtol=1e-6)


def test_swin_pair_without_guidance_and_errors():
    torch.manual_seed(2)
    plain = SwinBlockPair(16, 0, heads=2, window=4)
    _randomise(plain, 2)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, None), _dense_pair(plain, x, None), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="guidance must be given"):
        plain(x, torch.randn(2, 4, 8, 8))
    guided = SwinBlockPair(16, 4, heads=2, window=4)
    with pytest.raises(ValueError, match="guidance must be given"):
        guided(x, None)
    with pytest.raises(ValueError, match="grid"):
        guided(x, torch.randn(2, 4, 6, 6))
    with pytest.raises(ValueError, match="not a multiple of the guidance batch"):
        guided(torch.randn(3, 16, 8, 8), torch.randn(2, 4, 8, 8))


def test_window_mask_follows_swin_regions():
    # 24 x 24, window 12, shift 6: the buffer CAT-Seg stores has 16 windows of 144 tokens, 4 of them split
    mask = window_attention_mask(24, 24, 12, 6)
    assert mask.shape == (4, 144, 144)
    assert (mask == 0).all(-1).all(-1).tolist() == [True, False, False, False]
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert window_attention_mask(24, 24, 12, 0) is None
    assert window_attention_mask(5, 8, 4, 0).shape == (4, 16, 16)  # padding alone needs a mask
    assert effective_window(24, 24, 12, 6) == (12, 6)
    assert effective_window(12, 20, 12, 6) == (12, 0)


def _dense_linear_attention(q, k, v, eps=1e-6):
    """sum_s (phi(q).phi(k_s)) v_s / (sum_s phi(q).phi(k_s) + eps), per head. q (N, L, H, d)."""
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    a = torch.einsum("nlhd,nshd->nhls", phi_q, phi_k)
    out = torch.einsum("nhls,nshe->nlhe", a, v)
    return out / (a.sum(-1).transpose(1, 2).unsqueeze(-1) + eps)


def test_linear_attention_and_chunked_state():
    torch.manual_seed(3)
    q, k, v = torch.randn(4, 7, 2, 8), torch.randn(4, 10, 2, 8), torch.randn(4, 10, 2, 5)
    full = linear_attention(q, k, v)
    torch.testing.assert_close(full, _dense_linear_attention(q, k, v), atol=1e-5, rtol=1e-5)
    state = linear_attention_state(k[:, :3], v[:, :3], 10).add(linear_attention_state(k[:, 3:], v[:, 3:], 10))
    torch.testing.assert_close(linear_attention_query(q, state, 10), full, atol=1e-6, rtol=1e-5)


def _dense_class_layer(layer, x, guidance, pool):
    """CAT-Seg's ClassTransformerLayer.forward with explicit padding, restated densely.
    x (B, T, C, h, w), guidance (B, T, G)."""
    b, t, c, h, w = x.shape
    xp = F.avg_pool2d(x.flatten(0, 1), pool).unflatten(0, (b, t))
    n_pad = max(layer.pad_len - t, 0)
    if n_pad:
        hp, wp = xp.shape[-2:]
        xp = torch.cat([xp, layer.padding_tokens.view(1, 1, c, 1, 1).expand(b, n_pad, c, hp, wp)], 1)
        guidance = torch.cat([guidance, layer.padding_guidance.expand(b, n_pad, -1)], 1)
    tok = xp.permute(0, 3, 4, 1, 2)  # (B, h', w', S, C)
    normed = layer.norm1(tok)
    inp = torch.cat([normed, guidance[:, None, None].expand(*tok.shape[:3], -1, -1)], -1)
    heads = layer.attention.heads

    def split(z):
        return z.flatten(0, 2).unflatten(-1, (heads, -1))

    out = _dense_linear_attention(split(layer.attention.q(inp)), split(layer.attention.k(inp)), split(layer.attention.v(normed)))
    y = tok + out.flatten(-2).view(tok.shape)
    y = y + layer.MLP(layer.norm2(y))
    y = y.permute(0, 3, 4, 1, 2).flatten(0, 1)
    y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True).unflatten(0, (b, -1))
    return x + y[:, :t]


@pytest.mark.parametrize("t", [3, 9])  # fewer classes than pad_len (padded) and more (not padded)
@pytest.mark.parametrize("training", [True, False])
def test_class_layer_matches_cat_seg(t, training):
    torch.manual_seed(4)
    layer = ClassAttentionLayer(16, 8, heads=2, pool_train=(2, 2), pool_eval=(1, 1), pad_len=6).train(training)
    _randomise(layer, 4)
    x, g = torch.randn(2, t, 16, 6, 6), torch.randn(2, t, 8)
    with torch.no_grad():
        out = layer(x, g)
        ref = _dense_class_layer(layer, x, g, (2, 2) if training else (1, 1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_class_layer_chunks_and_order():
    torch.manual_seed(5)
    layer = ClassAttentionLayer(16, 8, heads=4, pad_len=8).eval()
    _randomise(layer, 5)
    x, g = torch.randn(2, 5, 16, 4, 4), torch.randn(2, 5, 8)
    with torch.no_grad():
        full = layer(x, g)
        length = 5 + layer.num_padding(5)
        state = layer.padding_state(layer.num_padding(5), length)
        for c in (slice(0, 2), slice(2, 5)):
            state = state.add(layer.state(x[:, c], g[:, c], length))
        chunked = torch.cat([layer.apply_state(x[:, c], g[:, c], state, length) for c in (slice(0, 2), slice(2, 5))], 1)
        perm = torch.tensor([3, 0, 4, 1, 2])
        permuted = layer(x[:, perm], g[:, perm])
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(permuted, full[:, perm], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="text guidance must be given"):
        layer(x, None)
