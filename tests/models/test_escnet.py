import pytest
import torch

from escnet.lifecycle import load_pretrained, save_pretrained
from escnet.models.escnet import ESCNet, ESCNetConfig
from escnet.models.factory import count_parameters, create_model


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


READINGS = ["paper", "efficient", "legacy"]
# every PPG / mask-prompt option (docs/ppg.md)
PPG_OPTIONS = [{"ppg_threshold": r} for r in ("otsu", "quantile", "class_softmax", "softmax_peak", "softmax_uniform")] + [
    {"ppg_smooth": 1}, {"ppg_smooth": 5, "ppg_region_min": 0.0}, {"ppg_min_contrast": 0.05}, {"ppg_init": "top"},
    {"ppg_init": "farthest_raster"}, {"ppg_source": "stem_inverse"}, {"ppg_source": "initial"},
    {"mask_combine": "union"}, {"mask_combine": "sum"}, {"mask_combine": "mean"}, {"mask_logit": 2.0},
    {"ppg_threshold": "class_softmax", "ppg_source": "stem_inverse", "ppg_smooth": 1}]
# the open readings' options (docs/readings-options.md)
READING_OPTIONS = [{"sam_chain_tokens": True}, {"sam_chain_tokens": True, "sam_guidance": "perclass"},
                   {"sam_chain_tokens": True, "sam_sharing": "shared"},
                   {"use_sam": False, "no_sam_guidance": "unrefined"}, {"sam_layers": "decoder"},
                   {"sam_layers": "decoder", "sam_guidance": "perclass", "sam_chain_tokens": True},
                   {"class_attention": "catseg"}, {"class_attention": "catseg", "class_ffn": False, "use_sam": False}]
OPTIONS = PPG_OPTIONS + READING_OPTIONS
ABLATIONS = [*READING_OPTIONS, {"prompt_boxes": True}, {"prompt_points": False, "prompt_boxes": True},
             {"prompt_masks": False}, {"sam_text_token": True}, *PPG_OPTIONS,
             {"sam_seed_layers": (0, 0)}, {"sam_seed_layers": (1, 1)}, {"use_sam": False},
             {"sam_guidance": "perclass"}, {"sam_layers": "full"}, {"vlf_swin": "pair"}, {"sam_sharing": "shared"}]


def _reading(reading, **over):
    torch.manual_seed(0)
    model = create_model("escnet", "tiny", reading=reading, **over).eval()
    for p in model.parameters():  # away from the init so that every term matters
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else torch.nn.init.normal_(p, mean=float(p.mean()), std=0.1)
    return model


@pytest.mark.parametrize("reading,over", [(r, {}) for r in READINGS] + [("paper", o) for o in OPTIONS])
def test_chunked_equals_unchunked(reading, over):
    model = _reading(reading, **over)
    images, text = _inputs(model, t=7)
    ppg = model.cfg.use_sam  # PPG's records exist only with SAM blocks
    with torch.no_grad():
        full, records = model(images, text, return_ppg=True) if ppg else (model(images, text), None)
        for chunk in (1, 3, 7, 100):
            out, chunked = model(images, text, class_chunk=chunk, return_ppg=True) if ppg else (
                model(images, text, class_chunk=chunk), None)
            assert torch.allclose(out, full, atol=1e-5), chunk
            if ppg:
                assert torch.equal(chunked[0].foreground, records[0].foreground), chunk  # block 1 reads C0: exact


