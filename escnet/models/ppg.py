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
    boxes: (N, K, 4) float (x0, y0, x1, y1) in canvas pixels, the smallest box around each region
        mask (inclusive corner pixels, as SAM's boxes; SAM adds 0.5 itself); zeros for empty regions.
    valid: (N, K) bool, region is non-empty.
    foreground: (N, h, w) bool, thresholded probability map.
    """

    points: Tensor
    labels: Tensor
    masks: Tensor
    boxes: Tensor
    valid: Tensor
    foreground: Tensor


def _farthest_point_init(pts: Tensor, member: Tensor, prob: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Deterministic seeds: the most probable foreground pixel, then repeatedly the foreground pixel
    farthest from all seeds so far (separates distinct blobs better than the top-k pixels, which
    usually sit next to each other in one blob).

    pts (N, F, 2) packed foreground positions, member (N, F) bool (False = padding), prob (N, F)
    -> centres (N, K, 2), seeded (N, K) bool.
    """
    rows = torch.arange(pts.shape[0], device=pts.device)
    first = prob.argmax(-1)  # padding has prob -1
    idx = [first]
    min_d = ((pts - pts[rows, first][:, None]) ** 2).sum(-1)  # (N, F)
    for _ in range(1, k):  # k is the fixed number of regions (5), not a data-dependent loop
        nxt = torch.where(member, min_d, -1.0).argmax(-1)
        idx.append(nxt)
        min_d = torch.minimum(min_d, ((pts - pts[rows, nxt][:, None]) ** 2).sum(-1))
    idx = torch.stack(idx, 1)  # (N, K)
    seeded = torch.arange(k, device=pts.device)[None] < member.sum(-1, keepdim=True)
    return pts[rows[:, None], idx], seeded


def _topk_init(pts: Tensor, member: Tensor, prob: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Seeds at the K most probable foreground pixels. Same shapes as `_farthest_point_init`."""
    rows = torch.arange(pts.shape[0], device=pts.device)
    idx = prob.topk(min(k, prob.shape[1]), dim=-1).indices
    if idx.shape[1] < k:  # fewer candidate pixels than regions: the extra seeds are unused
        idx = torch.cat([idx, idx[:, :1].expand(-1, k - idx.shape[1])], 1)
    seeded = torch.arange(k, device=pts.device)[None] < member.sum(-1, keepdim=True)
    return pts[rows[:, None], idx], seeded


def _nearest(pts: Tensor, centres: Tensor, alive: Tensor) -> Tensor:
    """pts (N, F, 2), centres (N, K, 2), alive (N, K) -> (N, F) index of the nearest live centre.

    |p - m|^2 = |p|^2 - 2 p.m + |m|^2; |p|^2 does not change the argmin, so one batched matmul.
    """
    d = torch.baddbmm((centres * centres).sum(-1)[:, None, :], pts, centres.transpose(1, 2), alpha=-2.0)
    return d.masked_fill_(~alive[:, None], float("inf")).min(-1).indices


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

    # Pack each map's foreground pixels to the front of an (N, F) table, F = the largest foreground:
    # k-means then costs O(F), not O(h*w), and foregrounds are usually small.
    f = h * w if corr.is_meta else max(int(fg.sum(-1).max()), 1)  # meta: shape-only FLOP counting
    order = torch.argsort(fg.to(torch.uint8), dim=-1, descending=True, stable=True)[:, :f]  # (N, F)
    member = torch.gather(fg, 1, order)  # (N, F): False = padding
    pts = coords[order]  # (N, F, 2)
    pprob = torch.where(member, torch.gather(prob, 1, order), -1.0)
    if init == "farthest":
        centres, alive = _farthest_point_init(pts, member, pprob, k)
    elif init == "top":
        centres, alive = _topk_init(pts, member, pprob, k)
    else:
        raise ValueError(f"unknown PPG init {init!r} (expected 'farthest' or 'top')")

    weight = member.float()
    for _ in range(iters):  # fixed iteration count (Lloyd's algorithm), batched over all maps
        assign = _nearest(pts, centres, alive)
        mass = torch.zeros(n, k, device=corr.device).scatter_add_(1, assign, weight)  # (N, K)
        sums = torch.zeros(n, k, 2, device=corr.device).scatter_add_(
            1, assign[..., None].expand(-1, -1, 2), pts * weight[..., None])
        alive = alive & (mass > 0)
        centres = torch.where(alive[..., None], sums / mass.clamp(min=1)[..., None], centres)

    onehot = torch.nn.functional.one_hot(_nearest(pts, centres, alive), k).bool() & member[..., None]  # (N, F, K)
    valid = onehot.any(1)  # (N, K)

    # Region-filtered probability map (paper Fig. 3 (e)); the point is its argmax within each region.
    best = torch.where(onehot, pprob[..., None], -1.0).argmax(1)  # (N, K) position in the packed table
    yx = pts[torch.arange(n, device=corr.device)[:, None], best]  # (N, K, 2)
    cell = canvas_size / torch.tensor([w, h], device=corr.device, dtype=torch.float32)
    points = (yx.flip(-1) + 0.5) * cell - 0.5  # (x, y); SAM adds 0.5 before normalising: the cell centre
    points = torch.where(valid[..., None], points, torch.zeros_like(points))
    labels = torch.where(valid, 1, -1)
    masks = torch.zeros(n, h * w, k, dtype=torch.bool, device=corr.device).scatter_(
        1, order[..., None].expand(-1, -1, k), onehot)
    masks = masks.permute(0, 2, 1).reshape(n, k, h, w)
    return PseudoPrompts(points=points, labels=labels, masks=masks.float(), boxes=_boxes(masks, canvas_size),
                         valid=valid, foreground=fg.reshape(n, h, w))


def _boxes(masks: Tensor, canvas_size: int) -> Tensor:
    """masks (N, K, h, w) bool -> (N, K, 4) smallest boxes (x0, y0, x1, y1) in canvas pixels; 0 if empty."""
    h, w = masks.shape[-2:]

    def extent(occupied: Tensor, size: int) -> tuple[Tensor, Tensor]:  # (N, K, size) -> first, last index
        first = occupied.to(torch.uint8).argmax(-1)
        last = size - 1 - occupied.flip(-1).to(torch.uint8).argmax(-1)
        return first, last

    y0, y1 = extent(masks.any(-1), h)
    x0, x1 = extent(masks.any(-2), w)
    sy, sx = canvas_size / h, canvas_size / w
    boxes = torch.stack([x0 * sx, y0 * sy, (x1 + 1) * sx - 1, (y1 + 1) * sy - 1], -1).float()
    return torch.where(masks.flatten(2).any(-1)[..., None], boxes, torch.zeros_like(boxes))
