"""What the model saw on the way, drawn as the paper draws it: Fig. 3 (the pseudo prompt generator,
per class and ESC block) and Fig. 6 (the class activation map after each block).

    from escnet.inference.explain import explain
    ex = explain(segmenter, "photo.png", "cat, dog, sky")   # one view, as --protocol single
    ex.figures["fig6"].show(); ex.save("explain/")            # PNGs + explain.json

One forward of the model's single view (the image resized to the model's input square, as the
"single" protocol makes it) with every class; nothing is changed in the model.

- Fig. 3, ESC-Net with SAM blocks only: for each drawn class, one row per ESC block from PPG's record
  (`ESCNet.forward(..., return_ppg=True)`, escnet/models/ppg.py): the view with the block's points,
  (a) the map the block gave PPG (block 1: the CLIP correlation C0; later blocks: the readout of the
  refined embedding, `ppg_source`), (b) the map the threshold read (smoothed; for the softmax rules
  the probability map), (c) the binary mask, (d) the k-means regions, (e) (b) filtered by the
  regions with each region's point, (f) the mask prompt SAM embedded (one mask in logits or {0, 1};
  with `mask_combine` sum / mean the union of the region masks SAM embeds one by one).
- Fig. 6, ESC-Net and CAT-Seg: for each drawn class the correlation C0 (the stem's input), the map
  after each ESC block (CAT-Seg: after each aggregator layer) and the prediction (sigmoid of the
  decoder's logits). A block's map is its embedding read back on the stem's direction (the centre
  tap of the stem's kernel, as `ESCNet._readout`), so it is the map block i+1's PPG reads under
  ppg_source "stem_inverse". Every panel is scaled to its own min..max (the ranges are in
  explain.json): the picture says where, not how much.

Maps are drawn cell by cell (nearest neighbour) with a viridis-like colour map in numpy; Pillow
only, no matplotlib.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from escnet.data.images import load_image
from escnet.data.vocab import VocabularyError, display_name, parse_vocabulary
from escnet.fileio import atomic_write_all
from escnet.inference.protocol import mapper_resize, single_views
from escnet.inference.visualize import _font, palette, shorten

MIN_PANEL = 144  # a panel's side in pixels at least; grids are drawn in whole cells
MAX_DRAWN = 12  # classes drawn by default (those the prediction shows, largest first)
_PAD, _TITLE = 6, 16
# viridis at 0, 1/4, 1/2, 3/4, 1 (its published end points and quartiles), linearly interpolated
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)
# thresholds whose (b) is a probability map (the others read the smoothed map itself)
_SOFTMAX_RULES = ("softmax_peak", "softmax_uniform", "class_softmax")


def colormap(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """values (...) -> (..., 3) uint8, viridis-like; scaled to [lo, hi] (default: the values' own
    min..max; a flat map is drawn at the low end)."""
    v = np.asarray(values, np.float32)
    lo = float(np.nanmin(v)) if lo is None else lo
    hi = float(np.nanmax(v)) if hi is None else hi
    t = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)
    t = np.nan_to_num(t) * (len(_VIRIDIS) - 1)
    i = np.minimum(t.astype(np.int64), len(_VIRIDIS) - 2)
    f = (t - i)[..., None]
    return np.rint(_VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f).astype(np.uint8)


def stem_readout(x: torch.Tensor, stem: torch.nn.Conv2d, channel_dim: int) -> torch.Tensor:
    """An embedding x with C channels on `channel_dim` (ESC-Net E (B, C, T, g, g): 1; CAT-Seg
    (B, T, C, h, w): 2) read back on the stem conv's centre tap w (C,): (x . w - b . w) / |w|^2,
    the map the embedding holds on C0's axis -> x without its channel axis."""
    k = stem.weight.shape[-1] // 2
    w = stem.weight[:, 0, k, k].to(x.dtype)  # (C,)
    bias = stem.bias.to(x.dtype) if stem.bias is not None else torch.zeros_like(w)
    return ((x.movedim(channel_dim, -1) @ w) - bias @ w) / w.pow(2).sum()


