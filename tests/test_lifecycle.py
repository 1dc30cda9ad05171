"""The model life cycle: the training initialisation from public CLIP + SAM files, `escnet convert`."""
import pytest
import torch

from escnet.cli import main
from escnet.lifecycle import build_init, load_pretrained
from escnet.models.factory import create_model, make_config
from escnet.weights.clip import clip_state_to_openai
from escnet.weights.common import WeightsError
from escnet.weights.sam import to_official_sam


def _sam_decoder(cfg) -> dict:
    """A whole SAM decoder (prompt encoder, SAM's two-layer transformer, output tokens) at `cfg`'s sizes."""
    from escnet.models.sam import PromptEncoder, TwoWayTransformer

    g = cfg.grid
    pe = PromptEncoder(cfg.sam_dim, (g, g), (cfg.crop_size, cfg.crop_size), cfg.sam_mask_in_chans)
    tr = TwoWayTransformer(cfg.sam_depth, cfg.sam_dim, cfg.sam_heads, cfg.sam_mlp_dim,
                           attention_downsample_rate=cfg.sam_downsample)
    sd = {f"prompt_encoder.{k}": v for k, v in pe.state_dict().items()}
    sd.update({f"transformer.{k}": v for k, v in tr.state_dict().items()})
    sd["iou_token.weight"] = torch.randn(1, cfg.sam_dim)
    sd["mask_tokens.weight"] = torch.randn(4, cfg.sam_dim)
    return {k: torch.randn_like(v) * 0.02 for k, v in sd.items()}


def _public_files(tmp_path):
    """A tiny CLIP in OpenAI's state-dict format and a SAM decoder in the official format, random weights."""
    torch.manual_seed(3)
    donor = create_model("escnet", "tiny")
    for p in donor.parameters():
        torch.nn.init.normal_(p, std=0.02)
    clip_file = tmp_path / "clip.pt"
    torch.save(clip_state_to_openai(donor.clip.state_dict()), clip_file)
    sam_sd = _sam_decoder(donor.cfg)
    official = to_official_sam(sam_sd)
    official["image_encoder.patch_embed.proj.weight"] = torch.zeros(4, 3, 16, 16)  # ignored by the loader
    sam_file = tmp_path / "sam_vit_b.pth"
    torch.save(official, sam_file)
    return sam_sd, clip_file, sam_file, donor


@pytest.mark.parametrize("reading,seeds", [("paper", (0, 1)), ("paper", (0, 0)), ("legacy", (0, 1))])
def test_escnet_init_copies_clip_and_sam_into_every_block(tmp_path, reading, seeds):
    sam_sd, clip_file, sam_file, donor = _public_files(tmp_path)
    model = build_init(make_config("escnet", "tiny", reading=reading, sam_seed_layers=seeds), clip_file, sam_file)
    for k, v in donor.clip.state_dict().items():
        assert torch.equal(model.clip.state_dict()[k], v), k
    for i, block in enumerate(model.sam):
        # paper: block i holds ONE layer, SAM's layer seeds[i]; legacy: the whole transformer (no final attention)
        layers = [seeds[i % len(seeds)]] if reading == "paper" else [0, 1]
        assert len(block.transformer.layers) == len(layers)
        for j, seed in enumerate(layers):
            for k, v in block.transformer.layers[j].state_dict().items():
                assert torch.equal(v, sam_sd[f"transformer.layers.{seed}.{k}"]), (i, j, k)
            assert block.transformer.layers[j].skip_first_layer_pe == (seed == 0)
        assert torch.equal(block.iou_token.weight, sam_sd["iou_token.weight"])
        assert not any("final_attn" in k for k in block.state_dict())
    assert model.sam[0].transformer.layers[0].self_attn.q_proj.weight.data_ptr() != \
        model.sam[1].transformer.layers[0].self_attn.q_proj.weight.data_ptr(), "copies, not shared weights"


def test_escnet_init_names_bad_sam_keys(tmp_path):
    _, clip_file, sam_file, _ = _public_files(tmp_path)
    sd = torch.load(sam_file)
    del sd["mask_decoder.iou_token.weight"]
    torch.save(sd, sam_file)
    with pytest.raises(WeightsError, match="iou_token"):
        build_init(make_config("escnet", "tiny"), clip_file, sam_file)


def test_convert_command_writes_loadable_model(tmp_path, capsys):
    _, clip_file, sam_file, _ = _public_files(tmp_path)
    out = tmp_path / "init"
    assert main(["convert", "--preset", "tiny", "--clip", str(clip_file), "--sam", str(sam_file), "--out", str(out)]) == 0
    assert "wrote escnet" in capsys.readouterr().out
    model = load_pretrained(out)
    assert model.cfg.arch == "escnet" and (out / "model.safetensors").is_file()
    with pytest.raises(SystemExit, match="give --catseg FILE"):
        main(["convert", "--out", str(tmp_path / "x")])
    assert main(["convert", "--preset", "tiny", "--clip", str(clip_file), "--out", str(tmp_path / "y")]) == 1
    assert "give --sam FILE, or --random-sam" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # nothing with untrained SAM pieces was written
    assert main(["convert", "--preset", "tiny", "--clip", str(clip_file), "--random-sam", "--out", str(tmp_path / "z")]) == 0
