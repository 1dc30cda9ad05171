"""PPG's geometry on NON-square maps (every map in tests/models/test_ppg.py is square, so swapping
height and width anywhere would pass them). The maps have one clear region, so every threshold
rule (relative or uniform) picks the same two pixels: these checks do not depend on the rule. The maps are
read as they are (smooth=1, no region rule): a 3 x 3 average would spread the two pixels."""
from __future__ import annotations

import pytest
import torch

from escnet.models.ppg import generate_pseudo_prompts

CANVAS = 384


def _map(h, w, first, second):
    corr = torch.full((1, h, w), -1.0)
    corr[0, first[0], first[1]] = 1.0
    corr[0, second[0], second[1]] = 0.999  # a little lower: no tie for the region's argmax
    return corr


@pytest.mark.parametrize("threshold", ["relative", "uniform"])
@pytest.mark.parametrize("h, w", [(4, 7), (7, 4)])
def test_points_masks_boxes_on_a_non_square_map(threshold, h, w):
    first, second = (1, 2), (2, 3)
    pp = generate_pseudo_prompts(_map(h, w, first, second), num_regions=1, threshold=threshold, canvas_size=CANVAS,
                                 smooth=1, region_min=0.0)
    expected_fg = torch.zeros(h, w, dtype=torch.bool)
    expected_fg[first], expected_fg[second] = True, True
    assert torch.equal(pp.foreground[0], expected_fg)
    assert torch.equal(pp.masks[0, 0].bool(), expected_fg) and bool(pp.valid[0, 0]) and int(pp.labels[0, 0]) == 1
    sx, sy = CANVAS / w, CANVAS / h  # canvas pixels per grid cell along x and y
    # the point: the centre of the most probable cell, (x, y), SAM's -0.5 convention
    assert pp.points[0, 0].tolist() == pytest.approx([(first[1] + 0.5) * sx - 0.5, (first[0] + 0.5) * sy - 0.5])
    # the box: the smallest box around the region's cells (inclusive corner pixels)
    assert pp.boxes[0, 0].tolist() == pytest.approx([2 * sx, 1 * sy, 4 * sx - 1, 3 * sy - 1])


def test_transposing_a_map_transposes_the_prompts():
    corr = _map(4, 7, (1, 2), (2, 3))
    a = generate_pseudo_prompts(corr, num_regions=1, canvas_size=CANVAS)
    b = generate_pseudo_prompts(corr.transpose(1, 2).contiguous(), num_regions=1, canvas_size=CANVAS)
    assert torch.equal(b.foreground, a.foreground.transpose(1, 2))
    assert torch.equal(b.masks, a.masks.transpose(2, 3))
    torch.testing.assert_close(b.points, a.points.flip(-1))
    torch.testing.assert_close(b.boxes, a.boxes[..., [1, 0, 3, 2]])
