import math

import numpy as np
import pytest
import torch

from escnet.models.ppg import (DEFAULT_ALPHA, OTSU_BINS, THRESHOLDS, PseudoPromptGenerator, generate_pseudo_prompts,
                               mask_prompt)
from escnet.models.ppg_stats import clip_like_maps, grid_truth, point_positions, ppg_statistics

OLD = dict(threshold="softmax_peak", alpha=0.5, smooth=1, region_min=0.0, init="farthest_raster")


def _blob_maps():
    """Three 24x24 maps: two separated blobs, one blob, and a flat map (no evidence)."""
    m = torch.full((3, 24, 24), -0.1)
    m[0, 2:6, 3:8] = 0.3
    m[0, 15:20, 15:22] = 0.3
    m[1, 10:14, 8:12] = 0.25
    m[2] = 0.0
    return m


def _cell(points, canvas=384, grid=(24, 24)):
    """Canvas points (x, y) back to (x, y) grid cells; grid (h, w)."""
    size = torch.tensor([canvas / grid[1], canvas / grid[0]])
    return ((points + 0.5) / size - 0.5).round().long()


# ---------------------------------------------------------------------------------------------
# the default rule on maps with known objects (docs/ppg.md)

@pytest.fixture(scope="module")
def generated():
    """CLIP-like maps with known objects on a square and two non-square grids (tools/ppg_study.py's
    generator, another seed and fewer images)."""
    return [clip_like_maps(torch.Generator().manual_seed(1000 + i), 60, grid=grid)
            for i, grid in enumerate([(24, 24), (24, 32), (32, 20)])]


def _pooled(generated, **options):
    stats = []
    for maps, ids in generated:
        b, t, h, w = maps.shape
        pp = generate_pseudo_prompts(maps.reshape(b * t, h, w), num_classes=t, **options)
        stats.append(ppg_statistics(pp, ids.reshape(b * t, h, w)))
    return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}


def test_default_rule_covers_the_objects(generated):
    """The default: foreground IoU with the objects >= 0.5, points on an object >= 0.85, objects with a
    point >= 0.85; the old rule (1-3 pixels per map) fails the first and the last."""
    new = _pooled(generated)
    assert new["iou"] >= 0.5 and new["points_inside"] >= 0.85 and new["objects_hit"] >= 0.85, new
    old = _pooled(generated, **OLD)
    assert old["iou"] < 0.1 and old["objects_hit"] < 0.85 and old["foreground_pixels"] < 5, old


# ---------------------------------------------------------------------------------------------
# each rule exactly

def _smooth_reference(m: np.ndarray, k: int) -> np.ndarray:
    """k x k mean over the cells inside the map, one cell at a time."""
    if k == 1:
        return m.copy()
    h, w = m.shape
    r = k // 2
    out = np.empty_like(m)
    for y in range(h):
        for x in range(w):
            out[y, x] = m[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1].mean()
    return out


def _otsu_reference(v: np.ndarray, bins: int) -> float:
    lo, hi = v.min(), v.max()
    best, arg = -1.0, None
    for j in range(1, bins):
        edge = lo + (hi - lo) * j / bins
        a, b = v[v <= edge], v[v > edge]
        if len(a) == 0 or len(b) == 0:
            continue
        var = len(a) * len(b) * (a.mean() - b.mean()) ** 2
        if var > best + 1e-9 * abs(best):
            best, arg = var, edge
    return arg


def _reference_foreground(maps: np.ndarray, rule: str, alpha: float, smooth: int, tau: float = 100.0) -> np.ndarray:
    """maps (B, T, h, w) -> the rule's foreground, written out per map."""
    m = np.stack([[_smooth_reference(x, smooth) for x in row] for row in maps]).astype(np.float64)
    fg = np.zeros(m.shape, bool)
    for b in range(m.shape[0]):
        for t in range(m.shape[1]):
            v = m[b, t]
            if rule == "range":
                fg[b, t] = v > v.min() + alpha * (v.max() - v.min())
            elif rule == "otsu":
                fg[b, t] = v > _otsu_reference(v, OTSU_BINS)
            elif rule == "quantile":
                keep = v.size - math.ceil(alpha * v.size)
                fg[b, t] = v >= np.sort(v.ravel())[::-1][keep - 1]
            elif rule == "class_softmax":
                z = tau * m[b]
                p = np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0)
                fg[b, t] = p[t] > alpha
            elif rule == "softmax_peak":
                p = np.exp(tau * (v - v.max()))
                p /= p.sum()
                fg[b, t] = p > alpha * p.max()
            else:
                p = np.exp(tau * (v - v.max()))
                fg[b, t] = p / p.sum() > 1.0 / v.size
    return fg


