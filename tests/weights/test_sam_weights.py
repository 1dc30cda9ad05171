"""SAM decoder weights: official .pth and HF SamModel files written from random weights load back exactly."""
import pytest
import torch
from torch import nn

from escnet.models.sam import PromptEncoder, TwoWayTransformer
from escnet.weights.common import WeightsError
from escnet.weights.sam import load_sam_decoder_weights, to_hf_sam, to_official_sam


class Decoder(nn.Module):
    """The SAM pieces ESC-Net's SAM block owns, under the names the loader returns."""

    def __init__(self, dim=256, mlp_dim=2048, heads=8, mask_in_chans=16):
        super().__init__()
        self.prompt_encoder = PromptEncoder(dim, (24, 24), (384, 384), mask_in_chans)
        self.transformer = TwoWayTransformer(2, dim, heads, mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(4, dim)

    def forward(self, coords, labels, masks, image):
        sparse, dense = self.prompt_encoder(points=(coords, labels), masks=masks)
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(len(coords), -1, -1)
        return self.transformer(image + dense, self.prompt_encoder.get_dense_pe(), torch.cat([tokens, sparse], 1))


def _random_decoder(seed, **dims):
    torch.manual_seed(seed)
    model = Decoder(**dims).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "norm" in name or "mask_downscaling.1." in name or "mask_downscaling.4." in name:
                t.copy_(torch.randn_like(t) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model


def _outputs(model):
    torch.manual_seed(7)
    dim = model.iou_token.weight.shape[1]
    coords, labels = torch.rand(2, 3, 2) * 383, torch.tensor([[1, 0, -1], [1, 1, 0]])
    with torch.no_grad():
        return model(coords, labels, torch.randn(2, 1, 96, 96), torch.randn(2, dim, 24, 24))


def _assert_same(model, loaded):
    sd = model.state_dict()
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    dims = dict(dim=sd["iou_token.weight"].shape[1], mlp_dim=sd["transformer.layers.0.mlp.lin1.weight"].shape[0],
                heads=model.transformer.num_heads, mask_in_chans=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0])
    fresh = Decoder(**dims).eval()
    fresh.load_state_dict(loaded, strict=True)
    for a, b in zip(_outputs(model), _outputs(fresh)):
        assert torch.equal(a, b)


def _official_file(model, tmp_path, edit=None):
    """An official-layout checkpoint, with the image encoder and SAM's mask heads present (to be ignored)."""
    sd = to_official_sam(model.state_dict())
    sd.update({
        "image_encoder.patch_embed.proj.weight": torch.randn(8, 3, 16, 16),
        "image_encoder.neck.0.weight": torch.randn(256, 8, 1, 1),
        "mask_decoder.output_upscaling.0.weight": torch.randn(256, 64, 2, 2),
        "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight": torch.randn(256, 256),
        "mask_decoder.iou_prediction_head.layers.2.bias": torch.randn(4),
    })
    if edit:
        edit(sd)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(sd, path)
    return path


def test_official_pth_round_trip(tmp_path):
    model = _random_decoder(0)
    _assert_same(model, load_sam_decoder_weights(_official_file(model, tmp_path)))


def test_official_missing_and_unexpected_keys_are_named(tmp_path):
    model = _random_decoder(0)
    missing = "mask_decoder.transformer.layers.1.norm3.weight"
    path = _official_file(model, tmp_path, lambda sd: sd.pop(missing))
    with pytest.raises(WeightsError, match=r"missing keys \(1\): " + missing.replace(".", r"\.")):
        load_sam_decoder_weights(path)
    extra = "prompt_encoder.point_embeddings.4.weight"
    path = _official_file(model, tmp_path, lambda sd: sd.update({extra: torch.zeros(1, 256)}))
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): " + extra.replace(".", r"\.")):
        load_sam_decoder_weights(path)


def test_shape_mismatch_and_unknown_file_are_reported(tmp_path):
    model = _random_decoder(0)
    key = "mask_decoder.mask_tokens.weight"
    path = _official_file(model, tmp_path, lambda sd: sd.update({key: torch.zeros(3, 256)}))
    with pytest.raises(WeightsError, match=key.replace(".", r"\.") + r": file \(3, 256\) vs model \(4, 256\)"):
        load_sam_decoder_weights(path)
    other = tmp_path / "other.pth"
    torch.save({"image_encoder.x": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match="no SAM prompt-encoder keys"):
        load_sam_decoder_weights(other)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """HF SamModel.save_pretrained output with a small random decoder (dims are read from shapes)."""
    transformers = pytest.importorskip("transformers")
    dim = 32
    model = _random_decoder(1, dim=dim, mlp_dim=64, heads=2, mask_in_chans=8)
    cfg = transformers.SamConfig(
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16,
                           global_attn_indexes=[0], output_channels=dim, mlp_dim=16, num_pos_feats=dim // 2),
        prompt_encoder_config=dict(hidden_size=dim, image_size=384, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=dim, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=dim),
    )
    hf = transformers.SamModel(cfg)
    result = hf.load_state_dict(to_hf_sam(model.state_dict()), strict=False)
    assert not result.unexpected_keys  # every one of our tensors has an HF home
    out = tmp_path_factory.mktemp("hf_sam")
    hf.save_pretrained(out)
    return model, out


def test_hf_save_pretrained_round_trip(hf_dir):
    model, path = hf_dir
    _assert_same(model, load_sam_decoder_weights(path))
    _assert_same(model, load_sam_decoder_weights(path / "model.safetensors"))


def test_hf_missing_key_is_named(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = hf_dir
    sd = load_file(path / "model.safetensors")
    missing = "prompt_encoder.mask_embed.conv2.bias"
    del sd[missing]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match=r"missing keys \(1\): " + missing.replace(".", r"\.")):
        load_sam_decoder_weights(tmp_path)


def test_hf_untied_positional_matrices_are_rejected(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model, path = hf_dir
    sd = load_file(path / "model.safetensors")
    sd["prompt_encoder.shared_embedding.positional_embedding"] = sd["shared_image_embedding.positional_embedding"] + 1
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match="differ"):
        load_sam_decoder_weights(tmp_path / "model.safetensors")
    sd["prompt_encoder.shared_embedding.positional_embedding"] = sd["shared_image_embedding.positional_embedding"].clone()
    save_file(sd, tmp_path / "model.safetensors")  # both names present and equal (older HF exports)
    _assert_same(model, load_sam_decoder_weights(tmp_path / "model.safetensors"))