@pytest.mark.parametrize("reading,over", [(r, {}) for r in READINGS] + [("paper", o) for o in OPTIONS])
def test_order_agnostic_over_classes(reading, over):
    model = _reading(reading, **over)
    images, text = _inputs(model, t=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        a = model(images, text)[:, perm]
        b = model(images, text[perm])
    assert torch.allclose(a, b, atol=1e-5)


def _first_guidance(model, images, text):
    """The guidance the first VLF block receives."""
    calls = {}
    hook = model.vlf[0].register_forward_hook(lambda m, args, out: calls.__setitem__("g", args[1]))
    with torch.no_grad():
        model(images, text)
    hook.remove()
    return calls["g"]


def test_merge_is_one_map_per_image_and_perclass_is_not():
    """Eq. (2): with `merge` all classes of an image see ONE F'_v (B, G, g, g), the same for any class
    order (a mean) but not for another class set; per-class guidance has one map per (image, class)."""
    merge, perclass = _reading("paper"), _reading("legacy")
    images, text = _inputs(merge, t=4)
    ref = _first_guidance(merge, images, text)
    assert ref.shape == (2, merge.cfg.guidance_dim, merge.cfg.grid, merge.cfg.grid)
    assert torch.allclose(_first_guidance(merge, images, text[torch.tensor([2, 0, 3, 1])]), ref, atol=1e-5)
    assert not torch.allclose(_first_guidance(merge, images, text[:3]), ref, atol=1e-4)
    g = perclass.cfg.grid
    assert _first_guidance(perclass, images, text).shape == (2 * 4, perclass.cfg.guidance_dim, g, g)


@pytest.mark.parametrize("reading", READINGS)
@pytest.mark.parametrize("over", [{}, {"prompt_boxes": True, "sam_text_token": True}, {"mask_combine": "mean"},
                                  {"mask_combine": "union"}, {"mask_combine": "sum"}, {"sam_seed_layers": (1, 0)},
                                  {"prompt_masks": False}, {"sam_layers": "decoder"}, {"sam_chain_tokens": True}])
@pytest.mark.parametrize("b", [1, 2])
def test_folded_sam_layer_equals_plain(reading, over, b):
    """The SAM layer on the per-class keys in factored form == SAM's own TwoWayAttentionBlock on the
    materialised keys image + dense prompt (max difference <= 1e-5), with and without mask prompts,
    for one image (the image is a broadcast view) and several; and so do the gradients of every input
    and of the layer's parameters."""
    from escnet.models.escnet import _first_layer

    model = _reading(reading, **over).double()
    t, g = 3, model.cfg.grid
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(b, model.cfg.clip.embed_dim, g, g, generator=gen, dtype=torch.float64)
    corr = torch.randn(b * t, g, g, generator=gen, dtype=torch.float64)
    text = torch.randn(t, model.cfg.clip.embed_dim, generator=gen, dtype=torch.float64).repeat(b, 1)
    for block in model.sam:
        # sam_chain_tokens: blocks after the first are given tokens (here block 1's projection of F_v)
        proj = block if block.image_proj is not None else model.sam[0]
        image = proj.project_image(feats).flatten(2).transpose(1, 2)
        tokens, dense = block.prompts(corr, text)
        assert (dense.h is not None and dense.h.abs().sum() > 0) == over.get("prompt_masks", True)
        pos = block.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)
        layer = block.transformer.layers[0]
        weights = torch.randn(b * t, g * g, model.cfg.sam_dim, generator=gen, dtype=torch.float64)
        q1, k1 = _first_layer(layer, tokens, image, pos, dense, t)
        keys = (image.unsqueeze(1) + dense.materialise().expand(b * t, g * g, -1).view(b, t, g * g, -1)).flatten(0, 1)
        q2, k2 = layer(queries=tokens, keys=keys, query_pe=tokens, key_pe=pos)
        assert (q1 - q2).abs().max() <= 1e-5 and (k1 - k2).abs().max() <= 1e-5
        params = [w for w in [*layer.parameters(), *proj.image_proj.parameters()] if w.requires_grad]
        g1 = torch.autograd.grad((k1 * weights).sum() + q1.sum(), params, allow_unused=True, retain_graph=True)
        g2 = torch.autograd.grad((k2 * weights).sum() + q2.sum(), params, allow_unused=True)
        for x, y in zip(g1, g2):
            assert (x is None) == (y is None) and (x is None or torch.allclose(x, y, atol=1e-8))