@pytest.mark.parametrize("rule", THRESHOLDS)
@pytest.mark.parametrize("smooth", [1, 3])
@pytest.mark.parametrize("shape", [(7, 11), (13, 9)])
def test_foreground_equals_its_rule_exactly(rule, smooth, shape):
    gen = torch.Generator().manual_seed(3)
    b, t = 2, 4
    maps = 0.2 + 0.03 * torch.randn(b, t, *shape, generator=gen, dtype=torch.float64)
    maps[:, :, 2:5, 3:6] += 0.05
    alpha = DEFAULT_ALPHA[rule]
    pp = generate_pseudo_prompts(maps.reshape(b * t, *shape).float(), threshold=rule, smooth=smooth, num_classes=t)
    ref = _reference_foreground(maps.float().double().numpy(), rule, alpha, smooth)
    got = pp.foreground.reshape(b, t, *shape).numpy()
    # float32 against float64: only a pixel within rounding of the threshold may differ
    assert (got != ref).sum() <= 1, (rule, (got != ref).sum())
    assert got.any(), rule
    # every region lies on the foreground; every foreground pixel is in a region (region_min may drop one)
    regions = pp.regions.reshape(b, t, *shape).numpy()
    assert (regions[~got] == -1).all()
    full = generate_pseudo_prompts(maps.reshape(b * t, *shape).float(), threshold=rule, smooth=smooth,
                                   num_classes=t, region_min=0.0)
    assert torch.equal(full.regions >= 0, full.foreground)


@pytest.mark.parametrize("rule", THRESHOLDS)
def test_transposing_a_map_transposes_the_prompts(rule):
    gen = torch.Generator().manual_seed(4)
    b, t, h, w = 2, 3, 10, 17
    maps = 0.2 + 0.02 * torch.randn(b, t, h, w, generator=gen)
    maps[:, 0, 1:4, 2:6] += 0.06
    maps[:, 1, 6:9, 10:15] += 0.05
    pp = generate_pseudo_prompts(maps.reshape(b * t, h, w), threshold=rule, num_classes=t, canvas_size=170)
    pt = generate_pseudo_prompts(maps.transpose(-1, -2).reshape(b * t, w, h), threshold=rule, num_classes=t,
                                 canvas_size=170)
    assert torch.equal(pt.foreground, pp.foreground.transpose(-1, -2))
    assert torch.equal(pt.masks, pp.masks.transpose(-1, -2))
    assert torch.equal(pt.valid, pp.valid)
    cells, cells_t = _cell(pp.points, 170, (h, w)), _cell(pt.points, 170, (w, h))
    assert torch.equal(cells_t[pp.valid], cells[pp.valid].flip(-1))


def test_output_shapes_depend_only_on_input_shapes():
    """No width taken from the data (exportable): a flat map, a single hot pixel and noise give the
    same shapes, and so does the meta device (no values at all)."""
    gen = torch.Generator().manual_seed(0)
    cases = [torch.zeros(4, 9, 14), torch.zeros(4, 9, 14).index_put_((torch.tensor([0]), torch.tensor([3]),
                                                                      torch.tensor([5])), torch.tensor(1.0)),
             torch.randn(4, 9, 14, generator=gen)]
    for rule in THRESHOLDS:
        shapes = None
        for maps in [*cases, torch.empty(4, 9, 14, device="meta")]:
            pp = generate_pseudo_prompts(maps, threshold=rule, num_classes=2, num_regions=5)
            got = {k: tuple(v.shape) for k, v in vars(pp).items() if v is not None}
            assert shapes is None or got == shapes, rule
            shapes = got
        assert shapes["points"] == (4, 5, 2) and shapes["masks"] == (4, 5, 9, 14)


def test_torch_export_traces_the_generator():
    """torch.export of the PPG module: one graph, no data-dependent shapes."""
    gen = PseudoPromptGenerator(num_regions=3)

    class Wrap(torch.nn.Module):
        def forward(self, maps):
            pp = gen(maps)
            return pp.points, pp.labels, pp.masks

    maps = 0.2 + 0.02 * torch.randn(6, 8, 10, generator=torch.Generator().manual_seed(1))
    ep = torch.export.export(Wrap(), (maps,))
    for got, want in zip(ep.module()(maps), Wrap()(maps)):
        assert torch.equal(got, want)