@dataclass
class Explanation:
    """What `explain` found for one image. T = the vocabulary's classes, g = the model's grid.

    classes: the T vocabulary entries; drawn: indices of the drawn classes.
    view: (s, s, 3) uint8, the model's input view.
    stages: names of the S maps of `activations`: "C0 correlation", one per block, "prediction".
    activations: list of S arrays (T, h_s, w_s) float32 (the prediction at the decoder's resolution).
    ppg: one dict per ESC block (empty without PPG) of numpy arrays with the class axis first: source,
        map, score (T, g, g), foreground (T, g, g) bool, regions (T, g, g) (-1 off the foreground),
        masks (T, K, g, g), points (T, K, 2) (x, y) in canvas pixels, labels, valid (T, K),
        mask_prompt (T, g, g) or absent; plus "threshold", "mask_combine".
    canvas_size: the side of the PPG prompt canvas the points are on.
    statistics: the JSON-ready numbers (explain.json).
    figures: name -> picture ("fig3_NN_name" per drawn class when there is PPG, "fig6").
    notes: one-line remarks (e.g. why there is no Fig. 3).
    """

    classes: list[str]
    drawn: list[int]
    model: str
    view: np.ndarray
    stages: list[str]
    activations: list[np.ndarray]
    ppg: list[dict[str, Any]]
    canvas_size: int
    statistics: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Image.Image] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def save(self, folder: Union[str, os.PathLike]) -> list[Path]:
        """Write every figure as FOLDER/NAME.png and the statistics as FOLDER/explain.json (created if
        missing) -> the paths written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.statistics, indent=2) + "\n"
        writes = {folder / f"{name}.png": (lambda tmp, p=picture: p.save(tmp, format="PNG"))
                  for name, picture in self.figures.items()}
        writes[folder / "explain.json"] = lambda tmp: tmp.write_text(text, encoding="utf-8")
        atomic_write_all(writes)  # all or none
        return list(writes)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] or "class"


def _stages(model) -> tuple[str, list[torch.nn.Module], torch.nn.Conv2d, int]:
    """(stage word, the block modules whose outputs are drawn, the stem conv, the channel axis)."""
    arch = type(model).__name__
    if arch == "ESCNet":
        return "ESC block", list(model.vlf), model.stem, 1
    if arch == "CATSeg":
        return "aggregator layer", list(model.transformer.layers), model.transformer.conv1, 2
    raise ValueError(f"explain: needs an ESC-Net or CAT-Seg model, got {arch}")


@torch.no_grad()
def run_explained(model, view: torch.Tensor, text: torch.Tensor) -> tuple[list[torch.Tensor], list, list[str]]:
    """One forward of view (1, 3, s, s) with text (T, D), every class at once, observed through
    forward hooks -> (maps: C0 (T, g, g), each block's readout (T, g, g), the prediction (T, n, n)
    (sigmoid of the native logits); PPG records (ESC-Net with SAM blocks, else []); stage names)."""
    word, blocks, stem, channel_dim = _stages(model)
    seen: dict[str, Any] = {"blocks": []}

    def on_stem(_mod, args):
        seen.setdefault("c0", args[0])  # (B*T, 1, g, g): the correlation the stem embeds

    def on_block(_mod, _args, out):
        seen["blocks"].append(out)

    handles = [stem.register_forward_pre_hook(on_stem)] + [b.register_forward_hook(on_block) for b in blocks]
    ppg = type(model).__name__ == "ESCNet" and model.cfg.use_sam
    try:
        out = model(view, text, class_chunk=None, upsample=False, class_truncation=None, **({"return_ppg": True} if ppg else {}))
    finally:
        for h in handles:
            h.remove()
    logits, records = out if ppg else (out, [])
    t = text.shape[0]
    c0 = seen["c0"].reshape(-1, t, *seen["c0"].shape[-2:])[0]
    maps = [c0] + [stem_readout(e, stem, channel_dim)[0] for e in seen["blocks"]] + [logits.float().sigmoid()[0]]
    names = ["C0 correlation"] + [f"after {word} {i + 1}" for i in range(len(blocks))] + ["prediction"]
    return [m.float() for m in maps], records, names


def _record_arrays(pp, cfg, generator) -> dict[str, Any]:
    """A PPG record of one image (fields (1, T, ...)) from `generator` (the block's
    PseudoPromptGenerator) -> numpy arrays (T, ...)."""
    out = {name: getattr(pp, name)[0].float().cpu().numpy() for name in ("source", "map", "score")}
    for name in ("foreground", "valid"):
        out[name] = getattr(pp, name)[0].cpu().numpy().astype(bool)
    for name in ("regions", "labels"):
        out[name] = getattr(pp, name)[0].cpu().numpy().astype(np.int64)
    out["masks"] = pp.masks[0].cpu().numpy() > 0
    out["points"] = pp.points[0].float().cpu().numpy()
    if pp.mask_prompt is not None:
        out["mask_prompt"] = pp.mask_prompt[0].float().cpu().numpy()
    out["threshold"], out["mask_combine"] = generator.options["threshold"], cfg.mask_combine
    out["mask_logit"] = float(getattr(cfg, "mask_logit", 1.0))
    return out


def explain(segmenter, image, classes, draw: Optional[list[str]] = None, max_drawn: int = MAX_DRAWN,
            figures: bool = True) -> Explanation:
    """Fig. 3 and Fig. 6 of one image (path, PIL image or array) with a vocabulary (any form
    `parse_vocabulary` takes), for the Segmenter's model (ESC-Net: both; CAT-Seg, or ESC-Net without
    SAM blocks: Fig. 6 only, with a note saying so).

    draw: the classes to draw (vocabulary entries or their first names); default: the classes the
    prediction shows (argmax over the view), largest first, at most `max_drawn`. Every class is
    scored, and the statistics cover every class. figures: False skips drawing (arrays and statistics
    only). ValueError / VocabularyError name a bad argument in one line."""
    from escnet.models.ppg_stats import ppg_statistics

    model = segmenter.model
    word = _stages(model)[0]
    entries = parse_vocabulary(classes)
    rgb = load_image(image, getattr(segmenter, "max_pixels", None))
    view, _ = single_views(model, mapper_resize(rgb, model.cfg.crop_size).to(segmenter.device), "official")
    text = segmenter.text_features(entries).to(view.device)
    maps, records, stages = run_explained(model, view, text)

    predicted = maps[-1].argmax(0).flatten()
    counts = torch.bincount(predicted, minlength=len(entries)).cpu().numpy()
    if draw is None:
        order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
        drawn = order[:max_drawn]
    else:
        drawn = [_class_index(entries, name) for name in draw]
    ppg = [_record_arrays(r, model.cfg, model.sam[i].ppg) for i, r in enumerate(records)]
    canvas = int(model.cfg.crop_size)
    view_np = view[0].permute(1, 2, 0).clamp(0, 255).round().byte().cpu().numpy()
    ex = Explanation(classes=entries, drawn=drawn, model=getattr(model.cfg, "arch", type(model).__name__),
                     view=view_np, stages=stages, activations=[m.cpu().numpy() for m in maps], ppg=ppg,
                     canvas_size=canvas)
    if not records:
        why = "this CAT-Seg model has no pseudo prompts" if word != "ESC block" else \
            "this ESC-Net has no SAM blocks (use_sam = false), so no pseudo prompts"
        ex.notes.append(f"Fig. 3 not drawn: {why}; Fig. 6 shows the map after each {word}")
    ex.statistics = _statistics(ex, records, counts, ppg_statistics, getattr(segmenter, "checkpoint", None))
    if figures:
        for i in drawn:
            if ppg:
                ex.figures[f"fig3_{i:02d}_{_slug(entries[i])}"] = draw_fig3(ex, i)
        if drawn:
            ex.figures["fig6"] = draw_fig6(ex, drawn)
    return ex


def _class_index(entries: list[str], name: str) -> int:
    wanted = name.strip().casefold()
    for i, entry in enumerate(entries):
        if wanted in (entry.casefold(), display_name(entry).casefold()):
            return i
    raise VocabularyError(f"class to draw {name!r} is not in the vocabulary ({shorten(', '.join(entries), 80)})")


def _statistics(ex: Explanation, records, counts: np.ndarray, ppg_statistics, checkpoint) -> dict[str, Any]:
    total = max(1, int(counts.sum()))
    view_side = ex.view.shape[0]
    scale = view_side / ex.canvas_size
    blocks = []
    for i, (rec, arr) in enumerate(zip(records, ex.ppg)):
        per_class = []
        for t, name in enumerate(ex.classes):
            keep = arr["valid"][t]
            per_class.append({
                "class": name, "foreground_pixels": int(arr["foreground"][t].sum()), "valid_regions": int(keep.sum()),
                "region_pixels": [int(s) for s in arr["masks"][t].reshape(len(keep), -1).sum(-1)[keep]],
                "points_view_px": [[round(float((x + 0.5) * scale - 0.5), 2), round(float((y + 0.5) * scale - 0.5), 2)]
                                   for x, y in arr["points"][t][keep]],
            })
        stats = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in ppg_statistics(rec).items()}
        blocks.append({"block": i + 1, "threshold": arr["threshold"], "mask_combine": arr["mask_combine"], **stats,
                       "per_class": per_class})
    return {
        "model": ex.model, "checkpoint": checkpoint, "view_size": view_side, "canvas_size": ex.canvas_size,
        "grid": list(ex.activations[0].shape[-2:]), "classes": ex.classes, "drawn": [ex.classes[i] for i in ex.drawn],
        "predicted_share": {name: round(float(c) / total, 4) for name, c in zip(ex.classes, counts)},
        "stages": [{"stage": name, "min": [round(float(v), 4) for v in m.reshape(len(ex.classes), -1).min(-1)],
                    "max": [round(float(v), 4) for v in m.reshape(len(ex.classes), -1).max(-1)]}
                   for name, m in zip(ex.stages, ex.activations)],
        "ppg": blocks, "notes": ex.notes,
    }


# ---------------------------------------------------------------------------------------------
# Drawing (Pillow + numpy)

def _panel_side(h: int, w: int) -> int:
    side = max(h, w)
    return side * max(1, -(-MIN_PANEL // side))


def _panel(rgb: np.ndarray, side: int) -> Image.Image:
    """(h, w, 3) uint8 -> a side x side picture, cell by cell (nearest)."""
    return Image.fromarray(rgb).resize((side, side), Image.Resampling.NEAREST)


def _view_panel(ex: Explanation, side: int) -> Image.Image:
    return Image.fromarray(ex.view).resize((side, side), Image.Resampling.BILINEAR)


def _draw_points(picture: Image.Image, points: np.ndarray, valid: np.ndarray, canvas: int, colours: np.ndarray) -> None:
    """Each valid region's point (x, y in canvas pixels) as a dot in its region's colour."""
    draw = ImageDraw.Draw(picture)
    s = picture.width / canvas
    r = max(3, picture.width // 36)
    for k in np.flatnonzero(valid):
        x, y = (points[k] + 0.5) * s
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in colours[k]), outline=(255, 255, 255), width=2)


def _grid(titles_rows: list[tuple[str, list[tuple[str, Image.Image]]]], header: str) -> Image.Image:
    """Rows of (row label, [(panel title, picture)]) under a header -> one white picture."""
    font, small = _font(13), _font(11)
    side = max(p.width for _, row in titles_rows for _, p in row)
    cols = max(len(row) for _, row in titles_rows)
    row_h = _TITLE * 2 + side + _PAD
    width = _PAD + cols * (side + _PAD)
    canvas = Image.new("RGB", (width, _TITLE + _PAD + row_h * len(titles_rows) + _PAD), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, 2), header, fill=(0, 0, 0), font=font)
    y = _TITLE + _PAD
    for label, row in titles_rows:
        draw.text((_PAD, y), label, fill=(0, 0, 0), font=font)
        for c, (title, picture) in enumerate(row):
            x = _PAD + c * (side + _PAD)
            draw.text((x, y + _TITLE), title, fill=(60, 60, 60), font=small)
            canvas.paste(picture, (x, y + 2 * _TITLE))
        y += row_h
    return canvas


def draw_fig3(ex: Explanation, t: int) -> Image.Image:
    """Fig. 3 for class t: one row per ESC block, 7 panels (view + points, (a)-(f))."""
    h, w = ex.ppg[0]["source"].shape[-2:]
    side = _panel_side(h, w)
    rows = []
    for b, rec in enumerate(ex.ppg):
        k = rec["valid"].shape[-1]
        colours = palette(k)
        regions = rec["regions"][t]
        inside = regions >= 0
        region_rgb = np.where(inside[..., None], colours[np.clip(regions, 0, k - 1)], 0).astype(np.uint8)
        filtered = np.where(inside, rec["score"][t], np.nan)
        shown = colormap(filtered, *_finite_range(filtered))
        shown[~inside] = 0
        binary = np.where(rec["foreground"][t], 255, 0).astype(np.uint8)
        if "mask_prompt" in rec:
            m = rec["mask_prompt"][t]
            lo, hi = (0.0, 1.0) if rec["mask_combine"] == "union" else (-rec["mask_logit"], rec["mask_logit"])
            prompt = np.rint(np.clip((m - lo) / (hi - lo), 0, 1) * 200 + 30).astype(np.uint8)
            prompt_title = "(f) mask prompt" + (" {0, 1}" if rec["mask_combine"] == "union" else f" \u00b1{hi:g}")
        else:
            prompt = np.where(rec["masks"][t][rec["valid"][t]].any(0), 230, 30).astype(np.uint8)
            prompt_title = f"(f) {rec['mask_combine']} of region masks"
        is_prob = rec["threshold"] in _SOFTMAX_RULES
        view = _view_panel(ex, side)
        _draw_points(view, rec["points"][t], rec["valid"][t], ex.canvas_size, colours)
        e_panel = _panel(shown, side)
        _draw_points(e_panel, rec["points"][t], rec["valid"][t], ex.canvas_size, colours)
        panels = [("view + points", view),
                  ("(a) " + ("correlation C0" if b == 0 else "block's map"), _panel(colormap(rec["source"][t]), side)),
                  ("(b) probability" if is_prob else "(b) smoothed map", _panel(colormap(rec["score"][t]), side)),
                  (f"(c) binary mask ({int(rec['foreground'][t].sum())} px)", _panel(np.repeat(binary[..., None], 3, -1), side)),
                  (f"(d) k-means regions ({int(rec['valid'][t].sum())})", _panel(region_rgb, side)),
                  ("(e) filtered + points", e_panel),
                  (prompt_title, _panel(np.repeat(prompt[..., None], 3, -1), side))]
        rows.append((f"ESC block {b + 1} (threshold {rec['threshold']})", panels))
    return _grid(rows, f"Fig. 3, pseudo prompts of \"{shorten(ex.classes[t])}\" ({ex.model})")


def _finite_range(values: np.ndarray) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (None, None)


def draw_fig6(ex: Explanation, drawn: list[int]) -> Image.Image:
    """Fig. 6: one row per drawn class: the view, then every stage's map (each scaled to its own range)."""
    side = _panel_side(*ex.activations[0].shape[-2:])
    rows = []
    for t in drawn:
        panels = [("view", _view_panel(ex, side))]
        panels += [(name, _panel(colormap(m[t]), side)) for name, m in zip(ex.stages, ex.activations)]
        rows.append((shorten(ex.classes[t]), panels))
    return _grid(rows, f"Fig. 6, class activation maps per block ({ex.model}; each panel scaled to its own range)")