@pytest.mark.parametrize("combine", ["logits", "union", "sum", "mean"])
def test_dense_prompt_equals_sam_mask_embedding(combine):
    """The factored dense prompt == SAM's prompt encoder on the mask(s) at 4x the grid: ONE mask per
    prompt set (logits: +/-mask_logit, union: {0, 1}) embedded once, or the K region masks combined
    (sum / mean); a set without a region gets SAM's no_mask_embed."""
    import torch.nn.functional as F

    model = _reading("paper", mask_combine=combine)
    cfg, block = model.cfg, model.sam[0]
    pe, g, n, k = block.prompt_encoder, cfg.grid, 6, cfg.ppg_regions
    corr = 0.2 + 0.05 * torch.randn(n, g, g, generator=torch.Generator().manual_seed(2))
    corr[0] = 0.3  # flat map: no region, no mask
    seen = []
    hook = block.ppg.register_forward_hook(lambda mod, args, out: seen.append(out))  # PPG's record as the block uses it
    with torch.no_grad():
        _, dense = block.prompts(corr, torch.zeros(n, cfg.clip.embed_dim))
        hook.remove()
        pp = seen[0]
        assert (pp.mask_prompt is None) == (combine in ("sum", "mean"))
        if combine in ("logits", "union"):
            ref = pe.embed_masks(F.interpolate(pp.mask_prompt[:, None], scale_factor=4))
        else:
            emb = pe.embed_masks(F.interpolate(pp.masks.reshape(n * k, 1, g, g), scale_factor=4)).view(n, k, -1, g, g)
            w = pp.valid.float()
            if combine == "mean":
                w = w / w.sum(1, keepdim=True).clamp(min=1)
            ref = (emb * w[:, :, None, None, None]).sum(1)
        no_mask = ~pp.valid.any(1)
        assert no_mask[0] and not no_mask[1:].any()
        ref[no_mask] = pe.no_mask_dense(int(no_mask.sum()))
    got = dense.materialise().expand(n, g * g, -1)
    assert torch.allclose(got, ref.flatten(2).transpose(1, 2), atol=1e-5), combine
    if combine == "logits":  # the one mask SAM sees: +/- mask_logit on / off the regions
        assert set(pp.mask_prompt[1:].unique().tolist()) == {-cfg.mask_logit, cfg.mask_logit}
        assert torch.equal(pp.mask_prompt[1:] > 0, pp.regions[1:] >= 0)


def test_box_prompts_are_the_smallest_boxes_around_regions():
    from escnet.models.ppg import generate_pseudo_prompts

    corr = torch.full((1, 12, 12), -1.0)
    corr[0, 2:5, 3:7] = 1.0  # one object: rows 2-4, cols 3-6
    pp = generate_pseudo_prompts(corr, num_regions=2, canvas_size=96, smooth=1)
    boxes = pp.boxes[pp.valid]
    assert pp.valid.sum() >= 1
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    assert (x0, y0, x1, y1) == (24.0, 16.0, 7 * 8 - 1, 5 * 8 - 1)  # cells of 8 canvas pixels, inclusive corners
    assert torch.equal(pp.boxes[~pp.valid], torch.zeros_like(pp.boxes[~pp.valid]))


@pytest.mark.parametrize("over", [{"reading": r} for r in READINGS] + ABLATIONS)
def test_every_trainable_parameter_gets_a_gradient(over):
    """Each reading and ablation trains end to end, and nothing is computed that is discarded: every
    trainable parameter receives a gradient (so DDP runs without find_unused_parameters)."""
    over = dict(over)
    model = create_model("escnet", "tiny", reading=over.pop("reading", "paper"), clip_finetune="full", **over).train()
    images, _ = _inputs(model, t=4)
    text = model.encode_text(["red", "green", "blue", "sky"])
    target = torch.zeros(2, 4, model.cfg.crop_size, model.cfg.crop_size)
    target[:, 0, :20] = 1
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images, text), target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert model.clip.transformer.resblocks[0].attn.q_proj_weight.grad.abs().sum() > 0
    if model.cfg.use_sam:
        assert model.sam[0].transformer.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("reading", READINGS)
@pytest.mark.parametrize("preset", ["vitb16", "vitl14"])
def test_paper_size_readings_forward_backward_on_meta(reading, preset):
    """Shapes (and autograd) at the paper's sizes, on the meta device: no memory, seconds."""
    with torch.device("meta"):
        model = create_model("escnet", preset, reading=reading).train()
        images = torch.empty(2, 3, 384, 384)
        text = torch.empty(3, model.cfg.clip.embed_dim)
        out = model(images, text)
        assert out.shape == (2, 3, 384, 384)
        out.sum().backward()
    assert model.vlf[0].spatial.block_1.attn.q.weight.grad is not None


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-4), (torch.bfloat16, None), (torch.float16, None)])
def test_dtype_casts(dtype, atol):
    """model.to(dtype) runs (PPG's masks follow the model's dtype); float64 agrees with float32."""
    model = _reading("paper")
    images, text = _inputs(model, t=3)
    with torch.no_grad():
        ref = model(images, text)
        out = model.to(dtype)(images.to(dtype), text.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    if atol is not None:
        assert torch.allclose(out.double(), ref.double(), atol=atol)


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
                 {"ppg_source": "initial", "prompt_points": False}, *OPTIONS):
        model = create_model("escnet", "tiny", **over).eval()
        images, text = _inputs(model, b=1, t=3)
        with torch.no_grad():
            assert model(images, text).shape == (1, 3, model.cfg.crop_size, model.cfg.crop_size)
    shared = create_model("escnet", "tiny", sam_sharing="shared")
    copies = create_model("escnet", "tiny")
    assert count_parameters(shared)["sam"] < count_parameters(copies)["sam"]


