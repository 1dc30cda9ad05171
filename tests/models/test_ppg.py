import pytest
import torch

from escnet.models.ppg import generate_pseudo_prompts


def _blob_maps():
    """Three 24x24 maps: two separated blobs, one blob, and a flat map (no evidence)."""
    m = torch.full((3, 24, 24), -0.1)
    m[0, 2:6, 3:8] = 0.3
    m[0, 15:20, 15:22] = 0.3
    m[1, 10:14, 8:12] = 0.25
    m[2] = 0.0
    return m


def _cell(points, canvas=384, grid=24):
    """Canvas points back to (x, y) grid cells."""
    return ((points + 0.5) / (canvas / grid) - 0.5).round().long()


def test_points_land_in_blobs_and_masks_cover_them():
    m = _blob_maps()
    pp = generate_pseudo_prompts(m[:2], num_regions=5)
    blob = m[:2] > 0.2
    for n in range(2):
        assert pp.valid[n].all()
        cells = _cell(pp.points[n])
        assert all(blob[n, y, x] for x, y in cells.tolist()), "every point must lie inside a blob"
        union = pp.masks[n].sum(0) > 0
        assert torch.equal(union, blob[n]), "region masks together must cover exactly the blob pixels"
        assert (pp.masks[n].sum(0) <= 1).all(), "regions do not overlap"
    # Both blobs of map 0 get at least one point each (farthest-point seeding separates them).
    ys = _cell(pp.points[0])[:, 1]
    assert (ys < 10).any() and (ys > 10).any()


def test_flat_map_has_no_foreground_under_uniform_threshold():
    pp = generate_pseudo_prompts(_blob_maps(), num_regions=5, threshold="uniform")
    assert (pp.labels[2] == -1).all() and not pp.valid[2].any()
    assert pp.masks[2].sum() == 0
    assert (pp.labels[:2] == 1).any()


def test_fewer_foreground_pixels_than_regions_gives_not_a_point():
    m = torch.full((1, 8, 8), -1.0)
    m[0, 3, 3] = 1.0
    m[0, 6, 1] = 1.0
    pp = generate_pseudo_prompts(m, num_regions=5, canvas_size=64)
    assert pp.valid[0].sum() == 2
    assert (pp.labels[0] == -1).sum() == 3
    assert sorted(_cell(pp.points[0][pp.valid[0]], 64, 8).tolist()) == [[1, 6], [3, 3]]


def test_batched_equals_one_by_one_and_has_no_grad():
    torch.manual_seed(0)
    m = torch.randn(6, 24, 24, requires_grad=True) * 0.05
    pp = generate_pseudo_prompts(m)
    assert not pp.points.requires_grad
    for i in range(6):
        one = generate_pseudo_prompts(m[i:i + 1])
        assert torch.equal(one.points[0], pp.points[i])
        assert torch.equal(one.masks[0], pp.masks[i])


def test_top_init_and_errors():
    pp = generate_pseudo_prompts(_blob_maps()[:2], init="top")
    assert pp.points.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="threshold"):
        generate_pseudo_prompts(_blob_maps(), threshold="nope")
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        generate_pseudo_prompts(torch.zeros(2, 3, 4, 4))
