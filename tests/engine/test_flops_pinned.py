"""The FLOP counter pinned to the published figure it claims to reproduce.

Both papers (CAT-Seg, ESC-Net) quote 2,121.1 GFLOPs for CAT-Seg ViT-L/14 at T = 150 classes and
5 views (the sliding-window protocol). escnet/benchmarks/flops.py's `catseg_reference_gmacs` (CAT-Seg as
its official code runs it, fvcore's conventions) claims 2,108.2 G: -0.6 % from the published number
(README "Forward cost"). These tests hold it to that: the published figure within 1 %, and the
counted value itself to 0.05 G, so any change of the counting rules shows here. The meta device
makes the count exact and machine independent."""
from __future__ import annotations

import pytest

from escnet.benchmarks.flops import catseg_reference_gmacs, count_costs

PUBLISHED_CATSEG_VITL_T150_5VIEWS = 2121.1  # GFLOPs, CAT-Seg (CVPR 2024) Table / ESC-Net Table 4
TOLERANCE = 0.01  # relative, to the published figure


@pytest.mark.slow
def test_catseg_official_count_reproduces_the_published_figure():
    g = catseg_reference_gmacs("vitl14", 150, 5)
    assert abs(g / PUBLISHED_CATSEG_VITL_T150_5VIEWS - 1) < TOLERANCE, g
    assert g == pytest.approx(2108.2, abs=0.05)  # the value the README reports (-0.6 %)


@pytest.mark.slow
def test_escnet_catseg_counts_are_pinned():
    """escnet's own CAT-Seg at the same protocol, both units (README table)."""
    c = count_costs("catseg", "vitl14", 150, 5)
    assert c["paper_gmacs"] == pytest.approx(1760.4, abs=0.05)
    assert c["torch_gflops"] == pytest.approx(3788.4, abs=0.05)


def test_vitb_single_view_counts_are_pinned():
    assert catseg_reference_gmacs("vitb16", 150, 1) == pytest.approx(296.0, abs=0.05)
    c = count_costs("catseg", "vitb16", 150, 1)
    assert c["paper_gmacs"] == pytest.approx(226.4, abs=0.05)
    assert c["torch_gflops"] == pytest.approx(486.4, abs=0.05)