def test_four_complete_sam_decoders_match_the_papers_count():
    """sam_layers = "decoder" (four complete SAM mask decoders) at ViT-L: within 1 % of Table 4's 451.3 M."""
    with torch.device("meta"):
        model = create_model("escnet", "vitl14", sam_layers="decoder")
    total = count_parameters(model)["total"] / 1e6
    assert abs(total - 451.3) / 451.3 < 0.01, total
    assert abs(total - 451.3) / 451.3 < 0.005, total  # in fact within 0.5 %


def test_decoder_layout_loads_the_final_attention_and_runs_the_heads():
    """The decoder layout takes SAM's final token->image attention from the pretrained transformer and
    its heads' mask enters E: zeroing mask_embed gives the model without the mask term."""
    model = _reading("paper", sam_layers="decoder")
    sd = {"transformer.final_attn_token_to_image.q_proj.weight": torch.full_like(
        model.sam[0].mask_head.final_attn_token_to_image.q_proj.weight, 0.5)}
    own = model.sam_block_state(1, sd)
    assert set(own) == {"mask_head.final_attn_token_to_image.q_proj.weight"}
    images, text = _inputs(model, t=3)
    with torch.no_grad():
        out = model(images, text)
        for block in model.sam:
            block.mask_embed.weight.zero_()
            block.mask_embed.bias.zero_()
        assert not torch.allclose(model(images, text), out, atol=1e-4)


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
    with pytest.raises(ValueError, match=r"ESCNetConfig.ppg_threshold = 'max'; choose one of range, otsu, quantile"):
        ESCNetConfig.preset("tiny", ppg_threshold="max")
    with pytest.raises(ValueError, match=r"ESCNetConfig.ppg_smooth = 2: an odd filter side"):
        ESCNetConfig.preset("tiny", ppg_smooth=2)
    with pytest.raises(ValueError, match=r"ESCNetConfig.mask_combine = 'max'; choose one of logits, union, sum, mean"):
        ESCNetConfig.preset("tiny", mask_combine="max")
    # the rules' names before the revision name the same rules
    assert ESCNetConfig.preset("tiny", ppg_threshold="relative").ppg_threshold == "softmax_peak"
    assert ESCNetConfig.preset("tiny", ppg_threshold="uniform").ppg_threshold == "softmax_uniform"


def test_config_saved_before_the_ppg_revision_keeps_the_old_prompts():
    """A config.json without ppg_smooth (the bundled model's) runs the old PPG and mask prompt: its
    "relative" threshold, raster-order seeding, no smoothing, no region rule, the K masks summed."""
    import dataclasses

    from escnet.models.escnet import PRE_PPG_REVISION

    old = {k: v for k, v in dataclasses.asdict(ESCNetConfig.preset("tiny")).items()
           if k not in ("ppg_smooth", "ppg_min_contrast", "ppg_region_min", "mask_logit", "class_truncation")}
    old.update(ppg_threshold="relative", ppg_alpha=0.5, ppg_init="farthest", ppg_source="stem_inverse", mask_combine="sum")
    up = ESCNetConfig.upgrade(old)
    for key, value in PRE_PPG_REVISION.items():
        assert up[key] == value, key
    fresh = dict(dataclasses.asdict(ESCNetConfig.preset("tiny")))
    assert ESCNetConfig.upgrade(fresh) == fresh  # a config saved now is left alone
    assert ESCNetConfig.preset("tiny", reading="legacy").ppg_threshold == "softmax_peak"


def test_ppg_records_are_returned_on_request_only():
    model = _reading("paper")
    images, text = _inputs(model, t=4)
    g = model.cfg.grid
    with torch.no_grad():
        plain = model(images, text)
        out, records = model(images, text, return_ppg=True)
    assert torch.equal(out, plain) and len(records) == model.cfg.num_blocks
    for i, rec in enumerate(records):
        assert rec.foreground.shape == (2, 4, g, g) and rec.points.shape == (2, 4, model.cfg.ppg_regions, 2)
        assert rec.mask_prompt.shape == (2, 4, g, g) and rec.source.shape == (2, 4, g, g)
        assert torch.equal(rec.mask_prompt > 0, rec.regions >= 0)
    assert all(block.records is None for block in model.sam)  # nothing kept after the call
    # block 1 reads C0, the cosine map
    with torch.no_grad():
        feats, _, _ = model.encode_image(images)
    c0 = torch.einsum("bdhw,td->bthw", torch.nn.functional.normalize(feats, dim=1), text)
    assert torch.allclose(records[0].source, c0, atol=1e-6)
    # the rescaled readout of block 2 has C0's per-map mean and standard deviation
    src = records[1].source
    assert torch.allclose(src.mean((-2, -1)), c0.mean((-2, -1)), atol=1e-5)
    assert torch.allclose(src.std((-2, -1)), c0.std((-2, -1)), atol=1e-5)
    with pytest.raises(ValueError, match="no SAM blocks"):
        create_model("escnet", "tiny", use_sam=False)(images, text, return_ppg=True)


