import json
import shutil
import warnings
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from escnet.models.clip import CLIP, resize_pos_embed
from escnet.weights.clip import (clip_state_to_openai, convert_hf_state_dict, detect_format, load_clip_weights)
from escnet.weights.common import WeightsError

transformers = pytest.importorskip("transformers")

VOCAB, IMAGE, WIDTH, HEADS = 1000, 64, 128, 2  # head width 64, as in every released CLIP, so OpenAI files infer it


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """OpenAI CLIP's ResidualAttentionBlock: sequence-first tokens, nn.MultiheadAttention with a fused in_proj."""

    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=_QuickGELU(),
                                             c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])

    def forward(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class _OpenAICLIP(nn.Module):
    """The module tree of OpenAI's released TorchScript CLIP (names, layouts, size buffers), for writing test files."""

    def __init__(self, cfg):
        super().__init__()
        visual = nn.Module()
        visual.conv1 = nn.Conv2d(3, cfg.vision_width, cfg.patch_size, cfg.patch_size, bias=False)
        visual.class_embedding = nn.Parameter(torch.empty(cfg.vision_width))
        visual.positional_embedding = nn.Parameter(torch.empty(cfg.grid_size ** 2 + 1, cfg.vision_width))
        visual.ln_pre = nn.LayerNorm(cfg.vision_width)
        visual.transformer = _Transformer(cfg.vision_width, cfg.vision_layers, cfg.vision_heads)
        visual.ln_post = nn.LayerNorm(cfg.vision_width)
        visual.proj = nn.Parameter(torch.empty(cfg.vision_width, cfg.embed_dim))
        self.visual = visual
        self.transformer = _Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))
        for name, value in (("input_resolution", cfg.image_size), ("context_length", cfg.context_length),
                            ("vocab_size", cfg.vocab_size)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, image, text):
        v = self.visual
        x = v.conv1(image).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
        x = v.transformer(v.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        image_features = v.ln_post(x[:, 0]) @ v.proj
        t = (self.token_embedding(text) + self.positional_embedding).transpose(0, 1)
        mask = torch.full((text.shape[1], text.shape[1]), float("-inf")).triu(1)
        t = self.ln_final(self.transformer(t, mask).transpose(0, 1))
        text_features = t[torch.arange(t.shape[0]), text.argmax(-1)] @ self.text_projection
        return image_features, text_features


def _tokens(n=4):
    g = torch.Generator().manual_seed(1)
    tokens = torch.zeros(n, 77, dtype=torch.long)
    for i in range(n):
        k = 3 + 4 * i
        tokens[i, 0] = VOCAB - 2
        tokens[i, 1 : k + 1] = torch.randint(1, VOCAB - 2, (k,), generator=g)
        tokens[i, k + 1] = VOCAB - 1
    return tokens


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small random HF CLIPModel, its reference outputs, and the same weights written in every public format."""
    torch.manual_seed(0)
    hf_cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=2, num_attention_heads=HEADS,
                         vocab_size=VOCAB, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=3, num_attention_heads=HEADS,
                           image_size=IMAGE, patch_size=16, hidden_act="quick_gelu"),
        projection_dim=32,
    )
    hf = transformers.CLIPModel(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, tokens = torch.randn(2, 3, IMAGE, IMAGE), _tokens()
    with torch.no_grad():
        ref = (_pooled(hf.get_image_features(pixel_values=images)), _pooled(hf.get_text_features(input_ids=tokens)))
    cfg, ours = convert_hf_state_dict(hf.state_dict(), hf_cfg.to_dict())
    openai_sd = clip_state_to_openai(ours)

    d = tmp_path_factory.mktemp("clip_formats")
    paths = {"hf-dir": d / "hf"}
    hf.save_pretrained(paths["hf-dir"])
    paths["hf-file"] = d / "clip_vision_text.safetensors"
    shutil.copy(paths["hf-dir"] / "model.safetensors", paths["hf-file"])

    scripted = _OpenAICLIP(cfg).eval()
    scripted.load_state_dict(openai_sd, strict=False)  # strict=False: the size buffers are not in openai_sd
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing is deprecated and warns about shape checks; OpenAI's files were traced
        traced = torch.jit.trace(scripted, (images, tokens), check_trace=False)
        jit_out = traced(images, tokens)
    paths["openai-torchscript"] = d / "ViT-T-16.pt"
    traced.save(str(paths["openai-torchscript"]))

    paths["openai-state-dict"] = d / "openai_state_dict.pt"
    torch.save(openai_sd, paths["openai-state-dict"])
    paths["open_clip-bin"] = d / "open_clip_pytorch_model.bin"
    torch.save(openai_sd, paths["open_clip-bin"])
    paths["open_clip-train-checkpoint"] = d / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in openai_sd.items()}},
               paths["open_clip-train-checkpoint"])
    paths["escnet-safetensors"] = d / "escnet_clip.safetensors"
    save_file(ours, paths["escnet-safetensors"])
    return dict(hf=hf, cfg=cfg, ours=ours, openai_sd=openai_sd, images=images, tokens=tokens, ref=ref,
                jit_out=jit_out, paths=paths, dir=d)


FORMATS = ["hf-dir", "hf-file", "openai-torchscript", "openai-state-dict", "open_clip-bin",
           "open_clip-train-checkpoint", "escnet-safetensors"]


def _model(path, **kw):
    cfg, sd = load_clip_weights(path, **kw)
    model = CLIP(cfg).eval()
    model.load_state_dict(sd)  # strict: every key present, none extra
    return model


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips(source, fmt):
    model = _model(source["paths"][fmt])
    assert model.cfg == source["cfg"]
    assert (model.cfg.vision_heads, model.cfg.text_heads, model.cfg.vision_layers) == (HEADS, HEADS, 3)
    with torch.no_grad():
        img, txt = model.encode_image(source["images"]), model.encode_text(source["tokens"])
    assert (img - source["ref"][0]).abs().max() < 1e-4
    assert (txt - source["ref"][1]).abs().max() < 1e-4


def test_torchscript_file_is_the_openai_model(source):
    # the traced OpenAI-structured module computes the same features as transformers: the file is a faithful fixture
    assert (source["jit_out"][0] - source["ref"][0]).abs().max() < 1e-4
    assert (source["jit_out"][1] - source["ref"][1]).abs().max() < 1e-4
    assert detect_format(source["paths"]["openai-torchscript"]) == "torchscript"
    assert detect_format(source["paths"]["openai-state-dict"]) == "state-dict"
    assert detect_format(source["paths"]["hf-dir"]) == "hf-dir"


def test_positional_embedding_resized_to_requested_size(source):
    cfg, sd = load_clip_weights(source["paths"]["openai-torchscript"], image_size=96)
    assert cfg.image_size == 96 and cfg.grid_size == 6
    expected = resize_pos_embed(source["ours"]["visual.positional_embedding"], 6)
    assert torch.equal(sd["visual.positional_embedding"], expected)
    model = CLIP(cfg).eval()
    model.load_state_dict(sd)
    native = CLIP(source["cfg"]).eval()
    native.load_state_dict(source["ours"])
    images = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model.encode_image_dense(images)[0], native.encode_image_dense(images)[0], atol=1e-5)
    with pytest.raises(WeightsError, match="multiple of the patch size"):
        load_clip_weights(source["paths"]["hf-file"], image_size=70)


def _save(tmp_path, name, sd):
    path = tmp_path / name
    torch.save(sd, path)
    return path


def test_missing_and_unexpected_keys_are_named(source, tmp_path):
    sd = dict(source["openai_sd"])
    del sd["visual.transformer.resblocks.1.ln_2.bias"]
    sd["visual.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as err:
        load_clip_weights(_save(tmp_path, "bad.pt", sd))
    msg = str(err.value)
    assert "bad.pt" in msg and "visual.transformer.resblocks.1.ln_2.bias" in msg and "visual.extra_head.weight" in msg
    assert "missing" in msg and "unexpected" in msg


def test_hf_missing_key_named_in_hf_names(source, tmp_path):
    sd = load_file(source["paths"]["hf-file"])
    del sd["vision_model.encoder.layers.2.self_attn.q_proj.bias"]
    path = tmp_path / "hf_bad.safetensors"
    save_file(sd, path)
    with pytest.raises(WeightsError, match=r"vision_model\.encoder\.layers\.2\.self_attn\.q_proj\.bias"):
        load_clip_weights(path)


def test_wrong_shape_is_named(source, tmp_path):
    sd = dict(source["openai_sd"])
    sd["visual.ln_post.bias"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"visual\.ln_post\.bias: file \(3,\)"):
        load_clip_weights(_save(tmp_path, "shape.pt", sd))


def test_not_a_clip_file(tmp_path):
    with pytest.raises(WeightsError, match="missing key 'visual.conv1.weight'"):
        load_clip_weights(_save(tmp_path, "other.pt", {"backbone.weight": torch.zeros(2)}))
    with pytest.raises(WeightsError, match="not found"):
        load_clip_weights(tmp_path / "nope.pt")


def test_hf_dir_with_other_activation_is_refused(source, tmp_path):
    d = tmp_path / "gelu"
    shutil.copytree(source["paths"]["hf-dir"], d)
    config = json.loads((d / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "gelu"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="hidden_act is 'gelu'"):
        load_clip_weights(d)
