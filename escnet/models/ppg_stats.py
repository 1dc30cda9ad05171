"""What the pseudo prompt generator did, in numbers: statistics of PPG records (escnet.models.ppg),
and correlation maps with objects of known extent to measure it on (docs/ppg.md).

    logits, records = model(images, text, return_ppg=True)   # one PseudoPrompts per ESC block
    ppg_statistics(records[0], truth)                          # truth: (B, T, g, g) object ids, 0 = none

`clip_like_maps` draws maps the way CLIP's cosine maps look at ViT grid resolution: a class's objects
(ellipses of 3-12 % of the image) a few hundredths of cosine above a background of 0.15-0.20, plus
smooth and pixel noise; `grid_truth` turns a label image into the object ids of each class on the grid.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from escnet.models.ppg import PseudoPrompts


def point_positions(pp: PseudoPrompts) -> Tensor:
    """(..., K) flat grid position (y * w + x) of each region's point: its highest-scoring pixel
    (as generate_pseudo_prompts chooses it); meaningful where pp.valid."""
    score = pp.score.flatten(-2)  # (..., L)
    masks = pp.masks.flatten(-2) > 0  # (..., K, L)
    return torch.where(masks, score.unsqueeze(-2), -math.inf).argmax(-1)


@torch.no_grad()
def ppg_statistics(pp: PseudoPrompts, truth: Tensor | None = None) -> dict[str, float]:
    """Statistics of a PPG record (fields (..., h, w) with any leading axes, e.g. (B, T)).

    Always: foreground_pixels (mean per map), valid_regions (mean per map), pixels_per_region (mean over
    the non-empty regions), maps. With truth (..., h, w) integer object ids of each map's class on the
    grid (0 = not the class; each object its own id > 0, e.g. `grid_truth`): over the maps whose class is
    present: iou (mean IoU of the foreground with the class's true region), points_inside (share of
    the points that lie on the class), objects_hit (share of the objects with a point on them); over
    the maps whose class is absent: absent_maps_with_points (share that got any point). NaN where a
    statistic has no maps."""
    h, w = pp.foreground.shape[-2:]
    fg = pp.foreground.reshape(-1, h * w)  # (N, L)
    valid = pp.valid.reshape(fg.shape[0], -1)
    sizes = pp.masks.flatten(-2).sum(-1).reshape(fg.shape[0], -1)  # (N, K)
    out = {"maps": float(fg.shape[0]), "foreground_pixels": fg.sum(-1).float().mean().item(),
           "valid_regions": valid.sum(-1).float().mean().item(),
           "pixels_per_region": (sizes[valid].float().mean().item() if valid.any() else math.nan)}
    if truth is None:
        return out
    ids = truth.reshape(fg.shape[0], -1).long()  # (N, L)
    if ids.shape != fg.shape:
        raise ValueError(f"ppg_statistics: truth must match the maps' grid, got {tuple(truth.shape)} for "
                         f"foreground {tuple(pp.foreground.shape)}")
    on = ids > 0
    present = on.any(-1)
    inter, union = (fg & on).sum(-1).float(), (fg | on).sum(-1).float()
    pos = point_positions(pp).reshape(fg.shape[0], -1)  # (N, K)
    hit_id = torch.gather(ids, 1, pos)  # (N, K) object id under each point
    points = valid & present[:, None]
    num_obj = int(ids.max()) if ids.numel() else 0
    obj = torch.arange(1, num_obj + 1, device=ids.device)
    exists = (ids[:, :, None] == obj).any(1)  # (N, M)
    hit = ((hit_id[:, :, None] == obj) & valid[:, :, None]).any(1)  # (N, M)

    def mean(x: Tensor) -> float:
        return x.float().mean().item() if x.numel() else math.nan

    out.update(iou=mean(inter[present] / union[present]), points_inside=mean((hit_id > 0)[points]),
               objects_hit=mean(hit[exists]), absent_maps_with_points=mean(valid[~present].any(-1)),
               maps_present=float(present.sum()), objects=float(exists.sum()))
    return out


def grid_truth(labels: np.ndarray | Tensor, classes: int, grid: tuple[int, int], share: float = 0.5) -> Tensor:
    """labels (H, W) class ids -> (classes, gh, gw) long object ids per class on the grid: a cell is
    the class's where it covers more than `share` of the cell; each 4-connected component of those
    cells is one object (ids 1, 2, ... per class)."""
    from scipy import ndimage

    lab = torch.as_tensor(np.asarray(labels)).long()
    onehot = F.one_hot(lab, classes).permute(2, 0, 1).float()[None]  # (1, C, H, W)
    cover = F.adaptive_avg_pool2d(onehot, grid)[0] > share  # (C, gh, gw)
    out = np.zeros(cover.shape, np.int64)
    for c in range(classes):  # a tool for statistics, not the model: scipy's labelling per class
        out[c] = ndimage.label(cover[c].numpy())[0]
    return torch.from_numpy(out)


def clip_like_maps(generator: torch.Generator, images: int, present: int = 3, absent: int = 3,
                   grid: tuple[int, int] = (24, 24), objects: tuple[int, int] = (1, 3),
                   area: tuple[float, float] = (0.03, 0.12), contrast: tuple[float, float] = (0.04, 0.08),
                   background: tuple[float, float] = (0.15, 0.20), smooth_noise: float = 0.012,
                   pixel_noise: float = 0.012) -> tuple[Tensor, Tensor]:
    """Correlation maps with objects of known extent, (images, present + absent, gh, gw), and their
    object ids (same shape, long, 0 = background).

    Per map: a background level ~ U(background); smooth noise (a 6 x 6 Gaussian field, bicubic to the
    grid, std smooth_noise) and pixel noise (std pixel_noise); the first `present` classes of each
    image hold U{objects} objects each: ellipses of U(area) of the image at a random angle, raised
    by U(contrast) (edges softened by a 3 x 3 blur; the truth is the ellipse). The other `absent`
    classes hold noise only."""
    gh, gw = grid
    t = present + absent
    n = images * t

    def u(shape, lo_hi):
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(shape, generator=generator)

    maps = u((n, 1, 1), background).expand(n, gh, gw).clone()
    coarse = torch.randn(n, 1, 6, 6, generator=generator)
    field = F.interpolate(coarse, size=grid, mode="bicubic", align_corners=False)[:, 0]
    maps += field / field.std((-2, -1), keepdim=True).clamp(min=1e-6) * smooth_noise
    maps += torch.randn(n, gh, gw, generator=generator) * pixel_noise
    ids = torch.zeros(images, t, gh, gw, dtype=torch.long)
    ys = (torch.arange(gh).float() + 0.5)[:, None]
    xs = (torch.arange(gw).float() + 0.5)[None, :]
    count = torch.randint(objects[0], objects[1] + 1, (images, present), generator=generator)
    raised = torch.zeros(images, t, gh, gw)
    for i in range(images):  # drawing the test data, not the model: loops are fine here
        for c in range(present):
            for j in range(int(count[i, c])):
                frac, ratio, angle = float(u((), area)), float(u((), (0.5, 1.0))), float(u((), (0.0, math.pi)))
                a = math.sqrt(frac * gh * gw / (math.pi * ratio))  # semi-axes a, a * ratio: area frac * gh * gw
                b = a * ratio
                cy, cx = float(u((), (a * 0.7, gh - a * 0.7))), float(u((), (a * 0.7, gw - a * 0.7)))
                dy, dx = ys - cy, xs - cx
                r1 = (dx * math.cos(angle) + dy * math.sin(angle)) / a
                r2 = (-dx * math.sin(angle) + dy * math.cos(angle)) / b
                inside = (r1 ** 2 + r2 ** 2) <= 1.0
                ids[i, c][inside & (ids[i, c] == 0)] = j + 1
                raised[i, c] = torch.maximum(raised[i, c], inside.float() * float(u((), contrast)))
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 16
    soft = F.conv2d(F.pad(raised.reshape(n, 1, gh, gw), (1, 1, 1, 1), mode="replicate"), kernel[None, None])[:, 0]
    maps = maps + soft
    return maps.view(images, t, gh, gw), ids