def test_class_truncation_is_catsegs_rule():
    """ESC-Net's top-k: each image's k classes with the highest max cosine are scored, the rest get
    logit -100 (CAT-Seg's rule); the kept classes' logits are those of a forward over them alone."""
    from escnet.models.catseg import CATSeg

    model = _reading("paper")
    images, text = _inputs(model, b=2, t=6)
    with torch.no_grad():
        feats, _, _ = model.encode_image(images)
        # hand case: the classes' max cosine per image, ranked by hand
        score = torch.einsum("bdhw,td->bthw", torch.nn.functional.normalize(feats, dim=1), text).flatten(2).amax(-1)
        by_hand = [sorted(sorted(range(6), key=lambda c: -float(score[b, c]))[:3]) for b in range(2)]
        kept = model.select_classes(feats, text, 3)
        assert kept.tolist() == by_hand
        assert torch.equal(kept, CATSeg.select_classes(None, feats, text, 3))
        out = model(images, text, class_truncation=3)
        assert out.shape == (2, 6, model.cfg.crop_size, model.cfg.crop_size)
        for b in range(2):
            rest = [c for c in range(6) if c not in by_hand[b]]
            assert (out[b, rest] == -100).all()
            alone = model(images[b:b + 1], text[by_hand[b]])
            assert torch.allclose(out[b, by_hand[b]], alone[0], atol=1e-5)
        assert torch.equal(model(images, text, class_truncation=6), model(images, text))  # T <= k: all scored
        assert torch.equal(model(images, text), model(images, text, class_truncation=None))
        _, records = model(images, text, class_truncation=3, return_ppg=True)
        assert records[0].foreground.shape[:2] == (2, 3)
    with pytest.raises(ValueError, match="class_truncation must be an integer >= 1"):
        model(images, text, class_truncation=0)


def test_class_ffn_backward_that_recomputes_gelu_is_exact():
    """The class-attention feed-forward keeps only its hidden pre-activation for the backward and
    recomputes GELU there: outputs and gradients equal plain autograd through the same modules."""
    from escnet.models.swin import linear_attention_query
    from escnet.models.vlf import TextClassAttention

    torch.manual_seed(0)
    m = TextClassAttention(32, 16, heads=2).double()
    x = torch.randn(2, 3, 4, 4, 32, dtype=torch.double, requires_grad=True)
    text = torch.randn(3, 16, dtype=torch.double)
    y = m(x, m.text_state(text), 3)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *m.parameters()], g)

    state = m.text_state(text)
    q = m.q(m.norm1(x)).view(*x.shape[:-1], m.heads, -1)
    x2 = x + m.proj(linear_attention_query(q.unsqueeze(-3), state, 3).reshape(x.shape))
    y2 = x2 + m.mlp(m.norm2(x2))  # nn.Sequential: autograd keeps GELU's input and output
    grads2 = torch.autograd.grad(y2, [x, *m.parameters()], g)
    assert torch.allclose(y, y2, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(grads, grads2))


def test_class_ffn_backward_under_bf16_autocast_matches_autograd():
    """bf16 autocast (training with precision=bf16): the recomputing backward gives each gradient in
    its input's dtype and equals autograd through the same autocast modules (it used to fail with a
    BFloat16 / float mismatch)."""
    from escnet.models.vlf import TextClassAttention

    torch.manual_seed(0)
    m = TextClassAttention(32, 16, heads=2)
    x = torch.randn(2, 3, 4, 4, 32, requires_grad=True)
    text = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x, m.text_state(text), 3)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *m.parameters()], g)
    assert all(a.dtype == torch.float32 for a in grads[1:])
    mlp_forward = type(m).forward

    def plain(self, x, state, num_classes):  # the same block with nn.Sequential's autograd backward
        mlp, self.mlp = self.mlp, None
        out = mlp_forward(self, x, state, num_classes)  # attention only
        self.mlp = mlp
        return out + self.mlp(self.norm2(out))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y2 = plain(m, x, m.text_state(text), 3)
    grads2 = torch.autograd.grad(y2, [x, *m.parameters()], g)
    assert torch.allclose(y.float(), y2.float(), atol=1e-2)
    for a, b in zip(grads, grads2):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("guidance", ["merge", "perclass"])
