"""PPG's default rule piece by piece, each against a reference written out here (docs/ppg.md): the
range threshold at an exact tie and under an offset, the 3 x 3 average at the edges, the region_min
rule (which region it keeps, on an offset map), the farthest-point seeding (iters=0: the regions are
the seeds' Voronoi cells), the defaults agreeing everywhere, and the statistics' helpers
(ppg_stats) on hand cases and non-square grids."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from escnet.models.escnet import ESCNetConfig
from escnet.models.ppg import DEFAULT_ALPHA, PseudoPromptGenerator, generate_pseudo_prompts, smooth_maps
from escnet.models.ppg_stats import clip_like_maps, grid_truth, ppg_statistics


def test_defaults_agree_and_are_the_documented_ones():
    """docs/ppg.md: range 0.65 on a 3 x 3 average, region_min 0.68, farthest seeding, in the function,
    the module and ESCNetConfig alike."""
    sig = {k: p.default for k, p in inspect.signature(generate_pseudo_prompts).parameters.items()
           if p.default is not inspect.Parameter.empty}
    module = PseudoPromptGenerator().options
    cfg = PseudoPromptGenerator.from_config(ESCNetConfig()).options
    documented = {"threshold": "range", "alpha": None, "smooth": 3, "region_min": 0.68, "init": "farthest",
                  "min_contrast": 0.0, "iters": 10, "tau": 100.0}
    for key, value in documented.items():
        assert sig[key] == value and module[key] == value and cfg[key] == value, key
    assert DEFAULT_ALPHA["range"] == 0.65


def test_range_threshold_is_strict_at_a_tie_and_offset_free():
    m = torch.tensor([[[0.0, 0.65, 1.0, 0.3]]])  # lo + 0.65 (hi - lo) = 0.65 exactly (float32)
    pp = generate_pseudo_prompts(m, smooth=1, region_min=0.0, num_regions=1)
    assert pp.foreground[0, 0].tolist() == [False, False, True, False]
    gen = torch.Generator().manual_seed(5)
    maps = 0.03 * torch.randn(4, 9, 13, generator=gen, dtype=torch.float64)
    maps[:, 2:5, 3:7] += 0.05
    base = generate_pseudo_prompts(maps.float(), smooth=1, region_min=0.0)
    v = maps.flatten(1)
    lo, hi = v.min(1, keepdim=True).values, v.max(1, keepdim=True).values
    assert torch.equal(base.foreground.flatten(1), v > lo + 0.65 * (hi - lo))
    for scale, offset in ((1.0, 5.0), (3.0, -2.0)):  # the rule reads the map's own range
        moved = generate_pseudo_prompts((maps * scale + offset).float(), smooth=1, region_min=0.0)
        assert torch.equal(moved.foreground, base.foreground), (scale, offset)


def _mean_inside(m: np.ndarray, k: int) -> np.ndarray:
    h, w = m.shape
    r = k // 2
    return np.array([[m[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1].mean() for x in range(w)] for y in range(h)])


@pytest.mark.parametrize("k", [3, 5])
def test_smoothing_is_the_mean_of_the_cells_inside(k):
    gen = torch.Generator().manual_seed(6)
    maps = torch.rand(2, 7, 10, generator=gen, dtype=torch.float64) + 1.0  # far from 0: zero padding would show
    got = smooth_maps(maps, k)
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), _mean_inside(maps[i].numpy(), k), atol=1e-12)
    assert torch.equal(smooth_maps(maps, 1), maps)
    # the default reads the 3 x 3 average of the map (pp.map), not the map
    pp = generate_pseudo_prompts(maps.float())
    np.testing.assert_allclose(pp.map[0].numpy(), _mean_inside(maps[0].numpy(), 3), atol=1e-6)


def test_region_min_keeps_the_strong_region_on_an_offset_map():
    two = torch.full((1, 12, 12), 5.0)  # an offset: the rule is min + region_min (max - min), not region_min max
    two[0, 1:4, 1:4] = 6.0
    two[0, 8:11, 8:11] = 5.5  # above range 0.4, its peak below region_min 0.7
    both = generate_pseudo_prompts(two, alpha=0.4, smooth=1, region_min=0.0, num_regions=2)
    one = generate_pseudo_prompts(two, alpha=0.4, smooth=1, region_min=0.7, num_regions=2)
    assert both.valid.sum() == 2 and one.valid.sum() == 1
    kept = one.masks[0][one.valid[0]][0]
    assert kept[1:4, 1:4].all() and kept.sum() == 9  # the strong blob, not the weak one
    assert (one.regions[0, 8:11, 8:11] == -1).all() and (one.regions[0, 1:4, 1:4] >= 0).all()
    x, y = one.points[0][one.valid[0]][0].tolist()
    assert 1 <= (y + 0.5) / 32 - 0.5 <= 3 and 1 <= (x + 0.5) / 32 - 0.5 <= 3  # its point on the strong blob


def _farthest_seeds(score: np.ndarray, fg: np.ndarray, k: int) -> list[int]:
    """The seeding written out: the best foreground pixel, then the foreground pixel whose squared
    distance to its nearest seed is largest, ties to the higher score (score scaled to [0, 1/2] over the
    foreground)."""
    h, w = score.shape
    pos = [(i // w, i % w) for i in range(h * w)]
    cand = [i for i in range(h * w) if fg.flat[i]]
    vals = score.flat[cand]
    lo, hi = vals.min(), vals.max()
    tie = {i: (score.flat[i] - lo) / max(hi - lo, 1e-30) * 0.5 for i in cand}
    seeds = [max(cand, key=lambda i: (score.flat[i], -i))]
    while len(seeds) < k:
        def far(i):
            return min((pos[i][0] - pos[s][0]) ** 2 + (pos[i][1] - pos[s][1]) ** 2 for s in seeds) + tie[i]
        seeds.append(max(cand, key=lambda i: (far(i), -i)))
    return seeds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_farthest_seeding_and_nearest_seed_regions(seed):
    """iters=0: each region is the Voronoi cell of its seed on the foreground; the seeds are the farthest
    points (the first the best pixel, ties broken by the map's value)."""
    gen = torch.Generator().manual_seed(seed)
    h, w, k = 9, 12, 4
    maps = torch.rand(3, h, w, generator=gen)
    pp = generate_pseudo_prompts(maps, smooth=1, region_min=0.0, alpha=0.3, num_regions=k, iters=0)
    for n in range(3):
        score, fg = pp.score[n].double().numpy(), pp.foreground[n].numpy()
        seeds = _farthest_seeds(score, fg, k)
        sy, sx = np.array(seeds) // w, np.array(seeds) % w
        ys, xs = np.mgrid[0:h, 0:w]
        d = (ys[..., None] - sy) ** 2 + (xs[..., None] - sx) ** 2  # (h, w, k)
        want = np.where(fg, d.argmin(-1), -1)
        np.testing.assert_array_equal(pp.regions[n].numpy(), want, err_msg=f"map {n}")
    # the first seed is the best foreground pixel: with one region, the point is the map's argmax
    one = generate_pseudo_prompts(maps, smooth=1, region_min=0.0, num_regions=1, iters=0)
    best = maps.flatten(1).argmax(1)
    x, y = one.points[:, 0].unbind(-1)
    cells = ((y + 0.5) / (384 / h) - 0.5).round().long() * w + ((x + 0.5) / (384 / w) - 0.5).round().long()
    assert torch.equal(cells, best)


def test_statistics_count_only_valid_points():
    m = torch.zeros(1, 6, 6)
    m[0, 3, 3] = 1.0  # one foreground pixel, two regions: the second is empty (its point means nothing)
    pp = generate_pseudo_prompts(m, smooth=1, num_regions=2, region_min=0.0)
    assert pp.valid[0].tolist() == [True, False]
    truth = torch.zeros(1, 6, 6, dtype=torch.long)
    truth[0, 0, 0] = 1  # an object at position 0, where an empty region's argmax lands
    truth[0, 3, 3] = 2
    s = ppg_statistics(pp, truth)
    assert s["objects_hit"] == 0.5 and s["points_inside"] == 1.0


@pytest.mark.parametrize("grid", [(8, 30), (30, 8)])
def test_generated_maps_hold_their_objects_on_non_square_grids(grid):
    maps, ids = clip_like_maps(torch.Generator().manual_seed(11), 20, grid=grid)
    assert maps.shape == (20, 6, *grid) and ids.shape == (20, 6, *grid)
    present = ids[:, :3].flatten(2)
    assert (present > 0).any(-1).all(), "every present class has an object on the grid"
    assert (ids[:, 3:] == 0).all()
    area = (present > 0).float().sum(-1) / (grid[0] * grid[1])
    assert float(area.mean()) > 0.04  # 1-3 objects of 3-12 % each (overlaps and edges cut some)
    raised = torch.where(ids[:, :3] > 0, maps[:, :3], torch.nan).nanmean((-2, -1))
    background = torch.where(ids[:, :3] == 0, maps[:, :3], torch.nan).nanmean((-2, -1))
    assert (raised > background).float().mean() > 0.9


def test_grid_truth_needs_more_than_the_share():
    labels = np.zeros((8, 8), np.int64)
    labels[0:4, 0:1] = 1  # a quarter of cell (0, 0) of a 2 x 2 grid
    labels[4:8, 4:7] = 1  # three quarters of cell (1, 1)
    ids = grid_truth(labels, 2, (2, 2))
    assert ids[1].tolist() == [[0, 0], [0, 1]]
    assert ids[0].tolist() == [[1, 1], [1, 0]]
