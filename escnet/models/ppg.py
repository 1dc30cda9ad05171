"""Pseudo Prompt Generator (paper Sec. 3.3, Fig. 3): correlation maps -> SAM point and mask prompts.

Fig. 3: (a) a class's correlation map, (b) its probability map, (c) a binary mask that covers the
class's objects, (d) k-means on the mask's pixel positions splits it into N_o regions, (e) the
probability map filtered by the regions; each region gives a point (its most probable pixel) and a mask.

Everything is one batched tensor program over N = B*T maps with no Python loop over classes, regions
or pixels, and no gradient (the outputs are discrete). Every output shape depends only on the input
shape (k-means runs over all h*w positions, weighted by the foreground; no table sized by the data),
so the generator traces and exports.

The binary mask (c) is a threshold rule (`threshold`):

- "range" (default): map > min + alpha * (max - min) over the map's own range (alpha 0.65);
- "otsu": Otsu's threshold of a fixed 64-bin histogram over the map's own range;
- "quantile": the top (1 - alpha) share of the pixels (alpha 0.9);
- "class_softmax": the per-pixel softmax over the classes of an image, P(n | pixel) > alpha (0.5),
  with temperature tau (needs every class of the image: `class_lse` or `num_classes`);
- "softmax_peak": P > alpha * max P with P = softmax(tau * map) over positions: escnet's rule before
  the revision (saved configs name it "relative"). It is exactly map > max map - ln(1/alpha) / tau,
  1-3 pixels of a CLIP map at tau = 100 (docs/ppg.md);
- "softmax_uniform": P > 1 / (h*w) (saved configs: "uniform").

The first three are invariant to the map's scale and offset. Before the threshold the map may be
smoothed (`smooth`: a k x k average, edges averaged over the cells inside), and a map whose contrast
(max - median of the smoothed map) is below `min_contrast` (map units) holds only noise: no
foreground, no points, no mask. After k-means, a region whose point lies below min + region_min *
(max - min) of the map holds only noise: no point, no mask (scale-free). docs/ppg.md has the
measurements behind the defaults (range 0.65 on a 3 x 3 average, region_min 0.68).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

THRESHOLDS = ("range", "otsu", "quantile", "class_softmax", "softmax_peak", "softmax_uniform")
# names the two rules had before the revision (saved configs): the same rules
LEGACY_THRESHOLDS = {"relative": "softmax_peak", "uniform": "softmax_uniform"}
# alpha of each rule when none is given (unused by otsu and softmax_uniform)
DEFAULT_ALPHA = {"range": 0.65, "otsu": 0.0, "quantile": 0.9, "class_softmax": 0.5, "softmax_peak": 0.5,
                 "softmax_uniform": 0.0}
# farthest: most probable pixel, then farthest-point seeds, ties broken by the map's value (so a
# transposed map gets transposed seeds); farthest_raster: ties broken by raster order (escnet's seeding
# before the revision); top: the K most probable pixels
INITS = ("farthest", "farthest_raster", "top")
OTSU_BINS = 64


@dataclass
class PseudoPrompts:
    """Prompts for N = B*T maps with K regions each, and what they were made from (Fig. 3).

    points: (N, K, 2) float (x, y) in canvas pixels (SAM convention: SAM adds 0.5 itself).
    labels: (N, K) long, 1 = point of a non-empty region, -1 = SAM's "not a point".
    masks: (N, K, h, w) float {0, 1} region masks on the token grid (d).
    boxes: (N, K, 4) float (x0, y0, x1, y1) in canvas pixels, the smallest box around each region
        mask (inclusive corner pixels, as SAM's boxes; SAM adds 0.5 itself); zeros for empty regions.
    valid: (N, K) bool, region is non-empty.
    foreground: (N, h, w) bool, the binary mask (c).
    map: (N, h, w) float, the map the threshold read (after smoothing).
    score: (N, h, w) float, the probability map (b) (the map itself for the scale-free rules): a
        region's point is its highest-scoring pixel, (e) = score where a region is.
    regions: (N, h, w) long, the region of each foreground pixel (d), -1 off the foreground.
    mask_prompt: (N, h, w) the ONE mask a SAM block embeds for each prompt set, in its units
        (`mask_prompt`); None until a SAM block sets it (or with sum / mean, which embed K masks).
    """

    points: Tensor
    labels: Tensor
    masks: Tensor
    boxes: Tensor
    valid: Tensor
    foreground: Tensor
    map: Tensor
    score: Tensor
    regions: Tensor
    mask_prompt: Tensor | None = None
    source: Tensor | None = None  # (N, h, w) the map given to PPG (before smoothing), set by a SAM block's record

    def reshape(self, *lead: int) -> PseudoPrompts:
        """Split the N axis into `lead` (e.g. (B, T)); every field keeps its trailing axes."""
        return replace(self, **{f.name: None if (v := getattr(self, f.name)) is None else v.reshape(*lead, *v.shape[1:])
                                for f in fields(self)})

    @staticmethod
    def cat(parts: list[PseudoPrompts], dim: int) -> PseudoPrompts:
        """Concatenate records (e.g. class chunks of (B, T', ...) records along dim 1)."""
        out = {}
        for f in fields(PseudoPrompts):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = None if any(v is None for v in vals) else torch.cat(vals, dim)
        return PseudoPrompts(**out)


def resolve_threshold(threshold: str) -> str:
    """A rule name, the old names mapped to theirs; ValueError naming the choices otherwise."""
    name = LEGACY_THRESHOLDS.get(threshold, threshold)
    if name not in THRESHOLDS:
        raise ValueError(f"unknown PPG threshold {threshold!r}; choose one of {', '.join(THRESHOLDS)}")
    return name


def smooth_maps(maps: Tensor, kernel: int) -> Tensor:
    """(N, h, w) -> (N, h, w): a kernel x kernel average (stride 1; at the edges over the cells inside).
    kernel 1: the maps unchanged."""
    if kernel <= 1:
        return maps
    return F.avg_pool2d(maps[:, None], kernel, stride=1, padding=kernel // 2, count_include_pad=False)[:, 0]


def class_logsumexp(maps: Tensor, tau: float) -> Tensor:
    """maps (B, T, h, w) -> logsumexp over the classes of tau * map (B, h, w), the per-pixel softmax's
    normaliser ("class_softmax"); chunks of classes combine with another logsumexp."""
    return torch.logsumexp(tau * maps.float(), dim=1)


def _otsu(m: Tensor, lo: Tensor, hi: Tensor, bins: int = OTSU_BINS) -> Tensor:
    """Otsu's threshold of each row of m (N, L) from a `bins`-bin histogram over [lo, hi] (N, 1) ->
    (N, 1): the bin edge that maximises the between-class variance (the first of equal maxima)."""
    span = (hi - lo).clamp(min=torch.finfo(m.dtype).tiny)
    edges = lo + span * torch.arange(1, bins, device=m.device, dtype=m.dtype) / bins  # (N, bins - 1)
    below = m[:, :, None] <= edges[:, None, :]  # (N, L, bins - 1): shape fixed by L and bins
    n0 = below.sum(1).to(m.dtype)  # pixels at or below each edge
    s0 = (below * m[:, :, None]).sum(1)
    total, length = m.sum(1, keepdim=True), m.shape[1]
    n1 = length - n0
    between = (s0 * n1 - (total - s0) * n0) ** 2 / (n0 * n1).clamp(min=1)  # prop. to w0 w1 (mu0 - mu1)^2
    between = torch.where((n0 > 0) & (n1 > 0), between, -1.0)
    return torch.gather(edges, 1, between.argmax(1, keepdim=True))


def _farthest_init(coords: Tensor, fg: Tensor, score: Tensor, k: int, by_score: bool) -> Tensor:
    """Deterministic seeds over all L positions: the most probable foreground pixel, then repeatedly
    the foreground pixel farthest from all seeds so far (separates distinct blobs better than the
    top-k pixels, which usually sit next to each other in one blob). Squared distances between grid
    cells are integers, so ties are common: by_score breaks them by the score (a value in [0, 1) added
    to the integer distance), else by raster order.

    coords (L, 2), fg (N, L) bool, score (N, L) -> (N, K) seed positions (meaningful where seeded).
    """
    rank = score.masked_fill(~fg, -math.inf)
    idx = [rank.argmax(-1)]
    lo = torch.where(fg, score, math.inf).amin(-1, keepdim=True)
    hi = torch.where(fg, score, -math.inf).amax(-1, keepdim=True)
    tie = ((score - lo) / (hi - lo).clamp(min=torch.finfo(score.dtype).tiny)).clamp(0, 1) * 0.5 if by_score else 0.0
    min_d = ((coords[None] - coords[idx[0]][:, None]) ** 2).sum(-1)  # (N, L)
    for _ in range(1, k):  # k is the fixed number of regions, not a data-dependent loop
        nxt = torch.where(fg, min_d + tie, -1.0).argmax(-1)
        idx.append(nxt)
        min_d = torch.minimum(min_d, ((coords[None] - coords[nxt][:, None]) ** 2).sum(-1))
    return torch.stack(idx, 1)


def _nearest(pts: Tensor, centres: Tensor, alive: Tensor) -> Tensor:
    """pts (L, 2), centres (N, K, 2), alive (N, K) -> (N, L) index of the nearest live centre.

    |p - m|^2 = |p|^2 - 2 p.m + |m|^2; |p|^2 does not change the argmin, so one batched matmul."""
    d = (centres * centres).sum(-1)[:, None, :] - 2.0 * pts[None] @ centres.transpose(1, 2)  # (N, L, K)
    return d.masked_fill(~alive[:, None], math.inf).argmin(-1)


@torch.no_grad()
def generate_pseudo_prompts(
    corr: Tensor,
    *,
    num_regions: int = 5,
    tau: float = 100.0,
    threshold: str = "range",
    alpha: float | None = None,
    smooth: int = 3,
    min_contrast: float = 0.0,
    region_min: float = 0.68,
    iters: int = 10,
    init: str = "farthest",
    canvas_size: int = 384,
    class_lse: Tensor | None = None,
    num_classes: int | None = None,
) -> PseudoPrompts:
    """Turn correlation maps into SAM prompts (module docstring: the rules).

    Args:
        corr: (N, h, w) correlation maps (N = B*T, one per image and class, class-major per image).
        num_regions: K = N_o, regions (points and masks) per map.
        tau: softmax temperature multiplier of the softmax rules (CLIP's logit scale, 100).
        threshold: a rule of THRESHOLDS (or an old name of LEGACY_THRESHOLDS).
        alpha: the rule's parameter; None: DEFAULT_ALPHA of the rule.
        smooth: side of the average filter applied before the threshold (1: none).
        min_contrast: maps whose smoothed max - median is below this get no foreground (0: off).
        region_min: a region whose point (its highest-scoring pixel) lies below min + region_min * (max - min)
            of the map holds only noise: it gets no point and no mask (0: off; scale-free).
        iters: fixed number of k-means iterations.
        init: a seeding of INITS.
        canvas_size: side of the SAM prompt canvas in pixels; points are cell centres on it.
        class_lse: "class_softmax": (N // T, h, w) logsumexp over ALL classes of each image of tau * map
            (`class_logsumexp`; after smoothing when smooth > 1), for maps given in chunks of classes.
        num_classes: "class_softmax" without class_lse: T, the maps are (B*T, h, w) holding every class.
    Returns:
        PseudoPrompts (see there); every shape depends only on corr's shape and num_regions.
    """
    if corr.dim() != 3:
        raise ValueError(f"generate_pseudo_prompts expects (N, h, w) maps, got shape {tuple(corr.shape)}")
    threshold = resolve_threshold(threshold)
    if init not in INITS:
        raise ValueError(f"unknown PPG init {init!r}; choose one of {', '.join(INITS)}")
    if num_regions < 1 or iters < 0 or smooth < 1:
        raise ValueError(f"PPG needs num_regions >= 1, iters >= 0 and smooth >= 1, got {num_regions}, {iters}, {smooth}")
    alpha = DEFAULT_ALPHA[threshold] if alpha is None else float(alpha)
    n, h, w = corr.shape
    length, k, dev = h * w, num_regions, corr.device
    m = smooth_maps(corr.float(), smooth).reshape(n, length)
    score = m
    if threshold == "range":
        lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
        fg = m > lo + alpha * (hi - lo)
    elif threshold == "otsu":
        lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
        fg = (m > _otsu(m, lo, hi)) & (hi > lo)
    elif threshold == "quantile":
        keep = min(max(length - math.ceil(alpha * length), 1), length)  # top (1 - alpha) share, >= 1 pixel
        kth = m.topk(keep, dim=-1).values[:, -1:]
        fg = (m >= kth) & (m > m.amin(-1, keepdim=True))
    elif threshold == "class_softmax":
        if class_lse is None:
            if not num_classes or n % num_classes:
                raise ValueError(f"PPG threshold 'class_softmax' needs class_lse or num_classes dividing N = {n}")
            class_lse = class_logsumexp(m.view(n // num_classes, num_classes, h, w), tau)
        else:
            if class_lse.dim() != 3 or tuple(class_lse.shape[1:]) != (h, w) or not class_lse.shape[0] or n % class_lse.shape[0]:
                raise ValueError(f"PPG class_lse must be (B, {h}, {w}) with B dividing N = {n}, got {tuple(class_lse.shape)}")
            num_classes = n // class_lse.shape[0]
        lse = class_lse.float().reshape(-1, 1, length).expand(-1, num_classes, -1).reshape(n, length)
        score = torch.exp(tau * m - lse)
        fg = score > alpha
    else:  # the softmax over positions
        score = torch.softmax(tau * m, dim=-1)
        if threshold == "softmax_peak":
            fg = score > alpha * score.amax(-1, keepdim=True)
        else:
            fg = score > 1.0 / length
    if min_contrast > 0:
        fg = fg & ((m.amax(-1) - m.median(-1).values) >= min_contrast)[:, None]

    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    coords = torch.stack([ys.reshape(-1), xs.reshape(-1)], -1).float()  # (L, 2) as (y, x)
    count = fg.sum(-1, keepdim=True)  # (N, 1)
    alive = torch.arange(k, device=dev)[None] < count  # (N, K) seeded regions
    if init == "top":
        seeds = score.masked_fill(~fg, -math.inf).topk(min(k, length), dim=-1).indices
        if seeds.shape[1] < k:  # fewer positions than regions: the extra seeds are never alive
            seeds = torch.cat([seeds, seeds[:, :1].expand(-1, k - seeds.shape[1])], 1)
    else:
        seeds = _farthest_init(coords, fg, score, k, by_score=init == "farthest")
    centres = coords[seeds]  # (N, K, 2)
    weight = fg.float()
    for _ in range(iters):  # fixed iteration count (Lloyd's algorithm), batched over all maps
        assign = _nearest(coords, centres, alive)  # (N, L)
        mass = torch.zeros(n, k, device=dev).scatter_add_(1, assign, weight)  # (N, K)
        sums = torch.zeros(n, k, 2, device=dev).scatter_add_(
            1, assign[..., None].expand(-1, -1, 2), coords[None] * weight[..., None])
        alive = alive & (mass > 0)
        centres = torch.where(alive[..., None], sums / mass.clamp(min=1)[..., None], centres)

    regions = torch.where(fg, _nearest(coords, centres, alive), -1)  # (N, L)
    onehot = regions[:, None, :] == torch.arange(k, device=dev)[None, :, None]  # (N, K, L)
    valid = onehot.any(-1)  # (N, K)

    # Region-filtered probability map (Fig. 3 (e)); the point is its argmax within each region.
    best = torch.where(onehot, score[:, None, :], -math.inf).argmax(-1)  # (N, K) position
    if region_min > 0:  # regions that hold only noise: no point, no mask
        lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
        valid = valid & (torch.gather(m, 1, best) >= lo + region_min * (hi - lo))
        onehot = onehot & valid[..., None]
        regions = torch.where(onehot.any(1), regions, -1)
    yx = coords[best]  # (N, K, 2)
    cell = canvas_size / torch.tensor([w, h], device=dev, dtype=torch.float32)
    points = (yx.flip(-1) + 0.5) * cell - 0.5  # (x, y); SAM adds 0.5 before normalising: the cell centre
    points = torch.where(valid[..., None], points, torch.zeros_like(points))
    labels = torch.where(valid, 1, -1)
    masks = onehot.reshape(n, k, h, w)
    return PseudoPrompts(points=points, labels=labels, masks=masks.float(), boxes=_boxes(masks, canvas_size),
                         valid=valid, foreground=fg.reshape(n, h, w), map=m.reshape(n, h, w),
                         score=score.reshape(n, h, w), regions=regions.reshape(n, h, w))


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


# how the K region masks become the dense prompt of a prompt set (ESCNetConfig.mask_combine)
MASK_COMBINES = ("logits", "union", "sum", "mean")


def mask_prompt(pp: PseudoPrompts, combine: str, logit: float) -> Tensor | None:
    """The ONE mask SAM embeds per prompt set, (N, h, w) in its units, or None (sum / mean embed each of
    the K region masks). logits: +logit on every region's pixels, -logit elsewhere (SAM's mask input
    is its own previous low-resolution prediction in logits); union: the {0, 1} union of the regions
    (escnet's option before the revision). A set with no region gets no mask (SAM's no_mask_embed)."""
    if combine not in MASK_COMBINES:
        raise ValueError(f"unknown mask_combine {combine!r}; choose one of {', '.join(MASK_COMBINES)}")
    if combine in ("sum", "mean"):
        return None
    inside = pp.regions >= 0
    if combine == "union":
        return inside.float()
    return torch.where(inside, logit, -logit).float()


class PseudoPromptGenerator(nn.Module):
    """PPG as a module without parameters: forward(maps (N, h, w), class_lse=None) -> PseudoPrompts.

    Its output can be observed without touching the model's code: `register_forward_hook(fn)` gets
    the record of every call (one per ESC block and class chunk), and ESCNet.forward(...,
    return_ppg=True) returns the records of all blocks; nothing is kept when neither is asked for.
    """

    def __init__(self, num_regions: int = 5, threshold: str = "range", alpha: float | None = None, tau: float = 100.0,
                 smooth: int = 3, min_contrast: float = 0.0, region_min: float = 0.68, iters: int = 10,
                 init: str = "farthest", canvas_size: int = 384):
        super().__init__()
        self.options = dict(num_regions=num_regions, threshold=resolve_threshold(threshold), alpha=alpha, tau=tau,
                            smooth=smooth, min_contrast=min_contrast, region_min=region_min, iters=iters, init=init,
                            canvas_size=canvas_size)

    @classmethod
    def from_config(cls, cfg) -> PseudoPromptGenerator:
        """From an ESCNetConfig's ppg_* fields."""
        return cls(num_regions=cfg.ppg_regions, threshold=cfg.ppg_threshold, alpha=cfg.ppg_alpha, tau=cfg.ppg_tau,
                   smooth=cfg.ppg_smooth, min_contrast=cfg.ppg_min_contrast, region_min=cfg.ppg_region_min,
                   iters=cfg.ppg_iters, init=cfg.ppg_init,
                   canvas_size=cfg.crop_size)

    @property
    def needs_class_lse(self) -> bool:
        return self.options["threshold"] == "class_softmax"

    def forward(self, maps: Tensor, class_lse: Tensor | None = None) -> PseudoPrompts:
        return generate_pseudo_prompts(maps, class_lse=class_lse, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
