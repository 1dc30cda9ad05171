"""Optimiser parameter groups: which weights train at the low rate, which without weight decay."""
import pytest

from escnet.training.optim import param_groups
from escnet.models.factory import create_model


def test_param_groups_and_frozen_clip():
    model = create_model("escnet", "tiny")
    groups = {g["name"]: g for g in param_groups(model, lr=2e-4, low_lr=2e-6, weight_decay=1e-4)}
    low = groups["low_decay"]["param_names"] + groups.get("low_no_decay", {"param_names": []})["param_names"]
    clip_low = [n for n in low if n.startswith("clip.")]
    assert clip_low and all(n.endswith(("q_proj_weight", "v_proj_weight")) for n in clip_low)
    assert any(n.startswith("clip.visual.") for n in clip_low) and any(n.startswith("clip.transformer.") for n in clip_low)
    sam_low = [n for n in low if n.startswith("sam.")]
    # the paper's rule: every pretrained SAM piece at the low rate (attention, MLP, norms, prompt encoder, tokens)
    for piece in (".self_attn.", ".mlp.", ".norm1.", ".prompt_encoder.", ".iou_token.", ".mask_tokens."):
        assert any(piece in n for n in sam_low), piece
    assert not any(n.split(".")[2] in ("image_proj", "merge", "out_proj") for n in sam_low)
    assert all(g["lr"] == 2e-6 for k, g in groups.items() if k.startswith("low"))
    main = groups["main_decay"]["param_names"] + groups["main_no_decay"]["param_names"]
    assert not any(n.startswith("clip.") for n in main)
    assert all("norm" not in n for n in groups["main_decay"]["param_names"])
    assert groups["main_no_decay"]["weight_decay"] == 0.0
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "clip.visual.conv1.weight" in frozen and "clip.token_embedding.weight" in frozen
    grouped = sum(len(g["params"]) for g in groups.values())
    assert grouped == sum(p.requires_grad for p in model.parameters())


def test_param_groups_attention_rule():
    model = create_model("escnet", "tiny")
    groups = param_groups(model, sam_rule="attention")
    low = [n for g in groups if g["name"].startswith("low") for n in g["param_names"] if n.startswith("sam.")]
    assert low and all(".self_attn." in n or ".cross_attn_" in n for n in low)
    with pytest.raises(ValueError, match="SAM learning-rate rule"):
        param_groups(model, sam_rule="some")


def test_param_groups_sam_lr_of_its_own():
    """sam_lr moves exactly the low-rate SAM pieces into groups of their own; CLIP stays at low_lr."""
    model = create_model("escnet", "tiny")
    plain = param_groups(model, lr=3e-3, low_lr=1e-3)
    split = param_groups(model, lr=3e-3, low_lr=1e-3, sam_lr=3e-5)
    names = lambda gs, prefix: {n for g in gs if g["name"].startswith(prefix) for n in g["param_names"]}
    sam = names(split, "sam")
    assert sam and all(n.startswith("sam.") for n in sam)
    assert sam == {n for n in names(plain, "low") if n.startswith("sam.")}
    assert names(split, "low") == names(plain, "low") - sam
    assert names(split, "main") == names(plain, "main")
    assert all(g["lr"] == 3e-5 for g in split if g["name"].startswith("sam"))
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="sam_lr"):
            param_groups(model, sam_lr=bad)


@pytest.mark.parametrize("init,rule,expected", [
    ({}, "low", 2e-6),  # random SAM at the low rate: today's default
    ({}, "main", 2e-4),  # Table 2 (b) "rand init" with SAM trained at the main rate
    ({"init_sam": "sam.pth"}, "main", 2e-6),  # pretrained SAM: the paper's low rate, whatever the field says
    ({"init_model": "model"}, "main", 2e-6),  # a saved model's SAM is not random either
])
def test_random_sam_at_the_main_rate(init, rule, expected):
    """sam_lr_random = "main": when ESC-Net's SAM pieces start random, the optimiser trains them at lr
    (groups sam_*), CLIP stays at low_lr; with pretrained SAM the field changes nothing."""
    from escnet.training.config import TrainConfig
    from escnet.training.optim import make_optimizer

    cfg = TrainConfig(preset="tiny", lr=2e-4, low_lr=2e-6, sam_lr_random=rule, max_iters=10, **init)
    model = create_model("escnet", "tiny")
    optimizer, _ = make_optimizer(model, cfg)
    rates = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in optimizer.param_groups:
        for p in g["params"]:
            rates[names[id(p)]] = g["lr"]
    sam_pretrained = [n for n in rates if n.startswith("sam.") and ".transformer." in n]
    assert sam_pretrained and all(rates[n] == expected for n in sam_pretrained)
    assert all(rates[n] == 2e-6 for n in rates if n.startswith("clip."))
    assert all(rates[n] == 2e-4 for n in rates if n.startswith(("vlf.", "decoder.", "sam.0.image_proj.")))


def test_random_sam_rate_and_sam_lr_are_one_choice():
    from escnet.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="sam_lr = 0.001 and sam_lr_random = 'main' both set the SAM rate"):
        load_config(None, ["preset=tiny", "sam_lr=0.001", "sam_lr_random=main"])
    with pytest.raises(ConfigError, match="sam_lr_random = 'fast': choose one of low, main"):
        load_config(None, ["preset=tiny", "sam_lr_random=fast"])
