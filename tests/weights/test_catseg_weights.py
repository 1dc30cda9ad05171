import pytest
import torch

from escnet.models.catseg import CATSeg, CATSegConfig
from escnet.cli import main
from escnet.models.clip import CLIPConfig, default_skip_layers, resize_pos_embed
from escnet.lifecycle import load_pretrained
from escnet.weights.catseg import (
    PREFIX,
    from_catseg_names,
    infer_config,
    load_catseg_checkpoint,
    save_catseg_checkpoint,
    to_catseg_names,
)
from escnet.weights.common import WeightsError

POS = "clip.visual.positional_embedding"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CATSeg(CATSegConfig.preset("tiny")).eval()


def _save_raw(sd, path):
    torch.save({"model": sd}, path)


def test_round_trip_through_detectron2_file(tiny, tmp_path):
    path = tmp_path / "model.pth"
    save_catseg_checkpoint(tiny, path)
    raw = torch.load(path, weights_only=True)["model"]
    # CAT-Seg's layout: predictor prefix, top-level upsample layers, the stored Swin attention masks
    assert f"{PREFIX}clip_model.visual.transformer.resblocks.0.attn.q_proj_weight" in raw
    assert f"{PREFIX}transformer.layers.0.swin_block.block_2.attn_mask" in raw
    assert "upsample1.weight" in raw and "upsample2.bias" in raw
    cfg, sd = load_catseg_checkpoint(path, tiny.cfg)
    assert cfg is tiny.cfg
    expected = tiny.state_dict()
    assert sd.keys() == expected.keys()
    assert all(torch.equal(sd[k], expected[k]) for k in expected)
    model = CATSeg(cfg).eval()
    model.load_state_dict(sd)
    images, text = torch.rand(1, 3, 96, 96) * 255, torch.randn(3, cfg.clip.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(model(images, text), tiny(images, text))


def test_stored_positional_grid_is_resized_and_buffers_dropped(tiny, tmp_path):
    """CAT-Seg stores CLIP's pretraining grid (14x14 for ViT-B/16); detectron2 buffers may be present."""
    path = tmp_path / "model.pth"
    save_catseg_checkpoint(tiny, path, clip_grid=4)
    raw = torch.load(path, weights_only=True)["model"]
    stored = raw[f"{PREFIX}clip_model.visual.positional_embedding"]
    assert stored.shape == (1 + 16, tiny.cfg.clip.vision_width)
    raw["pixel_mean"] = torch.zeros(3, 1, 1)
    raw["clip_pixel_std"] = torch.ones(3, 1, 1)
    _save_raw(raw, path)
    _, sd = load_catseg_checkpoint(path, tiny.cfg)
    torch.testing.assert_close(sd[POS], resize_pos_embed(stored, 6))
    assert not any("attn_mask" in k or "pixel" in k for k in sd)


def test_wrong_keys_and_shapes_are_named(tiny, tmp_path):
    path = tmp_path / "model.pth"
    save_catseg_checkpoint(tiny, path)
    raw = torch.load(path, weights_only=True)["model"]
    good = f"{PREFIX}transformer.head.weight"
    raw[f"{PREFIX}transformer.head_typo.weight"] = raw.pop(good)
    _save_raw(raw, path)
    with pytest.raises(WeightsError) as err:
        load_catseg_checkpoint(path, tiny.cfg)
    assert "transformer.head.weight" in str(err.value) and "transformer.head_typo.weight" in str(err.value)
    raw[good] = torch.zeros(1, 5, 3, 3)
    del raw[f"{PREFIX}transformer.head_typo.weight"]
    _save_raw(raw, path)
    with pytest.raises(WeightsError, match=r"transformer\.head\.weight: file \(1, 5, 3, 3\)"):
        load_catseg_checkpoint(path, tiny.cfg)
    del raw[f"{PREFIX}clip_model.visual.conv1.weight"]
    _save_raw(raw, path)
    with pytest.raises(WeightsError, match=r"missing key clip\.visual\.conv1\.weight"):
        load_catseg_checkpoint(path)
    with pytest.raises(WeightsError, match="not found"):
        load_catseg_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize("preset", ["vitb16", "vitl14"])
def test_infer_config_from_public_layout(preset):
    with torch.device("meta"):
        model = CATSeg(CATSegConfig.preset(preset))
    cat_seg = to_catseg_names(model.state_dict())
    assert infer_config(from_catseg_names(cat_seg)) == CATSegConfig.preset(preset)
    # files written by CAT-Seg code before class padding existed: no padding tokens -> no padding/truncation
    old = {k: v for k, v in cat_seg.items() if "padding_" not in k}
    cfg = infer_config(from_catseg_names(old))
    assert (cfg.pad_len, cfg.class_truncation) == (0, None)


def test_our_names_are_cat_seg_names():
    """Spot checks of CAT-Seg's checkpoint names and shapes (from its module attributes) for ViT-B/16."""
    with torch.device("meta"):
        sd = to_catseg_names(CATSeg(CATSegConfig.preset("vitb16")).state_dict())
    t = PREFIX + "transformer."
    expected = {
        t + "layers.0.swin_block.block_1.attn.q.weight": (128, 256),
        t + "layers.0.swin_block.block_2.attn.v.weight": (128, 128),
        t + "layers.0.swin_block.block_2.mlp.fc1.weight": (512, 128),
        t + "layers.1.swin_block.guidance_norm.weight": (128,),
        t + "layers.1.attention.attention.k.weight": (128, 256),
        t + "layers.1.attention.MLP.2.weight": (128, 512),
        t + "layers.1.attention.norm2.bias": (128,),
        t + "layers.0.attention.padding_tokens": (1, 1, 128),
        t + "layers.0.attention.padding_guidance": (1, 1, 128),
        t + "conv1.weight": (128, 1, 7, 7),
        t + "guidance_projection.0.weight": (128, 512, 3, 3),
        t + "text_guidance_projection.0.weight": (128, 512),
        t + "decoder_guidance_projection.1.0.weight": (16, 128, 3, 3),
        t + "decoder1.up.weight": (128, 96, 2, 2),
        t + "decoder1.conv.double_conv.4.weight": (64,),
        t + "decoder2.conv.double_conv.0.weight": (32, 64, 3, 3),
        t + "head.weight": (1, 32, 3, 3),
        PREFIX + "clip_model.visual.transformer.resblocks.11.attn.in_proj_bias": (2304,),
        PREFIX + "clip_model.transformer.resblocks.0.attn.v_proj_weight": (512, 512),
        "upsample1.weight": (768, 256, 2, 2),
        "upsample2.weight": (768, 128, 4, 4),
    }
    assert {k: tuple(sd[k].shape) for k in expected if k in sd} == expected
    assert not [k for k in sd if not (k.startswith(PREFIX) or k.startswith("upsample"))]


def test_checkpoint_with_another_text_tower_converts_and_loads(tmp_path):
    """Every size comes from the file: a 256-wide, 3-layer text tower with a 32-token context and a
    small vocabulary, a small vision tower, small aggregator sizes; stored as CAT-Seg writes it."""
    clip = CLIPConfig(embed_dim=48, image_size=24 * 16, patch_size=16, vision_width=64, vision_layers=2,
                      vision_heads=1, text_width=256, text_layers=3, text_heads=4, context_length=32,
                      vocab_size=1000, skip_layers=default_skip_layers(2))
    cfg = CATSegConfig(clip=clip, hidden_dim=32, text_guidance_proj_dim=16, appearance_guidance_proj_dim=24,
                       decoder_dims=(16, 16), skip_dims=(16, 8), skip_proj_dims=(8, 4))
    torch.manual_seed(0)
    model = CATSeg(cfg).eval()
    path = tmp_path / "model_final.pth"
    save_catseg_checkpoint(model, path, clip_grid=14)  # the stored grid of a public ViT-B/16 file
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["model"] and f"{PREFIX}clip_model.transformer.resblocks.2.attn.q_proj_weight" in raw["model"]

    inferred, sd = load_catseg_checkpoint(path)
    assert inferred == cfg

    assert main(["convert", "--catseg", str(path), "--out", str(tmp_path / "converted")]) == 0
    loaded = load_pretrained(tmp_path / "converted").eval()
    assert loaded.cfg == cfg
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    images, text = torch.rand(1, 3, 384, 384) * 255, torch.randn(3, clip.embed_dim)
    with torch.no_grad():
        logits = loaded(images, text)
        tokens = loaded.clip.encode_text(torch.randint(0, 1000, (2, 32)))
    assert logits.shape == (1, 3, 384, 384) and torch.isfinite(logits).all()
    assert tokens.shape == (2, 48)
