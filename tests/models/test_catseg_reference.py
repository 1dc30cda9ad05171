"""CAT-Seg's head (correlation, aggregator, decoder, class truncation) against an independent
reference written from the official code's formulas.

`reference_head` below transcribes, with plain torch ops, what KU-CVLAB/CAT-Seg
(cat_seg/modeling/transformer/model.py: `Aggregator.forward`, `correlation`, `corr_embed`,
`SwinTransformerBlockWrapper`, `SwinTransformerBlock`, `WindowAttention`, `window_partition`,
`ClassTransformerLayer`, `LinearAttention`, `Up`, `DoubleConv`, `conv_decoder`; and
cat_seg/cat_seg_model.py: `upsample1` / `upsample2` of the two CLIP layers and the final bilinear
resize) computes. It calls none of escnet's modules: it reads the weights from a state dict under
the official parameter names (which escnet keeps), so the same random weights drive both.
Its input is what CLIP gives (dense features F_v and the two intermediate layers): CLIP itself is
tested against Hugging Face's implementation in tests/models/test_clip.py.

Differences that are NOT the official code's: none. Where escnet computes the same thing another way
(guidance projected once per image, padding folded into the linear-attention sums, class chunks,
top-k kept classes sorted) the outputs must agree to float64 rounding.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from escnet.models.catseg import CATSeg, CATSegConfig

TOL = dict(atol=1e-9, rtol=1e-7)  # float64 on both sides


# ---------------------------------------------------------------------------------------------
# The official formulas, transcribed (B: images, T: classes, C: hidden dim, H x W: token grid)


def _linear(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _layer_norm(sd, name, x):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _conv(sd, name, x, padding):
    return F.conv2d(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), padding=padding)


def _window_partition(x, ws):
    """(B, H, W, C) -> (num_windows * B, ws, ws, C), official `window_partition`."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def _window_reverse(windows, ws, h, w):
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _shift_mask(h, w, ws, shift, dtype):
    """The attn_mask buffer of the official SwinTransformerBlock (shift > 0)."""
    img_mask = torch.zeros((1, h, w, 1), dtype=dtype)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img_mask[:, hs, wsl, :] = cnt
            cnt += 1
    mw = _window_partition(img_mask, ws).view(-1, ws * ws)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _swin_block(sd, name, x, guidance, res, window, shift, heads):
    """Official SwinTransformerBlock.forward: x ((B T), H*W, C), guidance ((B T), H*W, G) or None."""
    h, w = res
    if min(res) <= window:  # official: no partition when the window covers the grid
        shift, window = 0, min(res)
    b, length, c = x.shape
    shortcut = x
    x = _layer_norm(sd, f"{name}.norm1", x).view(b, h, w, c)
    if guidance is not None:
        x = torch.cat([x, guidance.view(b, h, w, -1)], dim=-1)
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    xw = _window_partition(x, window).view(-1, window * window, x.shape[-1])
    # WindowAttention
    bw, n, _ = xw.shape
    q = _linear(sd, f"{name}.attn.q", xw).reshape(bw, n, heads, -1).permute(0, 2, 1, 3)
    k = _linear(sd, f"{name}.attn.k", xw).reshape(bw, n, heads, -1).permute(0, 2, 1, 3)
    v = _linear(sd, f"{name}.attn.v", xw[:, :, :c]).reshape(bw, n, heads, -1).permute(0, 2, 1, 3)
    q = q * (c // heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    if shift > 0:
        mask = _shift_mask(h, w, window, shift, x.dtype)
        nw = mask.shape[0]
        attn = attn.view(bw // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    attn = attn.softmax(dim=-1)
    y = _linear(sd, f"{name}.attn.proj", (attn @ v).transpose(1, 2).reshape(bw, n, -1))
    y = _window_reverse(y.view(-1, window, window, c), window, h, w)
    if shift > 0:
        y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + y.view(b, h * w, c)
    hidden = F.gelu(_linear(sd, f"{name}.mlp.fc1", _layer_norm(sd, f"{name}.norm2", x)))
    return x + _linear(sd, f"{name}.mlp.fc2", hidden)


def _swin_wrapper(sd, name, x, guidance, window, heads):
    """Official SwinTransformerBlockWrapper: x (B, C, T, H, W), guidance (B, G, H, W)."""
    b, c, t, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
    g = guidance.permute(0, 2, 3, 1).reshape(b, 1, h * w, -1).expand(b, t, h * w, -1).reshape(b * t, h * w, -1)
    g = _layer_norm(sd, f"{name}.guidance_norm", g)
    x = _swin_block(sd, f"{name}.block_1", x, g, (h, w), window, 0, heads)
    x = _swin_block(sd, f"{name}.block_2", x, g, (h, w), window, window // 2, heads)
    return x.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)


def _linear_attention(q, k, v, eps=1e-6):
    """Official LinearAttention: q (N, L, H, D), k, v (N, S, H, D)."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = v.size(1)
    v = v / length
    kv = torch.einsum("nshd,nshv->nhdv", k, v)
    z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * length


def _class_layer(sd, name, x, guidance, pool, pad_len, heads):
    """Official ClassTransformerLayer: x (B, C, T, H, W), guidance (B, T, G)."""
    b, c, t, h, w = x.shape
    xp = F.avg_pool2d(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), pool)
    hp, wp = xp.shape[-2:]
    xp = xp.view(b, t, c, hp, wp).permute(0, 2, 1, 3, 4)  # B C T H W
    if t < pad_len:
        tokens = sd[f"{name}.padding_tokens"].view(1, c, 1, 1, 1).expand(b, c, pad_len - t, hp, wp)
        xp = torch.cat([xp, tokens], dim=2)
        pad_g = sd[f"{name}.padding_guidance"].expand(b, pad_len - t, -1)
        guidance = torch.cat([guidance, pad_g], dim=1)
    tt = xp.shape[2]
    xp = xp.permute(0, 3, 4, 2, 1).reshape(b * hp * wp, tt, c)  # (B H W) T C
    g = guidance[:, None, None].expand(b, hp, wp, tt, -1).reshape(b * hp * wp, tt, -1)
    normed = _layer_norm(sd, f"{name}.norm1", xp)
    both = torch.cat([normed, g], dim=-1)
    q = _linear(sd, f"{name}.attention.q", both).unflatten(-1, (heads, -1))
    k = _linear(sd, f"{name}.attention.k", both).unflatten(-1, (heads, -1))
    v = _linear(sd, f"{name}.attention.v", normed).unflatten(-1, (heads, -1))
    xp = xp + _linear_attention(q, k, v).flatten(-2)
    mlp = F.relu(_linear(sd, f"{name}.MLP.0", _layer_norm(sd, f"{name}.norm2", xp)))
    xp = xp + _linear(sd, f"{name}.MLP.2", mlp)
    xp = xp.view(b, hp, wp, tt, c).permute(0, 3, 4, 1, 2).reshape(b * tt, c, hp, wp)  # (B T) C H W
    xp = F.interpolate(xp, size=(h, w), mode="bilinear", align_corners=True)
    xp = xp.view(b, tt, c, h, w).permute(0, 2, 1, 3, 4)[:, :, :t]
    return x + xp


def _group_norm(sd, name, x):
    c = x.shape[1]
    return F.group_norm(x, c // 16, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _up(sd, name, x, guidance):
    """Official Up: ConvTranspose x2, concat the guidance repeated per class, DoubleConv."""
    x = F.conv_transpose2d(x, sd[f"{name}.up.weight"], sd[f"{name}.up.bias"], stride=2)
    t = x.size(0) // guidance.size(0)
    x = torch.cat([x, guidance.repeat_interleave(t, dim=0)], dim=1)
    x = F.relu(_group_norm(sd, f"{name}.conv.double_conv.1", _conv(sd, f"{name}.conv.double_conv.0", x, 1)))
    return F.relu(_group_norm(sd, f"{name}.conv.double_conv.4", _conv(sd, f"{name}.conv.double_conv.3", x, 1)))


def reference_head(sd, cfg, feats, layer_feats, text, image_size, training=False):
    """CAT-Seg after CLIP, as the official code computes it.

    sd: escnet's CATSeg state dict (official names: `transformer.*` = sem_seg_head.predictor.transformer,
    `upsample1/2`); feats F_v (B, D, H, W) (official res3); layer_feats: the two intermediate CLIP layers
    (B, W, H, W); text (T, D) -> logits (B, T, image_size, image_size).
    """
    tr = {k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}
    b = feats.shape[0]
    res4 = F.conv_transpose2d(layer_feats[0], sd["upsample1.weight"], sd["upsample1.bias"], stride=2)
    res5 = F.conv_transpose2d(layer_feats[1], sd["upsample2.weight"], sd["upsample2.bias"], stride=4)
    text_feats = text[None, :, None, :].expand(b, -1, 1, -1)  # B T P C, P = 1 (predictor: text.repeat(B, ...))
    pad_len = cfg.pad_len

    def correlation(img, txt):
        return torch.einsum("bchw,btpc->bpthw", F.normalize(img, dim=1), F.normalize(txt, dim=-1))

    corr = correlation(feats, text_feats)
    classes, orig = None, text_feats.size(1)
    if pad_len > 0 and text_feats.size(1) > pad_len:
        score = corr.permute(0, 2, 1, 3, 4).flatten(-3).max(dim=-1)[0]
        classes = score.topk(pad_len, dim=-1, sorted=False)[1]
        th_text = F.normalize(text_feats, dim=-1)
        text_feats = torch.gather(th_text, 1, classes[..., None, None].expand(-1, -1, 1, th_text.size(-1)))
        corr = correlation(feats, text_feats)
    t = corr.shape[2]
    h, w = corr.shape[-2:]
    x = _conv(tr, "conv1", corr.permute(0, 2, 1, 3, 4).reshape(b * t, 1, h, w), cfg.stem_kernel // 2)
    x = x.view(b, t, -1, h, w).permute(0, 2, 1, 3, 4)  # B C T H W
    appearance = F.relu(_conv(tr, "guidance_projection.0", feats, 1))
    dec_guidance = [F.relu(_conv(tr, f"decoder_guidance_projection.{i}.0", g, 1)) for i, g in enumerate((res4, res5))]
    text_mean = text_feats.mean(dim=-2)
    text_mean = text_mean / text_mean.norm(dim=-1, keepdim=True)
    text_guidance = F.relu(_linear(tr, "text_guidance_projection.0", text_mean))
    pool = cfg.pooling_train if training else cfg.pooling_eval
    for i in range(cfg.num_layers):
        x = _swin_wrapper(tr, f"layers.{i}.swin_block", x, appearance, cfg.window, cfg.heads)
        x = _class_layer(tr, f"layers.{i}.attention", x, text_guidance, pool, pad_len, cfg.heads)
    y = x.permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w)
    y = _up(tr, "decoder1", y, dec_guidance[0])
    y = _up(tr, "decoder2", y, dec_guidance[1])
    logit = _conv(tr, "head", y, 1).view(b, t, *y.shape[-2:])
    if classes is not None:
        out = torch.full((b, orig, *logit.shape[-2:]), -100.0, dtype=logit.dtype)
        out.scatter_(1, classes[..., None, None].expand(-1, -1, *logit.shape[-2:]), logit)
        logit = out
    return F.interpolate(logit, size=(image_size, image_size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------


def _random_model(seed: int = 0, **overrides) -> CATSeg:
    """Tiny CAT-Seg in float64 with every parameter perturbed (zero-initialised tokens and biases,
    unit norms would hide a dropped term)."""
    torch.manual_seed(seed)
    model = CATSeg(CATSegConfig.preset("tiny", **overrides)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _inputs(model, t: int, b: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 96, 96, generator=gen, dtype=torch.float64) * 255
    # not unit length: CAT-Seg normalises the text features itself (correlation, text guidance)
    text = torch.randn(t, model.cfg.clip.embed_dim, generator=gen, dtype=torch.float64)
    return images, text * (0.5 + 2.5 * torch.rand(t, 1, generator=gen, dtype=torch.float64))


# T = 5 < pad_len: padding tokens; T = 8 = pad_len: neither; T = 11 > class_truncation: top-k of 8
@pytest.mark.parametrize("t", [5, 8, 11])
@pytest.mark.parametrize("training", [False, True], ids=["eval-pool1", "train-pool2"])
def test_catseg_equals_the_official_formulas(t, training):
    model = _random_model().train(training)
    cfg = model.cfg
    assert cfg.pad_len == cfg.class_truncation == 8 and cfg.pooling_train == (2, 2)
    images, text = _inputs(model, t)
    with torch.no_grad():
        ours = model(images, text)
        feats, layers, _ = model.encode_image(images)
        ref = reference_head(model.state_dict(), cfg, feats, layers, text, 96, training=training)
    assert ours.shape == ref.shape == (2, t, 96, 96)
    if t > cfg.class_truncation:
        assert int((ours == -100).all(-1).all(-1).sum()) == 2 * (t - 8)  # the dropped classes agree too
    torch.testing.assert_close(ours, ref, **TOL)


def test_catseg_equals_the_official_formulas_when_the_window_covers_the_grid():
    """window 6 on the 6 x 6 grid: the official block then uses one unshifted window (both blocks)."""
    model = _random_model(seed=2, window=6).eval()
    images, text = _inputs(model, 5, b=1, seed=2)
    with torch.no_grad():
        ours = model(images, text)
        feats, layers, _ = model.encode_image(images)
        ref = reference_head(model.state_dict(), model.cfg, feats, layers, text, 96)
    torch.testing.assert_close(ours, ref, **TOL)


def test_catseg_equals_the_official_formulas_in_class_chunks():
    model = _random_model(seed=3).eval()
    images, text = _inputs(model, 7, b=1, seed=3)
    with torch.no_grad():
        ours = model(images, text, class_chunk=3)
        feats, layers, _ = model.encode_image(images)
        ref = reference_head(model.state_dict(), model.cfg, feats, layers, text, 96)
    torch.testing.assert_close(ours, ref, **TOL)


def test_reference_is_sensitive_to_the_correlation():
    """The reference is not vacuous: another text changes its logits by far more than the tolerance."""
    model = _random_model().eval()
    images, text = _inputs(model, 5)
    with torch.no_grad():
        feats, layers, _ = model.encode_image(images)
        a = reference_head(model.state_dict(), model.cfg, feats, layers, text, 96)
        b = reference_head(model.state_dict(), model.cfg, feats, layers, text.flip(1), 96)
    assert (a - b).abs().max() > 1e-3
