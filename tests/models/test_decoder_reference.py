"""ESC-Net's decoder (docs/design.md section 5) against the formula written out with plain torch ops:
per class, x2 bilinear upsampling (F.interpolate's default, align_corners False) of E,
concatenation with the projected skip (the same for every class of an image), two
[3x3 conv, GroupNorm(max(C // 16, 1)), ReLU]; again with the second skip; a 3x3 conv to one channel.
The skips: ConvTranspose x2 / x4, then a 1x1 projection. escnet computes the conv over the
concatenation as two convs (the skip's part once per image); the result must be the same."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from escnet.models.decoder import Decoder, SkipProjector


def _block(sd, prefix, x, skip, t):
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    x = torch.cat([x, skip.repeat_interleave(t, dim=0)], dim=1)
    for conv, norm in ((0, 1), (3, 4)):
        w = sd[f"{prefix}.convs.{conv}.weight"]
        x = F.conv2d(x, w, padding=1)
        x = F.group_norm(x, max(w.shape[0] // 16, 1), sd[f"{prefix}.convs.{norm}.weight"], sd[f"{prefix}.convs.{norm}.bias"])
        x = F.relu(x)
    return x


def test_decoder_and_skips_equal_the_formula():
    torch.manual_seed(0)
    b, c, t, g, width = 2, 32, 3, 6, 64
    skips, decoder = SkipProjector(width, (16, 8), (8, 4)).double(), Decoder(c, (32, 16), (8, 4)).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*skips.parameters(), *decoder.parameters()]:
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        clip_layers = [torch.randn(b, width, g, g, generator=gen, dtype=torch.float64) for _ in range(2)]
        e = torch.randn(b, c, t, g, g, generator=gen, dtype=torch.float64)
        guidance = skips(clip_layers)
        ours = decoder(e, guidance)

        s, d = skips.state_dict(), decoder.state_dict()
        ref_skips = [F.conv2d(F.conv_transpose2d(clip_layers[i], s[f"up{i + 1}.weight"], s[f"up{i + 1}.bias"], stride=2 * (i + 1)),
                              s[f"proj{i + 1}.weight"], s[f"proj{i + 1}.bias"]) for i in range(2)]
        x = e.transpose(1, 2).reshape(b * t, c, g, g)
        x = _block(d, "up2", _block(d, "up1", x, ref_skips[0], t), ref_skips[1], t)
        ref = F.conv2d(x, d["head.weight"], d["head.bias"], padding=1).view(b, t, 4 * g, 4 * g)
    for a, r in zip(guidance, ref_skips):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-12)
    assert ours.shape == (b, t, 4 * g, 4 * g)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
