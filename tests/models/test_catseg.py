import pytest
import torch
import torch.nn.functional as F

from escnet.models.catseg import Aggregator, CATSeg, CATSegConfig

NAMES = ["cat", "dog", "building, edifice", "sky", "road"]


def _tiny(seed: int = 0, **overrides) -> CATSeg:
    torch.manual_seed(seed)
    model = CATSeg(CATSegConfig.preset("tiny", **overrides))
    with torch.no_grad():  # CAT-Seg zero-initialises the padding tokens; random ones make them matter
        for layer in model.transformer.layers:
            layer.attention.padding_tokens.normal_()
            layer.attention.padding_guidance.normal_()
    return model


def _images(b: int = 2, size: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


def _text(t: int, d: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(t, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_tiny_forward_backward_shapes_and_trainable_params():
    model = _tiny().train()
    text = model.encode_text(NAMES)
    assert text.shape == (5, model.cfg.clip.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(5))
    logits = model(_images(size=384), text)
    assert logits.shape == (2, 5, 384, 384)
    assert model.truncation(5) is None  # 5 classes <= the tiny preset's truncation k = 8: all scored
    logits.sigmoid().mean().backward()
    trainable_clip = {n for n, p in model.clip.named_parameters() if p.requires_grad}
    assert trainable_clip and all(n.endswith(("attn.q_proj_weight", "attn.v_proj_weight")) for n in trainable_clip)
    assert any(n.startswith("visual.") for n in trainable_clip) and any(n.startswith("transformer.") for n in trainable_clip)
    assert all(p.grad is None for p in model.clip.parameters() if not p.requires_grad)
    # the text tower's q/v weights get gradients through encode_text, the image tower's through F_v,
    # except the last image block's q: its value path mixes no tokens (as in CAT-Seg)
    grads = {n for n, p in model.clip.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    last_q = f"visual.transformer.resblocks.{model.cfg.clip.vision_layers - 1}.attn.q_proj_weight"
    assert grads == trainable_clip - {last_q}
    assert all(p.requires_grad and p.grad is not None for p in model.transformer.parameters())
    assert model.upsample1.weight.grad is not None and model.upsample2.weight.grad is not None


def test_encode_text_uses_template_and_first_synonym():
    model = _tiny().eval()
    with torch.no_grad():
        a = model.encode_text(["building, edifice"])
        b = model.encode_text(["building"])
        c = model.encode_text(["edifice"])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("t,chunk,overrides,truncation", [
    (5, 2, {}, None),  # padded to pad_len with learnable tokens
    (20, 3, {}, 8),  # truncated to the top 8
    (20, 7, {"class_truncation": None}, None),  # exact over all 20 classes
])
def test_class_chunk_is_exact(training, t, chunk, overrides, truncation):
    model = _tiny(**overrides).train(training)
    assert model.truncation(t) == truncation
    images, text = _images(), _text(t, model.cfg.clip.embed_dim)
    with torch.no_grad():
        full = model(images, text)
        chunked = model(images, text, class_chunk=chunk)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)


def test_truncation_keeps_top_k_and_fills_minus_100():
    model = _tiny().eval()
    k = model.cfg.class_truncation
    images, text = _images(), _text(20, model.cfg.clip.embed_dim)
    assert model.truncation(20) == k
    with torch.no_grad():
        logits = model(images, text)
        feats, _, _ = model.encode_image(images)
        score = torch.einsum("bdhw,td->bthw", F.normalize(feats, dim=1), text).flatten(2).amax(-1)
        for b in range(2):
            keep = score[b].topk(k).indices.sort().values
            dropped = torch.ones(20, dtype=torch.bool)
            dropped[keep] = False
            assert (logits[b, dropped] == -100).all()
            assert (logits[b, keep] != -100).any(-1).any(-1).all()
            # the kept classes are scored exactly as a run with only those classes
            assert model.truncation(len(keep)) is None
            alone = model(images[b:b + 1], text[keep])
            torch.testing.assert_close(logits[b, keep], alone[0], atol=1e-5, rtol=1e-5)


def test_truncation_per_call_overrides_the_config_and_leaves_it_alone():
    model = _tiny().eval()  # cfg.class_truncation = 8
    exact_model = _tiny(class_truncation=None).eval()
    exact_model.load_state_dict(model.state_dict())
    images, text = _images(), _text(20, model.cfg.clip.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(model(images, text, class_truncation=None), exact_model(images, text))
        torch.testing.assert_close(exact_model(images, text, class_truncation=8), model(images, text))
        three = model(images, text, class_truncation=3)
    assert ((three != -100).flatten(2).any(-1).sum(1) == 3).all()  # 3 classes scored per image
    assert (model.truncation(20, 3), model.truncation(20, None), model.truncation(3, 3)) == (3, None, None)
    assert model.cfg.class_truncation == 8 and exact_model.cfg.class_truncation is None
    for bad in (0, -1, 2.5, True, "top3"):
        with pytest.raises(ValueError, match="class_truncation must be an integer >= 1"):
            model(images, text, class_truncation=bad)


@pytest.mark.parametrize("t,overrides", [(5, {}), (12, {"class_truncation": None})])
def test_permuting_classes_permutes_logits(t, overrides):
    model = _tiny(**overrides).eval()
    images, text = _images(), _text(t, model.cfg.clip.embed_dim)
    perm = torch.randperm(t, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(images, text[perm]), model(images, text)[:, perm], atol=1e-5, rtol=1e-5)


def test_input_errors():
    model = _tiny().eval()
    with pytest.raises(ValueError, match="text_feats must have shape"):
        model(_images(), torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, H, W\)"):
        model(torch.rand(2, 96, 96), _text(3, model.cfg.clip.embed_dim))
    with pytest.raises(ValueError, match="unknown CAT-Seg config field"):
        CATSegConfig.preset("tiny", nope=1)
    with pytest.raises(ValueError, match="decoder dim 8"):
        CATSegConfig.preset("tiny", decoder_dims=(16, 8))


@pytest.mark.parametrize("preset,expected", [
    ("vitb16", 154.3 + 0.29),  # DESIGN's count + CLIP's positional embedding stored at 24x24 instead of 14x14
    ("vitl14", 433.7),  # paper Table 4
])
def test_parameter_counts(preset, expected):
    with torch.device("meta"):
        model = CATSeg(CATSegConfig.preset(preset))
    total = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(total - expected) / expected < 0.03, total
    assert abs(total - expected) < 0.1, total  # tighter: the architecture matches CAT-Seg's code
    trainable_clip = sum(p.numel() for p in model.clip.parameters() if p.requires_grad)
    c = model.cfg.clip
    # q and v of every layer of both towers, except the last image block's q: its value path never uses it
    assert trainable_clip == 2 * (c.vision_layers * c.vision_width ** 2 + c.text_layers * c.text_width ** 2) \
        - c.vision_width ** 2


@pytest.mark.parametrize("preset", ["vitb16", "vitl14"])
def test_paper_size_aggregator(preset):
    """The aggregator and decoder at paper sizes on random CLIP features (the full CLIP towers at these
    sizes are exercised by the CLIP and ESC-Net tests; building them here would cost a minute)."""
    torch.manual_seed(0)
    cfg = CATSegConfig.preset(preset)
    agg = Aggregator(cfg).eval()
    feats = torch.randn(1, cfg.clip.embed_dim, 24, 24)
    skips = (torch.randn(1, cfg.skip_dims[0], 48, 48), torch.randn(1, cfg.skip_dims[1], 96, 96))
    text = _text(3, cfg.clip.embed_dim).expand(1, 3, -1)
    with torch.no_grad():
        logits = agg(feats, text, skips)
        assert logits.shape == (1, 3, 96, 96) and torch.isfinite(logits).all()
        torch.testing.assert_close(agg(feats, text, skips, class_chunk=2), logits, atol=1e-5, rtol=1e-5)
