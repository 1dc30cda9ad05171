"""Properties that pin ESC-Net's maths and hold whatever PPG's threshold rule is.

- Eq. (2) merges the per-class refined image tokens by their MEAN over the vocabulary: repeating
  every class r times leaves F'_v, hence every logit, unchanged. A sum (or any r-dependent
  weighting) fails; permutation invariance, the older test, does not tell a sum from a mean.
  The class attention of VLF is a normalised linear attention over the classes, so it is invariant
  to the repetition too (up to its eps 1e-6); nothing else in the model mixes classes.
- The readout of the refined embedding (`_readout`, the map PPG sees in blocks 2..N) inverts the
  stem: readout(stem(C0)) = C0 exactly, for any stem weights and bias, so the map stays on the
  cosine scale the thresholds are defined on (dropping the normalisation by |w|^2 or the bias
  term breaks it).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from escnet.models.escnet import ESCNet, ESCNetConfig


def _model(seed: int = 0, **overrides) -> ESCNet:
    torch.manual_seed(seed)
    return ESCNet(ESCNetConfig.preset("tiny", **overrides)).double().eval()


def _inputs(t: int, d: int, b: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 96, 96, generator=gen, dtype=torch.float64) * 255
    text = F.normalize(torch.randn(t, d, generator=gen, dtype=torch.float64), dim=-1)
    return images, text


@pytest.mark.parametrize("class_chunk", [None, 2], ids=["whole", "chunks"])
def test_merge_is_invariant_to_repeating_the_vocabulary(class_chunk):
    model = _model()
    assert model.cfg.sam_guidance == "merge" and model.cfg.use_sam
    images, text = _inputs(3, model.cfg.clip.embed_dim)
    with torch.no_grad():
        once = model(images, text, upsample=False)
        thrice = model(images, text.repeat(3, 1), class_chunk=class_chunk, upsample=False)
    assert thrice.shape == (2, 9, *once.shape[-2:])
    for r in range(3):
        torch.testing.assert_close(thrice[:, 3 * r:3 * r + 3], once, atol=1e-6, rtol=1e-6)


def test_merge_guidance_sees_every_class():
    """The invariance above is not vacuous: changing one class's text changes the other classes'
    logits through eq. (2) (F'_v is shared by all classes of an image)."""
    model = _model()
    images, text = _inputs(3, model.cfg.clip.embed_dim)
    other = text.clone()
    other[2] = F.normalize(torch.randn(text.shape[1], generator=torch.Generator().manual_seed(9), dtype=text.dtype), dim=0)
    with torch.no_grad():
        a = model(images, text, upsample=False)[:, :2]
        b = model(images, other, upsample=False)[:, :2]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_readout_inverts_the_stem(seed):
    model = _model(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a stem far from unit norm with a large bias: both terms of the readout matter
        model.stem.weight.mul_(3.0 + seed)
        model.stem.bias.copy_(torch.randn(model.stem.bias.shape, generator=gen, dtype=torch.float64))
        c0 = torch.rand(2, 4, 6, 6, generator=gen, dtype=torch.float64) * 2 - 1  # (B, T, g, g) cosines
        b, t, g, _ = c0.shape
        e = model.stem(c0.reshape(-1, 1, g, g)).view(b, t, -1, g, g).transpose(1, 2)  # as ESCNet.forward
        torch.testing.assert_close(model._readout(e), c0, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("source", ["rescaled", "stem_inverse", "initial"])
def test_ppg_sees_the_cosine_map_then_the_readout_of_the_previous_block(source):
    """Block 1's PPG map is C0 = cos(F_v, F_l) (the text need not be unit length: the cosine
    normalises it). Block n > 1's, by ppg_source: "rescaled" (the default) the readout of the embedding
    block n - 1 produced, set per map to C0's mean and standard deviation (an increasing affine map of
    the readout); "stem_inverse" the readout as it is; "initial" C0 again."""
    model = _model(ppg_source=source)
    assert model.cfg.num_blocks == 2 and ESCNetConfig.preset("tiny").ppg_source == "rescaled"
    images, text = _inputs(3, model.cfg.clip.embed_dim)
    text = text * torch.tensor([[0.5], [2.0], [3.0]], dtype=text.dtype)
    maps, embeddings = [], []
    for block in model.sam:  # the map each block's generator is given
        block.ppg.register_forward_pre_hook(lambda module, args: maps.append(args[0]))
    model.vlf[0].register_forward_hook(lambda module, args, out: embeddings.append(out))
    with torch.no_grad():
        model(images, text)
        feats, _, _ = model.encode_image(images)
        cosine = torch.einsum("bdhw,td->bthw", F.normalize(feats, dim=1), F.normalize(text, dim=-1))
        readout = model._readout(embeddings[0])
    g = cosine.shape[-1]
    c0, r = cosine.reshape(-1, g * g), readout.reshape(-1, g * g)
    assert len(maps) == 2
    torch.testing.assert_close(maps[0], cosine.reshape(-1, g, g), atol=1e-12, rtol=0)
    second = maps[1].reshape(-1, g * g)
    if source == "initial":
        torch.testing.assert_close(second, c0, atol=1e-12, rtol=0)
    elif source == "stem_inverse":
        torch.testing.assert_close(second, r, atol=1e-12, rtol=0)
    else:  # C0's mean and (unbiased) std per map, and r's shape: a positive slope, the same offset-free values
        torch.testing.assert_close(second.mean(-1), c0.mean(-1), atol=1e-12, rtol=0)
        torch.testing.assert_close(second.std(-1), c0.std(-1), atol=1e-12, rtol=1e-10)
        z = lambda x: (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)  # noqa: E731
        torch.testing.assert_close(z(second), z(r), atol=1e-9, rtol=0)
        assert (c0.std(-1) - r.std(-1)).abs().min() > 1e-3 and (c0.mean(-1) - r.mean(-1)).abs().min() > 1e-3
    assert (readout - cosine).abs().max() > 1e-3  # the two blocks' maps differ: the checks above can fail
