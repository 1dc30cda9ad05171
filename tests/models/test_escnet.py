import time

import pytest
import torch

from escnet.models.escnet import ESCNet, ESCNetConfig
from escnet.models.factory import count_parameters, create_model, load_pretrained, param_groups, save_pretrained


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("escnet", "tiny").eval()


def _inputs(model, b=2, t=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    crop = model.cfg.crop_size
    images = torch.rand(b, 3, crop, crop, generator=g) * 255
    text = torch.nn.functional.normalize(torch.randn(t, model.cfg.clip.embed_dim, generator=g), dim=-1)
    return images, text


def test_tiny_shapes_and_text(tiny):
    images, _ = _inputs(tiny)
    text = tiny.encode_text(["cat", "sofa, couch", "wall"])
    assert text.shape == (3, tiny.cfg.clip.embed_dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        out = tiny(images, text)
    assert out.shape == (2, 3, tiny.cfg.crop_size, tiny.cfg.crop_size)
    assert torch.isfinite(out).all()


def test_first_synonym_is_used(tiny):
    assert torch.allclose(tiny.encode_text(["sofa, couch"]), tiny.encode_text(["sofa"]))


def test_chunked_equals_unchunked(tiny):
    images, text = _inputs(tiny, t=7)
    with torch.no_grad():
        full = tiny(images, text)
        for chunk in (1, 3, 7, 100):
            assert torch.allclose(tiny(images, text, class_chunk=chunk), full, atol=1e-5), chunk


def test_order_agnostic_over_classes(tiny):
    images, text = _inputs(tiny, t=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        a = tiny(images, text)[:, perm]
        b = tiny(images, text[perm])
    assert torch.allclose(a, b, atol=1e-5)


def test_forward_backward_is_fast_and_reaches_trainable_params(tiny):
    model = create_model("escnet", "tiny").train()
    images, text_feats = _inputs(model)
    target = torch.zeros(2, 5, model.cfg.crop_size, model.cfg.crop_size)
    groups = param_groups(model)
    opt = torch.optim.AdamW(groups)
    steps = []
    for _ in range(5):  # the best of 5 steps: the first pays one-off allocation costs
        t0 = time.perf_counter()
        text = model.encode_text(["a", "b", "c", "d", "e"])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images, text), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
    assert min(steps) < 1.0, steps
    q = model.clip.transformer.resblocks[0].attn.q_proj_weight
    assert q.requires_grad and q.grad is not None and q.grad.abs().sum() > 0
    assert model.sam[0].transformer.layers[0].self_attn.q_proj.weight.grad is not None


def test_param_groups_and_frozen_clip():
    model = create_model("escnet", "tiny")
    groups = {g["name"]: g for g in param_groups(model, lr=2e-4, low_lr=2e-6, weight_decay=1e-4)}
    low = groups["low_decay"]["param_names"] + groups.get("low_no_decay", {"param_names": []})["param_names"]
    clip_low = [n for n in low if n.startswith("clip.")]
    assert clip_low and all(n.endswith(("q_proj_weight", "v_proj_weight")) for n in clip_low)
    assert any(n.startswith("clip.visual.") for n in clip_low) and any(n.startswith("clip.transformer.") for n in clip_low)
    assert any(".self_attn." in n and n.startswith("sam.") for n in low)
    assert all(g["lr"] == 2e-6 for k, g in groups.items() if k.startswith("low"))
    main = groups["main_decay"]["param_names"] + groups["main_no_decay"]["param_names"]
    assert not any(n.startswith("clip.") for n in main)
    assert all("norm" not in n for n in groups["main_decay"]["param_names"])
    assert groups["main_no_decay"]["weight_decay"] == 0.0
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "clip.visual.conv1.weight" in frozen and "clip.token_embedding.weight" in frozen
    grouped = sum(len(g["params"]) for g in groups.values())
    assert grouped == sum(p.requires_grad for p in model.parameters())


def test_save_load_roundtrip(tmp_path, tiny):
    save_pretrained(tiny, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m").eval()
    assert loaded.cfg == tiny.cfg
    images, text = _inputs(tiny)
    with torch.no_grad():
        assert torch.equal(loaded(images, text), tiny(images, text))


def test_load_errors_name_the_problem(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_pretrained(tmp_path / "missing")
    from safetensors.torch import load_file, save_file

    d = save_pretrained(tiny, tmp_path / "bad")
    sd = load_file(str(d / "model.safetensors"))
    sd["stem.extra"] = sd.pop("stem.weight")
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): stem.weight") as e:
        load_pretrained(d)
    assert "unexpected keys (1): stem.extra" in str(e.value)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown ESC-Net config field 'nope'"):
        ESCNetConfig.preset("tiny", nope=1)
    with pytest.raises(ValueError, match="unknown ESC-Net preset"):
        ESCNetConfig.preset("vitx")


def test_ablations_build_and_run():
    images = None
    for over in ({"use_sam": False}, {"sam_sharing": "shared"}, {"mask_combine": "union"},
                 {"ppg_source": "initial", "prompt_points": False}):
        model = create_model("escnet", "tiny", **over).eval()
        images, text = _inputs(model, b=1, t=3)
        with torch.no_grad():
            assert model(images, text).shape == (1, 3, model.cfg.crop_size, model.cfg.crop_size)
    shared = create_model("escnet", "tiny", sam_sharing="shared")
    copies = create_model("escnet", "tiny")
    assert count_parameters(shared)["sam"] < count_parameters(copies)["sam"]


@pytest.mark.parametrize("preset,paper", [("vitb16", None), ("vitl14", 451.3)])
def test_parameter_counts(preset, paper):
    with torch.device("meta"):
        model = create_model("escnet", preset)
    total = count_parameters(model)["total"] / 1e6
    if paper:
        assert abs(total - paper) / paper < 0.03, total
    assert total > 100


@pytest.mark.parametrize("arch", ["escnet", "catseg"])
@pytest.mark.parametrize("preset", ["vitb16", "vitl14"])
def test_paper_size_shapes(arch, preset):
    torch.manual_seed(0)
    model = create_model(arch, preset).eval()
    images = torch.rand(1, 3, 384, 384) * 255
    text = torch.nn.functional.normalize(torch.randn(2, model.cfg.clip.embed_dim), dim=-1)
    with torch.no_grad():
        feats, skips, _ = model.encode_image(images)
        assert feats.shape == (1, model.cfg.clip.embed_dim, 24, 24)
        assert [s.shape[-1] for s in skips] == [24, 24]
        assert model(images, text).shape == (1, 2, 384, 384)


def test_bad_choice_fails_at_config_time():
    with pytest.raises(ValueError, match=r"ESCNetConfig.ppg_threshold = 'max'; choose one of relative, uniform"):
        ESCNetConfig.preset("tiny", ppg_threshold="max")
