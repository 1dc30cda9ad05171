"""Pseudo Prompt Generator (paper Sec. 3.3): correlation maps -> SAM point and mask prompts.

Everything is one batched tensor program over N = B*T maps: softmax, threshold, k-means on the
(y, x) positions of the foreground pixels, per-region argmax point and region mask. There is no
Python loop over classes, regions or pixels, and no gradient (the outputs are discrete).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PseudoPrompts:
    """Prompts for N = B*T maps with K regions each.

    points: (N, K, 2) float (x, y) in canvas pixels (SAM convention: SAM adds 0.5 itself).
    labels: (N, K) long, 1 = point of a non-empty region, -1 = SAM's "not a point".
    masks: (N, K, h, w) float {0, 1} region masks on the token grid.
    valid: (N, K) bool, region is non-empty.
    foreground: (N, h, w) bool, thresholded probability map.
    """

    points: Tensor
    labels: Tensor
    masks: Tensor
    valid: Tensor
    foreground: Tensor


def _farthest_point_init(coords: Tensor, fg: Tensor, prob: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Deterministic seeds: the most probable foreground pixel, then repeatedly the foreground pixel
    farthest from all seeds so far (separates distinct blobs better than the top-k pixels, which
    usually sit next to each other in one blob).

    coords (L, 2), fg (N, L) bool, prob (N, L) -> centres (N, K, 2), seeded (N, K) bool.
    """
    n, L = fg.shape
    neg_inf = torch.finfo(prob.dtype).min
    first = torch.where(fg, prob, torch.full_like(prob, neg_inf)).argmax(-1)  # (N,)
    idx = [first]
    min_d = ((coords[None] - coords[first][:, None]) ** 2).sum(-1)  # (N, L)
    count = fg.sum(-1)  # (N,)
    for _ in range(1, k):  # k is the fixed number of regions (5), not a data-dependent loop
        nxt = torch.where(fg, min_d, torch.full_like(min_d, -1.0)).argmax(-1)
        idx.append(nxt)
        min_d = torch.minimum(min_d, ((coords[None] - coords[nxt][:, None]) ** 2).sum(-1))
    idx = torch.stack(idx, 1)  # (N, K)
    seeded = torch.arange(k, device=fg.device)[None] < count[:, None]
    return coords[idx], seeded


def _topk_init(coords: Tensor, fg: Tensor, prob: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Seeds at the K most probable foreground pixels. Same shapes as `_farthest_point_init`."""
    neg_inf = torch.finfo(prob.dtype).min
    idx = torch.where(fg, prob, torch.full_like(prob, neg_inf)).topk(k, dim=-1).indices
    seeded = torch.arange(k, device=fg.device)[None] < fg.sum(-1, keepdim=True)
    return coords[idx], seeded


@torch.no_grad()
def generate_pseudo_prompts(
    corr: Tensor,
    *,
    num_regions: int = 5,
    tau: float = 100.0,
    threshold: str = "relative",
    alpha: float = 0.5,
    iters: int = 10,
    init: str = "farthest",
    canvas_size: int = 384,
) -> PseudoPrompts:
    """Turn correlation maps into SAM prompts.

    Args:
        corr: (N, h, w) correlation maps (N = B*T, one per image and class).
        num_regions: K = N_o, regions (points and masks) per map.
        tau: softmax temperature multiplier; raw CLIP cosines are flat, so 100 (CLIP's logit scale).
        threshold: "relative" keeps P > alpha * max(P); "uniform" keeps P > 1 / (h*w).
        iters: fixed number of k-means iterations.
        init: "farthest" (most probable pixel, then farthest-point) or "top" (top-K pixels).
        canvas_size: side of the SAM prompt canvas in pixels; points are cell centres on it.
    Returns:
        PseudoPrompts with points (N, K, 2), labels (N, K), masks (N, K, h, w), valid (N, K).
    """
    if corr.dim() != 3:
        raise ValueError(f"generate_pseudo_prompts expects (N, h, w) maps, got shape {tuple(corr.shape)}")
    n, h, w = corr.shape
    k = num_regions
    corr = corr.float()
    prob = torch.softmax(tau * corr.reshape(n, h * w), dim=-1)  # (N, L)
    if threshold == "relative":
        fg = prob > alpha * prob.amax(-1, keepdim=True)
    elif threshold == "uniform":
        fg = prob > 1.0 / (h * w)
    else:
        raise ValueError(f"unknown PPG threshold {threshold!r} (expected 'relative' or 'uniform')")

    ys, xs = torch.meshgrid(torch.arange(h, device=corr.device), torch.arange(w, device=corr.device), indexing="ij")
    coords = torch.stack([ys.reshape(-1), xs.reshape(-1)], -1).float()  # (L, 2) as (y, x)
    if init == "farthest":
        centres, alive = _farthest_point_init(coords, fg, prob, k)
    elif init == "top":
        centres, alive = _topk_init(coords, fg, prob, k)
    else:
        raise ValueError(f"unknown PPG init {init!r} (expected 'farthest' or 'top')")

    ys, xs = coords[:, 0], coords[:, 1]
    fgf = fg.float()

    def nearest(centres: Tensor, alive: Tensor) -> Tensor:
        """(N, K, 2) centres -> (N, L) index of the nearest live centre.

        A running minimum over the K (fixed, 5) centres: each step is one (N, L) tensor op, several
        times faster on CPU than argmin over a short axis of an (N, L, K) tensor.
        """
        best = torch.full((n, ys.numel()), float("inf"), device=corr.device)
        index = torch.zeros(n, ys.numel(), dtype=torch.long, device=corr.device)
        for j in range(k):
            d = (ys[None] - centres[:, j, 0:1]) ** 2 + (xs[None] - centres[:, j, 1:2]) ** 2
            closer = alive[:, j:j + 1] & (d < best)
            best = torch.where(closer, d, best)
            index = torch.where(closer, j, index)
        return index

    for _ in range(iters):  # fixed iteration count (Lloyd's algorithm), batched over all maps
        assign = nearest(centres, alive)
        mass = torch.zeros(n, k, device=corr.device).scatter_add_(1, assign, fgf)  # (N, K)
        sums = torch.stack([torch.zeros(n, k, device=corr.device).scatter_add_(1, assign, fgf * c) for c in (ys, xs)], -1)
        alive = alive & (mass > 0)
        centres = torch.where(alive[..., None], sums / mass.clamp(min=1)[..., None], centres)

    assign = torch.nn.functional.one_hot(nearest(centres, alive), k).bool() & fg[..., None]  # (N, L, K)
    valid = assign.any(1)  # (N, K)

    # Region-filtered probability map (paper Fig. 3 (e)); the point is its argmax within each region.
    region_prob = torch.where(assign, prob[..., None], torch.full_like(prob[..., None], -1.0))
    best = region_prob.argmax(1)  # (N, K) flat position
    cell = canvas_size / torch.tensor([w, h], device=corr.device, dtype=torch.float32)
    xy = torch.stack([best % w, best // w], -1).float()
    points = (xy + 0.5) * cell - 0.5  # SAM adds 0.5 before normalising: lands on the cell centre
    points = torch.where(valid[..., None], points, torch.zeros_like(points))
    labels = torch.where(valid, torch.ones_like(best), torch.full_like(best, -1))
    masks = assign.permute(0, 2, 1).reshape(n, k, h, w).float()
    return PseudoPrompts(points=points, labels=labels, masks=masks, valid=valid, foreground=fg.reshape(n, h, w))