def test_onnx_export_runs_the_generator_exactly():
    """torch.onnx.export (TorchScript exporter) of the PPG module; onnxruntime gives the same prompts."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import io
    import warnings

    gen = PseudoPromptGenerator(num_regions=3)

    class Wrap(torch.nn.Module):
        def forward(self, maps):
            pp = gen(maps)
            return pp.points, pp.labels, pp.masks

    maps = 0.2 + 0.02 * torch.randn(6, 8, 10, generator=torch.Generator().manual_seed(1))
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(), (maps,), f, dynamo=False, opset_version=17)
    session = ort.InferenceSession(f.getvalue())
    other = 0.2 + 0.02 * torch.randn(6, 8, 10, generator=torch.Generator().manual_seed(2))  # not the traced values
    for x in (maps, other):
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        for a, b in zip(got, Wrap()(x)):
            assert np.array_equal(a, b.numpy())


# ---------------------------------------------------------------------------------------------
# behaviour kept from before the revision, now under the old rule's name

def test_points_land_in_blobs_and_masks_cover_them():
    m = _blob_maps()
    for options in (OLD, {}):  # the old rule and the default
        pp = generate_pseudo_prompts(m[:2], num_regions=5, **options)
        blob = m[:2] > 0.2
        for n in range(2):
            cells = _cell(pp.points[n][pp.valid[n]])
            assert all(blob[n, y, x] for x, y in cells.tolist()), "every point must lie inside a blob"
            assert (pp.masks[n].sum(0) <= 1).all(), "regions do not overlap"
            if not options:
                continue
            assert pp.valid[n].all()
            assert torch.equal(pp.masks[n].sum(0) > 0, blob[n]), "region masks together cover exactly the blobs"
        ys = _cell(pp.points[0][pp.valid[0]])[:, 1]
        assert (ys < 10).any() and (ys > 10).any(), "both blobs of map 0 get a point"


def test_flat_map_has_no_foreground():
    """A flat map holds no evidence: no foreground (the old softmax_peak makes ALL of it foreground,
    P = max P everywhere; class_softmax compares classes: a flat map above the others wins every pixel)."""
    for rule in [r for r in THRESHOLDS if r not in ("class_softmax", "softmax_peak")]:
        pp = generate_pseudo_prompts(_blob_maps(), num_regions=5, threshold=rule, num_classes=3)
        assert (pp.labels[2] == -1).all() and not pp.valid[2].any() and pp.masks[2].sum() == 0, rule
        assert (pp.labels[:2] == 1).any()
        assert (mask_prompt(pp, "logits", 10.0)[2] == -10).all()


def test_fewer_foreground_pixels_than_regions_gives_not_a_point():
    m = torch.full((1, 8, 8), -1.0)
    m[0, 3, 3] = 1.0
    m[0, 6, 1] = 1.0
    pp = generate_pseudo_prompts(m, num_regions=5, canvas_size=64, **OLD)
    assert pp.valid[0].sum() == 2
    assert (pp.labels[0] == -1).sum() == 3
    assert sorted(_cell(pp.points[0][pp.valid[0]], 64, (8, 8)).tolist()) == [[1, 6], [3, 3]]


def test_noise_rules():
    """min_contrast: a map whose smoothed max - median is below it gets nothing; region_min: a region
    whose point is low in the map's range gets no point and no mask."""
    m = torch.zeros(2, 12, 12)
    m[0, 2:5, 2:5] = 0.1  # strong object
    m[1, 2:5, 2:5] = 0.01  # weak bump
    pp = generate_pseudo_prompts(m, min_contrast=0.05, smooth=1)
    assert pp.valid[0].any() and not pp.valid[1].any() and not pp.foreground[1].any()
    two = torch.zeros(1, 12, 12)
    two[0, 1:4, 1:4] = 1.0
    two[0, 8:11, 8:11] = 0.5  # above range 0.4 but its peak below region_min 0.7
    both = generate_pseudo_prompts(two, alpha=0.4, smooth=1, region_min=0.0, num_regions=2)
    one = generate_pseudo_prompts(two, alpha=0.4, smooth=1, region_min=0.7, num_regions=2)
    assert both.valid.sum() == 2 and one.valid.sum() == 1
    assert torch.equal(one.foreground, both.foreground)  # the binary mask (c) is the rule's
    assert (one.regions >= 0).sum() == 9 and (one.labels == -1).sum() == 1


