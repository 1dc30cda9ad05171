"""PPG statistics over an evaluation (issue 25 item 6): what ESC-Net's pseudo prompt generator did in
each ESC block, accumulated over every image `escnet evaluate` (and training's evaluation) segments.

    with segmenter.observe_ppg(num_classes) as meter:        # None for a model without PPG (CAT-Seg)
        for image, labels in data:
            segmenter.segment(image, classes)
            meter.image_done(labels, ignore_label, image.shape[:2])
    meter.results()   # one dict per ESC block

The meter is a forward hook on each block's generator (`model.sam[i].ppg`), so it sees the records of
the evaluation's own forwards (every view of the protocol, every class chunk) and adds no forward.
Per block: foreground_pixels (mean per map), valid_regions (mean per map), pixels_per_region (mean
over the valid regions), and, where the class's ground truth is known on a view's grid (a cell is
the class's when more than half of it is), iou (mean over the maps whose class is in the view: IoU
of the binary mask with the class's cells) and points_inside (share of the points of those maps that
lie on the class's cells). A map is one class in one view (sliding protocol: 5 views per image).
Ignored pixels and the single view's padding belong to no class. With CAT-Seg's top-k truncation the
view's classes are the model's choice (the records then hold fewer than views x T maps), so only the
first three are counted.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import fields, replace

import numpy as np
import torch

from escnet.inference.protocol import SIZE_DIVISIBILITY, mapper_size, sliding_geometry
from escnet.models.ppg import PseudoPrompts
from escnet.models.ppg_stats import point_positions

SAMPLES = 4  # label samples per cell side for the ground truth on the grid
# the sums kept per block; results() turns them into the statistics
_SUMS = ("maps", "foreground", "valid", "region_pixels", "maps_known", "maps_present", "iou", "points", "inside")
STAT_KEYS = ("foreground_pixels", "valid_regions", "pixels_per_region", "iou", "points_inside")


def view_windows(protocol: str, height: int, width: int, crop: int) -> list[tuple[float, float, float, float]]:
    """The part of the image (H, W) each view of `protocol` shows, (y0, y1, x0, x1) as fractions of the
    image's height and width (beyond 1: the single view's padding), in the views' order."""
    if protocol == "sliding":
        side, _, offsets = sliding_geometry(crop)
        crops = [(y / side, (y + crop) / side, x / side, (x + crop) / side) for y in offsets for x in offsets]
        return crops + [(0.0, 1.0, 0.0, 1.0)]
    h, w = mapper_size(height, width, crop)
    return [(0.0, math.ceil(h / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY / h,
             0.0, math.ceil(w / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY / w)]


def window_truth(labels: np.ndarray, num_classes: int, window, grid: tuple[int, int], ignore_label: int) -> np.ndarray:
    """labels (H, W) class ids -> (T, gh, gw) bool: the cells of the view `window` (see view_windows)
    that each class covers for more than half (SAMPLES x SAMPLES samples per cell); ignored pixels,
    ids >= T and positions outside the image belong to no class."""
    gh, gw = grid
    y0, y1, x0, x1 = window
    height, width = labels.shape
    ys = np.floor((y0 + (np.arange(gh * SAMPLES) + 0.5) / (gh * SAMPLES) * (y1 - y0)) * height).astype(np.int64)
    xs = np.floor((x0 + (np.arange(gw * SAMPLES) + 0.5) / (gw * SAMPLES) * (x1 - x0)) * width).astype(np.int64)
    inside = (ys < height)[:, None] & (xs < width)[None, :]
    sampled = labels[np.minimum(ys, height - 1)[:, None], np.minimum(xs, width - 1)[None, :]].astype(np.int64)
    sampled = np.where(inside & (sampled != ignore_label) & (sampled >= 0) & (sampled < num_classes), sampled, -1)
    present = np.unique(sampled[sampled >= 0])
    out = np.zeros((num_classes, gh, gw), bool)
    if present.size:  # the classes in the view only: (P, gh, S, gw, S) -> share per cell
        share = (sampled[None] == present[:, None, None]).reshape(len(present), gh, SAMPLES, gw, SAMPLES).mean((2, 4))
        out[present] = share > 0.5
    return out


def _flatten(pp: PseudoPrompts) -> PseudoPrompts:
    """Fields (V, T, ...) -> (V * T, ...)."""
    return replace(pp, **{f.name: v.flatten(0, 1) for f in fields(pp) if (v := getattr(pp, f.name)) is not None})


class PPGMeter:
    """Accumulates PPG statistics per ESC block over an evaluation (module docstring)."""

    def __init__(self, model, num_classes: int, views: int, with_truth: bool = True):
        self.blocks = list(model.sam)
        self.num_classes, self.views, self.with_truth = num_classes, views, with_truth
        self.sums = torch.zeros(len(self.blocks), len(_SUMS), dtype=torch.float64)
        self._calls: list[list[PseudoPrompts]] = [[] for _ in self.blocks]
        self._handles = []

    @staticmethod
    def applies(model) -> bool:
        """Whether the model has pseudo prompts to measure (an ESC-Net with SAM blocks)."""
        return type(model).__name__ == "ESCNet" and bool(getattr(model.cfg, "use_sam", False))

    @classmethod
    @contextlib.contextmanager
    def attach(cls, segmenter, num_classes: int, protocol: str | None = None):
        """A meter hooked on the Segmenter's model while the block runs (None for a model without PPG)."""
        if not cls.applies(segmenter.model):
            yield None
            return
        protocol = protocol or segmenter.protocol
        meter = cls(segmenter.model, num_classes, 5 if protocol == "sliding" else 1)
        meter.protocol, meter.crop = protocol, segmenter.model.cfg.crop_size
        for i, block in enumerate(meter.blocks):
            meter._handles.append(block.ppg.register_forward_hook(
                lambda _m, _a, pp, i=i: meter._calls[i].append(pp)))
        try:
            yield meter
        finally:
            for h in meter._handles:
                h.remove()

    def image_done(self, labels: np.ndarray | None, ignore_label: int = 255) -> None:
        """Count the records of the image just segmented; labels (H, W) its ground truth (None: none)."""
        for i, calls in enumerate(self._calls):
            if not calls:
                continue
            truth = None
            total = sum(pp.points.shape[0] for pp in calls)
            if labels is not None and self.with_truth and total == self.views * self.num_classes:
                grid = tuple(calls[0].foreground.shape[-2:])
                windows = view_windows(self.protocol, *labels.shape, self.crop)
                truth = torch.from_numpy(np.stack([window_truth(labels, self.num_classes, w, grid, ignore_label)
                                                   for w in windows]))  # (V, T, g, g)
                # each call holds (V * T') maps of consecutive classes: (V, T', ...) -> (V, T, ...)
                pp = _flatten(PseudoPrompts.cat([c.reshape(self.views, -1) for c in calls], 1))
                self._add(i, pp, truth.reshape(-1, *grid).to(pp.foreground.device))
            else:
                for pp in calls:
                    self._add(i, pp, None)
            calls.clear()

    @torch.no_grad()
    def _add(self, block: int, pp: PseudoPrompts, truth: torch.Tensor | None) -> None:
        """pp fields (N, ...), truth (N, g, g) bool or None: add the record's sums."""
        n = pp.foreground.shape[0]
        fg = pp.foreground.reshape(n, -1)
        valid = pp.valid.reshape(n, -1)
        sizes = pp.masks.flatten(-2).sum(-1).reshape(n, -1)
        row = [n, fg.sum().item(), valid.sum().item(), sizes[valid].sum().item(), 0, 0, 0.0, 0, 0]
        if truth is not None:
            on = truth.reshape(n, -1)
            present = on.any(-1)
            iou = (fg & on).sum(-1).double() / (fg | on).sum(-1).clamp(min=1).double()
            hit = torch.gather(on, 1, point_positions(pp).reshape(n, -1))  # (N, K) the point on the class
            points = valid & present[:, None]
            row[4:] = [n, present.sum().item(), iou[present].sum().item(), points.sum().item(), (hit & points).sum().item()]
        self.sums[block] += torch.tensor(row, dtype=torch.float64)

    def results(self) -> list[dict]:
        """One dict per ESC block: block, maps, maps_with_truth, maps_present and STAT_KEYS (None where
        nothing was counted); summed over processes under torchrun."""
        sums = self.sums.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend_device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            sums = sums.to(backend_device)
            torch.distributed.all_reduce(sums)
            sums = sums.cpu()
        out = []
        for i, row in enumerate(sums.tolist()):
            s = dict(zip(_SUMS, row))

            def ratio(a: str, b: str) -> float | None:
                return round(s[a] / s[b], 4) if s[b] else None

            out.append({"block": i + 1, "maps": int(s["maps"]), "maps_with_truth": int(s["maps_known"]),
                        "maps_present": int(s["maps_present"]), "foreground_pixels": ratio("foreground", "maps"),
                        "valid_regions": ratio("valid", "maps"), "pixels_per_region": ratio("region_pixels", "valid"),
                        "iou": ratio("iou", "maps_present"), "points_inside": ratio("inside", "points")})
        return out


def format_ppg(blocks: list[dict]) -> list[str]:
    """One printed line per ESC block."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    return [f"PPG block {b['block']}: {f(b['foreground_pixels'], '.1f')} foreground px/map, "
            f"{f(b['valid_regions'], '.2f')} regions/map, {f(b['pixels_per_region'], '.1f')} px/region, "
            f"IoU {f(b['iou'], '.3f')}, points inside {f(b['points_inside'], '.3f')} "
            f"({b['maps']} maps, {b['maps_present']} with the class)" for b in blocks]
