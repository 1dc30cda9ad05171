import pytest
import torch

from escnet.models.clip import CLIP, CLIPConfig, default_skip_layers, resize_pos_embed
from escnet.weights.clip import convert_hf_state_dict

transformers = pytest.importorskip("transformers")

VOCAB = 1000


def _hf_clip(image_size=64, patch=16, width=128, layers=3, heads=2, text_width=128, text_layers=2, text_heads=2):
    """A small random transformers CLIPModel with every parameter perturbed (biases and norms included)."""
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=text_layers,
                         num_attention_heads=text_heads, vocab_size=VOCAB, max_position_embeddings=77,
                         bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch, hidden_act="quick_gelu"),
        projection_dim=32,
    )
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _tokens(n=5, length=77):
    g = torch.Generator().manual_seed(1)
    tokens = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(1, 20, (1,), generator=g))
        tokens[i, 0] = VOCAB - 2
        tokens[i, 1 : k + 1] = torch.randint(1, VOCAB - 2, (k,), generator=g)
        tokens[i, k + 1] = VOCAB - 1  # end-of-text is the largest id, as in CLIP's vocabulary
    return tokens


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def pair():
    hf = _hf_clip()
    cfg, sd = convert_hf_state_dict(hf.state_dict(), hf.config.to_dict())
    ours = CLIP(cfg).eval()
    ours.load_state_dict(sd)
    return hf, ours


def test_image_and_text_features_match_transformers(pair):
    hf, ours = pair
    images = torch.randn(2, 3, 64, 64)
    tokens = _tokens()
    with torch.no_grad():
        ref_img = _pooled(hf.get_image_features(pixel_values=images))
        ref_txt = _pooled(hf.get_text_features(input_ids=tokens))
        img, txt = ours.encode_image(images), ours.encode_text(tokens)
    assert img.shape == (2, 32) and txt.shape == (5, 32)
    assert (img - ref_img).abs().max() < 1e-4
    assert (txt - ref_txt).abs().max() < 1e-4


def test_dense_features_match_value_path_reference(pair):
    hf, ours = pair
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden = hf.vision_model(pixel_values=images, output_hidden_states=True).hidden_states
        # CAT-Seg's value path on the last layer, built from transformers' own modules
        last = hf.vision_model.encoder.layers[-1]
        x = hidden[-2]
        v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x))) + x[:, :1]
        v = v + last.mlp(last.layer_norm2(v))
        ref = hf.visual_projection(hf.vision_model.post_layernorm(v))[:, 1:]
        dense, skips = ours.encode_image_dense(images)
    assert dense.shape == (2, 32, 4, 4)
    assert (dense.flatten(2).transpose(1, 2) - ref).abs().max() < 1e-4
    assert ours.cfg.skip_layers == (0, 1) and len(skips) == 2
    for i, skip in zip(ours.cfg.skip_layers, skips):
        assert skip.shape == (2, 128, 4, 4)
        assert (skip.flatten(2).transpose(1, 2) - hidden[i + 1][:, 1:]).abs().max() < 1e-4


def test_value_path_differs_from_attention(pair):
    _, ours = pair
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        x, _ = ours.visual.embed(images)
        for block in ours.visual.transformer.resblocks[:-1]:
            x = block(x)
        last = ours.visual.transformer.resblocks[-1]
        assert not torch.allclose(last(x), last.forward_value_path(x), atol=1e-3)


def test_runtime_pos_embed_resize(pair):
    _, ours = pair
    images = torch.randn(1, 3, 96, 96)  # grid 6, stored grid 4
    with torch.no_grad():
        dense, skips = ours.encode_image_dense(images)
        resized = CLIP(CLIPConfig(**{**ours.cfg.__dict__, "image_size": 96})).eval()
        sd = ours.state_dict()
        sd["visual.positional_embedding"] = resize_pos_embed(sd["visual.positional_embedding"], 6)
        resized.load_state_dict(sd)
        ref, _ = resized.encode_image_dense(images)
    assert dense.shape == (1, 32, 6, 6) and skips[0].shape == (1, 128, 6, 6)
    assert torch.allclose(dense, ref, atol=1e-5)
    wide, _ = ours.encode_image_dense(torch.randn(1, 3, 64, 96))
    assert wide.shape == (1, 32, 4, 6)


def test_resize_pos_embed_matches_transformers_interpolation():
    torch.manual_seed(0)
    emb = transformers.models.clip.modeling_clip.CLIPVisionEmbeddings(
        transformers.CLIPVisionConfig(hidden_size=64, num_attention_heads=1, image_size=224, patch_size=16))
    pe = emb.position_embedding.weight.detach()
    ours = resize_pos_embed(pe, 24)
    with torch.no_grad():
        ref = emb.interpolate_pos_encoding(torch.zeros(1, 1 + 24 * 24, 64), 384, 384)[0]
    assert ours.shape == (1 + 24 * 24, 64)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.equal(ours[0], pe[0])
    assert resize_pos_embed(pe, 14) is pe
    assert torch.equal(resize_pos_embed(pe, (14, 14)), pe)
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(pe[:-1], 24)


def test_presets_have_released_sizes():
    counts = {}
    for name in ("vitb16", "vitl14"):
        cfg = CLIPConfig.preset(name)
        assert cfg.grid_size == 24
        with torch.device("meta"):
            model = CLIP(cfg)
        counts[name] = sum(p.numel() for p in model.parameters())
        assert model.visual.positional_embedding.shape == (577, cfg.vision_width)
    # OpenAI's ViT-B/16 (149.62M at 224 px) plus the positional rows added for the 24x24 grid
    assert counts["vitb16"] == 149_620_737 + (577 - 197) * 768
    assert 427e6 < counts["vitl14"] < 429e6
    assert CLIPConfig.preset("vitl14").skip_layers == (7, 15)
    with pytest.raises(ValueError, match="unknown CLIP preset"):
        CLIPConfig.preset("vitg")


def test_default_skip_layers():
    assert default_skip_layers(12) == (3, 7)
    assert default_skip_layers(24) == (7, 15)
    assert default_skip_layers(2) == (0, 1)


def test_tiny_preset_shapes_and_dtype():
    model = CLIP(CLIPConfig.preset("tiny")).eval()
    with torch.no_grad():
        dense, skips = model.encode_image_dense(torch.randn(2, 3, 96, 96))
        txt = model.encode_text(torch.tensor([[49406, 320, 2368, 49407] + [0] * 73]))
        half, _ = model.to(torch.bfloat16).encode_image_dense(torch.randn(1, 3, 96, 96))
    assert dense.shape == (2, 32, 6, 6) and [s.shape for s in skips] == [(2, 64, 6, 6)] * 2
    assert txt.shape == (1, 32) and torch.isfinite(dense).all()
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


def test_bad_inputs_raise_clear_errors():
    model = CLIP(CLIPConfig.preset("tiny"))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode_image(torch.randn(3, 96, 96))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.encode_image(torch.randn(1, 3, 90, 96))
    with pytest.raises(ValueError, match="tokens of shape"):
        model.encode_text(torch.zeros(2, 80, dtype=torch.long))
    with pytest.raises(ValueError, match="skip_layers"):
        CLIPConfig(**{**CLIPConfig.preset("tiny").__dict__, "skip_layers": (0, 5)})