def test_batched_equals_one_by_one_and_has_no_grad():
    torch.manual_seed(0)
    m = torch.randn(6, 24, 24, requires_grad=True) * 0.05
    pp = generate_pseudo_prompts(m)
    assert not pp.points.requires_grad
    for i in range(6):
        one = generate_pseudo_prompts(m[i:i + 1])
        assert torch.equal(one.points[0], pp.points[i])
        assert torch.equal(one.masks[0], pp.masks[i])


def test_class_softmax_with_a_normaliser_equals_all_classes_at_once():
    gen = torch.Generator().manual_seed(2)
    maps = 0.2 + 0.03 * torch.randn(2, 6, 8, 8, generator=gen)
    from escnet.models.ppg import class_logsumexp, smooth_maps

    whole = generate_pseudo_prompts(maps.reshape(12, 8, 8), threshold="class_softmax", num_classes=6)
    lse = class_logsumexp(smooth_maps(maps.reshape(12, 8, 8), 3).view(2, 6, 8, 8), 100.0)
    part = generate_pseudo_prompts(maps[:, 2:5].reshape(6, 8, 8), threshold="class_softmax", class_lse=lse)
    assert torch.equal(part.foreground, whole.foreground.view(2, 6, 8, 8)[:, 2:5].reshape(6, 8, 8))
    # at most one class per pixel above 1/2
    assert (whole.foreground.view(2, 6, 8, 8).sum(1) <= 1).all()


def test_old_names_and_errors():
    m = _blob_maps()
    assert torch.equal(generate_pseudo_prompts(m, threshold="relative", alpha=0.5, smooth=1, region_min=0).foreground,
                       generate_pseudo_prompts(m, threshold="softmax_peak", alpha=0.5, smooth=1, region_min=0).foreground)
    pp = generate_pseudo_prompts(m[:2], init="top")
    assert pp.points.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="unknown PPG threshold 'nope'; choose one of range, otsu"):
        generate_pseudo_prompts(m, threshold="nope")
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        generate_pseudo_prompts(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="class_softmax' needs class_lse or num_classes"):
        generate_pseudo_prompts(m, threshold="class_softmax")
    with pytest.raises(ValueError, match="unknown PPG init"):
        generate_pseudo_prompts(m, init="random")


# ---------------------------------------------------------------------------------------------
# the record and its statistics

def test_generator_module_is_observable_with_a_hook():
    gen = PseudoPromptGenerator(num_regions=2)
    seen = []
    gen.register_forward_hook(lambda mod, args, out: seen.append(out))
    out = gen(_blob_maps())
    assert seen == [out] and out.foreground.shape == (3, 24, 24) and out.regions.shape == (3, 24, 24)
    assert list(gen.parameters()) == []


def test_statistics_on_a_hand_case():
    m = torch.zeros(2, 6, 6)
    m[0, 0:2, 0:2] = 1.0  # covers object 1 of map 0 exactly
    m[1, 4:6, 4:6] = 1.0  # map 1: class absent, a point anyway
    pp = generate_pseudo_prompts(m, smooth=1, num_regions=2, region_min=0.0)
    truth = torch.zeros(2, 6, 6, dtype=torch.long)
    truth[0, 0:2, 0:2] = 1
    truth[0, 0:2, 0:3] = torch.tensor([1, 1, 1])  # object 1 is 6 cells: IoU 4 / 6
    truth[0, 5, 0] = 2  # object 2, never hit
    s = ppg_statistics(pp, truth)
    assert s["foreground_pixels"] == 4.0 and s["valid_regions"] == 2.0 and s["pixels_per_region"] == 2.0
    assert s["iou"] == pytest.approx(4 / 7)  # foreground 4, truth 7 (6 + 1)
    assert s["points_inside"] == 1.0 and s["objects_hit"] == 0.5 and s["absent_maps_with_points"] == 1.0
    pos = point_positions(pp)
    assert all(int(p) // 6 < 2 and int(p) % 6 < 2 for p in pos[0][pp.valid[0]])


def test_grid_truth_splits_objects():
    labels = np.zeros((12, 12), np.int64)
    labels[0:4, 0:4] = 2
    labels[8:12, 8:12] = 2
    labels[0:4, 8:12] = 1
    ids = grid_truth(labels, 3, (3, 3))
    assert ids.shape == (3, 3, 3)
    assert ids[2].max() == 2 and ids[2, 0, 0] != ids[2, 2, 2] and ids[1].max() == 1 and ids[1, 0, 2] == 1
