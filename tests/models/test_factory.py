import pytest
import torch

from escnet.cli import main
from escnet.models.factory import build_escnet_init, create_model, load_pretrained
from escnet.weights.clip import clip_state_to_openai
from escnet.weights.common import WeightsError
from escnet.weights.sam import to_official_sam


def _public_files(tmp_path):
    """A tiny CLIP in OpenAI's state-dict format and a SAM decoder in the official format, random weights."""
    torch.manual_seed(3)
    donor = create_model("escnet", "tiny")
    for p in donor.parameters():
        torch.nn.init.normal_(p, std=0.02)
    clip_file = tmp_path / "clip.pt"
    torch.save(clip_state_to_openai(donor.clip.state_dict()), clip_file)
    sam_sd = {k: v for k, v in donor.sam[0].state_dict().items()
              if k.split(".")[0] in ("prompt_encoder", "transformer", "iou_token", "mask_tokens")}
    official = to_official_sam(sam_sd)
    official["image_encoder.patch_embed.proj.weight"] = torch.zeros(4, 3, 16, 16)  # ignored by the loader
    sam_file = tmp_path / "sam_vit_b.pth"
    torch.save(official, sam_file)
    return donor, clip_file, sam_file


def test_escnet_init_copies_clip_and_sam_into_every_block(tmp_path):
    donor, clip_file, sam_file = _public_files(tmp_path)
    model = build_escnet_init("tiny", clip_file, sam_file)
    for k, v in donor.clip.state_dict().items():
        assert torch.equal(model.clip.state_dict()[k], v), k
    ref = donor.sam[0].transformer.state_dict()
    for block in model.sam:
        for k, v in block.transformer.state_dict().items():
            assert torch.equal(v, ref[k]), k
        assert torch.equal(block.iou_token.weight, donor.sam[0].iou_token.weight)
    assert model.sam[0].transformer.layers[0].self_attn.q_proj.weight.data_ptr() != \
        model.sam[1].transformer.layers[0].self_attn.q_proj.weight.data_ptr(), "copies, not shared weights"


def test_escnet_init_names_bad_sam_keys(tmp_path):
    _, clip_file, sam_file = _public_files(tmp_path)
    sd = torch.load(sam_file)
    del sd["mask_decoder.iou_token.weight"]
    torch.save(sd, sam_file)
    with pytest.raises(WeightsError, match="iou_token"):
        build_escnet_init("tiny", clip_file, sam_file)


def test_convert_command_writes_loadable_model(tmp_path, capsys):
    _, clip_file, sam_file = _public_files(tmp_path)
    out = tmp_path / "init"
    assert main(["convert", "--preset", "tiny", "--clip", str(clip_file), "--sam", str(sam_file), "--out", str(out)]) == 0
    assert "wrote escnet" in capsys.readouterr().out
    model = load_pretrained(out)
    assert model.cfg.arch == "escnet" and (out / "model.safetensors").is_file()
    with pytest.raises(SystemExit, match="give --catseg FILE"):
        main(["convert", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="give --sam FILE, or --random-sam"):
        main(["convert", "--preset", "tiny", "--clip", str(clip_file), "--out", str(tmp_path / "y")])
    assert not (tmp_path / "y").exists()  # nothing with untrained SAM pieces was written
    assert main(["convert", "--preset", "tiny", "--clip", str(clip_file), "--random-sam", "--out", str(tmp_path / "z")]) == 0