def test_chained_sam_tokens_are_the_previous_blocks_refined_tokens(guidance):
    """sam_chain_tokens: block k+1's SAM block starts from the mean over all classes of block k's
    refined image tokens (B, S, g, g); only block 1 projects F_v."""
    model = _reading("paper", sam_chain_tokens=True, sam_guidance=guidance)
    assert model.sam[0].image_proj is not None and all(b.image_proj is None for b in model.sam[1:])
    images, text = _inputs(model, t=4)
    calls = []  # (image tokens, refined tokens) of each SAM block's refine, in call order
    for block in model.sam:
        orig = block.refine
        block.refine = (lambda orig: lambda image, *a: calls.append((image, orig(image, *a))) or calls[-1][1])(orig)
    with torch.no_grad():
        model(images, text)
    assert len(calls) == 2
    image1, refined0 = calls[1][0], calls[0][1]
    assert torch.allclose(image1, refined0.mean(1).transpose(1, 2).reshape(image1.shape), atol=1e-6)
    plain = _reading("paper", sam_guidance=guidance)
    with torch.no_grad():
        assert not torch.allclose(plain(images, text), model(images, text), atol=1e-3)


def test_unrefined_guidance_is_fv_through_the_projection():
    """Table 2 (a) as worded: no SAM block, no PPG, but VLF still gets F_v (projected) as its image
    guidance; use_sam = false alone keeps no image guidance at all."""
    model = _reading("paper", use_sam=False, no_sam_guidance="unrefined")
    assert not hasattr(model, "sam")  # no SAM block, no PPG
    images, text = _inputs(model, t=3)
    with torch.no_grad():
        feats, _, _ = model.encode_image(images)
        got = _first_guidance(model, images, text)
    assert torch.allclose(got, model.unrefined[0](feats), atol=1e-6)
    assert got.shape == (2, model.cfg.guidance_dim, model.cfg.grid, model.cfg.grid)
    assert _first_guidance(_reading("paper", use_sam=False), images, text) is None
    with pytest.raises(ValueError, match="no_sam_guidance = 'unrefined' applies only with use_sam = false"):
        ESCNetConfig.preset("tiny", no_sam_guidance="unrefined")


@pytest.mark.parametrize("over", [{"sam_layers": "decoder"}, {"sam_chain_tokens": True},
                                  {"use_sam": False, "no_sam_guidance": "unrefined"}])
def test_reading_options_save_and_load(tmp_path, over):
    """A model with a reading option saves and loads to the same outputs (the decoder layout's final
    attention lives under mask_head.*, which the pre-v0.2 clean-up of saved models leaves alone)."""
    model = _reading("paper", **over)
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m").eval()
    assert loaded.cfg == model.cfg
    images, text = _inputs(model, t=3)
    with torch.no_grad():
        assert torch.equal(loaded(images, text), model(images, text))


def test_catseg_class_attention_exchanges_information_between_classes_at_a_pixel():
    """class_attention = "catseg": class 0's output at a pixel depends on class 1's embedding at that
    pixel and at no other pixel; the paper's text attention (keys / values from text) on neither."""
    from escnet.models.vlf import CostClassAttention, TextClassAttention

    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4, 16, dtype=torch.double)
    text = torch.randn(3, 8, dtype=torch.double)
    y = x.clone()
    y[0, 1, 2, 2] += torch.randn(16, dtype=torch.double)  # class 1 at pixel (2, 2) (not a constant: LayerNorm)
    cat, txt = CostClassAttention(16, 8, 8, heads=2).double(), TextClassAttention(16, 8, heads=2).double()
    a, b = (cat(z, cat.state(z, text, 3), 3, text) for z in (x, y))
    assert (a[0, 0, 2, 2] - b[0, 0, 2, 2]).abs().max() > 1e-4
    changed = (a[0, 0] - b[0, 0]).abs().amax(-1) > 0
    assert changed.sum() == 1 and changed[2, 2]
    state = txt.text_state(text)
    assert torch.equal(txt(x, state, 3)[0, 0], txt(y, state, 3)[0, 0])
