"""The tiny promptable SAM: shapes, SAM's parameter names, and the official-layout round trip
through the loader of the real sam_vit_b file into ESC-Net's SAM blocks."""
import dataclasses
from pathlib import Path

import pytest
import torch

from escnet.training.config import load_config
from escnet.training.loop import build_model
from escnet.models.clip import CLIPConfig
from escnet.models.escnet import ESCNetConfig
from escnet.models.sam_model import SAM, SAMConfig
from escnet.weights.sam import load_sam_decoder_weights

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "escnet_tiny_grouping.toml"


def _tiny_escnet_cfg():
    """The tiny preset on the synthetic configs' 96-pixel crop and 12 x 12 grid."""
    clip = dataclasses.replace(CLIPConfig.preset("tiny"), image_size=96, patch_size=8)
    return ESCNetConfig.preset("tiny", clip=clip, crop_size=96, window=6, sam_mask_in_chans=16)


def test_decode_shapes_and_multimask():
    torch.manual_seed(0)
    model = SAM(SAMConfig.matching(_tiny_escnet_cfg()))
    assert model.cfg.grid == 12 and model.cfg.dim == 32
    emb = model.embed(torch.rand(2, 3, 96, 96) * 255)
    assert emb.shape == (2, 32, 12, 12)
    index = torch.tensor([0, 1, 1])
    points = (torch.rand(3, 2, 2) * 95, torch.tensor([[1, 0], [1, -1], [1, 1]]))
    low, iou = model.decode(emb, index, points, multimask_output=True)
    assert low.shape == (3, 3, 48, 48) and iou.shape == (3, 3)
    low, iou = model.decode(emb, index, points, boxes=torch.tensor([[0.0, 0, 40, 40]] * 3),
                            masks=torch.zeros(3, 1, 48, 48))
    assert low.shape == (3, 1, 48, 48) and iou.shape == (3, 1)
    # a prompt set sees only its own image: changing image 0 leaves the sets of image 1 unchanged
    emb2 = emb.clone()
    emb2[0] += 1.0
    low2, _ = model.decode(emb2, index, points, multimask_output=True)
    assert torch.equal(model.decode(emb, index, points, multimask_output=True)[0][1:], low2[1:])
    assert not torch.allclose(model.decode(emb, index, points, multimask_output=True)[0][0], low2[0])
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 96, 96\)"):
        model.embed(torch.rand(1, 3, 64, 64))


def test_state_dict_has_the_official_sam_layout():
    keys = set(SAM(SAMConfig()).state_dict())
    for key in ("image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed", "image_encoder.blocks.0.attn.qkv.weight",
                "image_encoder.neck.2.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "prompt_encoder.mask_downscaling.6.weight", "mask_decoder.transformer.layers.1.norm4.bias",
                "mask_decoder.transformer.final_attn_token_to_image.out_proj.weight", "mask_decoder.iou_token.weight",
                "mask_decoder.mask_tokens.weight", "mask_decoder.output_upscaling.3.weight",
                "mask_decoder.output_hypernetworks_mlps.3.layers.2.bias", "mask_decoder.iou_prediction_head.layers.2.weight"):
        assert key in keys, key
    assert all(k.split(".")[0] in ("image_encoder", "prompt_encoder", "mask_decoder") for k in keys)


def test_checkpoint_round_trips_through_the_sam_loader_into_escnet(tmp_path):
    """sam_tiny.pth (plain state dict) -> load_sam_decoder_weights -> `escnet train init_sam=...`:
    every ESC block holds exactly the saved prompt encoder, transformer and output tokens."""
    torch.manual_seed(3)
    sam = SAM(SAMConfig.matching(_tiny_escnet_cfg()))
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    sd = load_sam_decoder_weights(path)
    saved = sam.state_dict()
    assert set(sd) == {k for k in saved if k.startswith("prompt_encoder.")} | {
        k[len("mask_decoder."):] for k in saved
        if k.startswith(("mask_decoder.transformer.", "mask_decoder.iou_token", "mask_decoder.mask_tokens"))}
    cfg = load_config(REPO_CONFIG, [f"init_sam={path}"])
    model = build_model(cfg)
    for i, block in enumerate(model.sam):
        block_sd = block.state_dict()
        seed = model.cfg.seed_layer(i)  # the paper's reading: block i starts from SAM's layer sam_seed_layers[i]
        assert torch.equal(block_sd["transformer.layers.0.self_attn.q_proj.weight"],
                           saved[f"mask_decoder.transformer.layers.{seed}.self_attn.q_proj.weight"])
        assert torch.equal(block_sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
                           saved["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
        assert torch.equal(block_sd["mask_tokens.weight"], saved["mask_decoder.mask_tokens.weight"])
    # without init_sam the blocks stay random
    random_model = build_model(load_config(REPO_CONFIG))
    assert not torch.equal(random_model.sam[0].state_dict()["mask_tokens.weight"], saved["mask_decoder.mask_tokens.weight"])


def test_mask_prompt_reaches_the_embedding_only_with_enough_mask_channels():
    """mask_in_chans = 4 (the tiny preset) leaves 1 channel before a LayerNorm2d, whose output is
    then constant: every mask gives the same dense embedding. The tiny SAM uses SAM's 16."""
    torch.manual_seed(0)
    masks = torch.stack([torch.zeros(1, 48, 48), (torch.rand(1, 48, 48) > 0.5).float()])
    four = SAM(SAMConfig(mask_in_chans=4)).prompt_encoder.embed_masks(masks)
    assert torch.allclose(four[0], four[1])
    sixteen = SAM(SAMConfig(mask_in_chans=16)).prompt_encoder.embed_masks(masks)
    assert not torch.allclose(sixteen[0], sixteen[1])
