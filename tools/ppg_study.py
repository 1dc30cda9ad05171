"""Which pseudo-prompt rule covers the objects? Every PPG threshold rule measured on maps with known
objects and on the bundled trained model's real maps (docs/ppg.md has the results and the choice).

    python tools/ppg_study.py                      # both parts, markdown tables on stdout
    python tools/ppg_study.py --json out.json      # also the numbers as JSON
    python tools/ppg_study.py --part generated --images 100

Generated maps (escnet.models.ppg_stats.clip_like_maps): 24x24, 24x32 and 32x20 grids; each image has
3 classes with 1-3 objects (3-12 % of the image, +0.04-0.08 cosine over a 0.15-0.20 background, smooth
and pixel noise) and 3 classes with noise only. Real maps: the bundled model (escnet-synthetic-tiny)
on validation scenes of the synthetic benchmark (escnet.data.synthetic.scene), the map each ESC block
gives PPG (block 1: the cosine map C0; block 2: the readout of the refined embedding, as it is
("stem_inverse") and set to C0's per-map mean and std ("rescaled")), scored against the scene's labels
on the model's grid. Statistics: escnet.models.ppg_stats.ppg_statistics. CPU, one thread, seconds.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from escnet.models.ppg import generate_pseudo_prompts
from escnet.models.ppg_stats import clip_like_maps, grid_truth, ppg_statistics

# name -> generate_pseudo_prompts options (besides num_regions / canvas; region_min 0 unless given)
RULES: dict[str, dict] = {
    "softmax_peak (old default)": dict(threshold="softmax_peak", smooth=1, init="farthest_raster", region_min=0),
    "softmax_uniform (old option)": dict(threshold="softmax_uniform", smooth=1, region_min=0),
    "range 0.65, 3x3, region 0.68 (new default)": dict(threshold="range", alpha=0.65, smooth=3, region_min=0.68),
    "range 0.6, 3x3, region 0.65": dict(threshold="range", alpha=0.6, smooth=3, region_min=0.65),
    "range 0.6, 3x3, region 0.7": dict(threshold="range", alpha=0.6, smooth=3, region_min=0.7),
    "range 0.5": dict(threshold="range", alpha=0.5, smooth=1),
    "range 0.5, 3x3": dict(threshold="range", alpha=0.5, smooth=3),
    "range 0.6, 3x3": dict(threshold="range", alpha=0.6, smooth=3),
    "range 0.65, 3x3": dict(threshold="range", alpha=0.65, smooth=3),
    "range 0.7, 3x3": dict(threshold="range", alpha=0.7, smooth=3),
    "range 0.75, 3x3": dict(threshold="range", alpha=0.75, smooth=3),
    "range 0.65, 3x3, region 0.7": dict(threshold="range", alpha=0.65, smooth=3, region_min=0.7),
    "otsu": dict(threshold="otsu", smooth=1),
    "otsu, 3x3": dict(threshold="otsu", smooth=3),
    "otsu, 3x3, region 0.75": dict(threshold="otsu", smooth=3, region_min=0.75),
    "quantile 0.9": dict(threshold="quantile", alpha=0.9, smooth=1),
    "quantile 0.9, 3x3": dict(threshold="quantile", alpha=0.9, smooth=3),
    "quantile 0.93, 3x3": dict(threshold="quantile", alpha=0.93, smooth=3),
    "class_softmax 0.5": dict(threshold="class_softmax", alpha=0.5, smooth=1),
    "class_softmax 0.5, 3x3": dict(threshold="class_softmax", alpha=0.5, smooth=3),
    "range 0.65, 3x3, min contrast 0.03": dict(threshold="range", alpha=0.65, smooth=3, min_contrast=0.03),
}
GRIDS = [(24, 24), (24, 32), (32, 20)]
COLUMNS = ["iou", "points_inside", "objects_hit", "foreground_pixels", "valid_regions", "absent_maps_with_points"]


def run_rule(maps: torch.Tensor, options: dict, regions: int) -> "PseudoPrompts":  # noqa: F821
    """maps (B, T, h, w) -> the record of one rule, fields (B, T, ...)."""
    b, t, h, w = maps.shape
    options = {"region_min": 0.0, **options}
    pp = generate_pseudo_prompts(maps.reshape(b * t, h, w), num_regions=regions, num_classes=t, **options)
    return pp.reshape(b, t)


def generated(images: int, seed: int) -> dict[str, dict[str, float]]:
    """Per rule: statistics over all grids' maps (pooled by map)."""
    data = []
    for i, grid in enumerate(GRIDS):
        gen = torch.Generator().manual_seed(seed + i)
        data.append(clip_like_maps(gen, images, grid=grid))
    out = {}
    for name, options in RULES.items():
        per = [ppg_statistics(run_rule(maps, options, 5), ids) for maps, ids in data]
        out[name] = pooled(per)
    return out


def pooled(per: list[dict[str, float]]) -> dict[str, float]:
    """Equal-weight mean over the parts (each part has the same number of maps)."""
    return {k: sum(p[k] for p in per) / len(per) for k in per[0]}


def real(scenes: int, model_path: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Per source map ("block 1 C0", "block 2 stem_inverse", "block 2 rescaled") and rule: statistics of
    a trained model's maps on validation scenes of the synthetic benchmark (default: the bundled model;
    `model_path` a saved checkpoint trained on it), and each source's spread (mean over maps of
    max - mean). Block 2's map is the one the model gives with its own PPG rule in block 1."""
    from escnet import Segmenter
    from escnet.data.synthetic import scene, vocabulary

    seg = Segmenter.from_pretrained(model_path, protocol="single")
    model = seg.model.eval()
    names = list(vocabulary().all)
    text = seg.text_features(names)
    crop, grid = model.cfg.crop_size, model.cfg.grid
    sources: dict[str, list] = {}
    truths = []
    with torch.no_grad():
        for i in range(scenes):
            image, labels = scene("val", i, size=crop)
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            _, records = model(x, text, return_ppg=True)
            c0 = records[0].source  # (1, T, g, g)
            sources.setdefault("block 1: C0", []).append(c0)
            for j, rec in enumerate(records[1:], start=2):
                r = rec.source
                mu, sd = r.mean((-2, -1), keepdim=True), r.std((-2, -1), keepdim=True)
                rescaled = (r - mu) / sd.clamp(min=1e-12) * c0.std((-2, -1), keepdim=True) + c0.mean((-2, -1), keepdim=True)
                sources.setdefault(f"block {j}: stem_inverse", []).append(r)
                sources.setdefault(f"block {j}: rescaled", []).append(rescaled)
            truths.append(grid_truth(labels, len(names), (grid, grid))[None])
    truth = torch.cat(truths)
    out = {}
    for src, parts in sources.items():
        maps = torch.cat(parts)
        spread = (maps.flatten(-2).amax(-1) - maps.flatten(-2).mean(-1)).mean().item()
        rows = {name: ppg_statistics(run_rule(maps, options, model.cfg.ppg_regions), truth)
                for name, options in RULES.items()}
        out[src] = {"spread": spread, "rules": rows}
    return out


def mask_prompt_scale() -> dict:
    """The dense prompt of a cell outside every region and inside one, per mask form, with the bundled
    model's mask encoders (per ESC block): its norm, and the saturation of SAM's mask encoder in the
    logit (how far e(k) is from e(100), relative to |e(100) - e(-100)|)."""
    from escnet import Segmenter

    from escnet.models.sam import PromptEncoder

    model = Segmenter.from_pretrained(protocol="single").model
    torch.manual_seed(0)
    encoders = {f"bundled block {i + 1}": block.prompt_encoder for i, block in enumerate(model.sam)}
    # SAM's sizes (256 channels, mask_in_chans 16), PyTorch's default initialisation: no SAM weights here
    encoders["SAM-size, random init"] = PromptEncoder(256, (24, 24), (384, 384), 16)
    out = {}
    for name, pe in encoders.items():

        def dense(v: float) -> torch.Tensor:  # one mask of constant value v: W e(v) + b, (S,)
            cell = torch.full((1, 1, 4, 4), float(v))
            return pe.mask_downscaling(cell).flatten()

        with torch.no_grad():
            row = {"no_mask": pe.no_mask_embed.weight.norm().item()}
            for k in (1, 3, 5):  # K regions, the cell in none of them: K * (W e(0) + b)
                row[f"sum of {k} masks, outside"] = (k * dense(0.0)).norm().item()
                row[f"sum of {k} masks, inside one"] = ((k - 1) * dense(0.0) + dense(1.0)).norm().item()
            row["union {0,1}, outside"] = dense(0.0).norm().item()
            row["union {0,1}, inside"] = dense(1.0).norm().item()
            for logit in (1.0, 2.0, 5.0, 10.0, 20.0):
                row[f"logits +/-{logit:g}, outside"] = dense(-logit).norm().item()
                row[f"logits +/-{logit:g}, inside"] = dense(logit).norm().item()
            span = (dense(100.0) - dense(-100.0)).norm()
            # a mask encoder whose first LayerNorm sees one channel ignores the mask: span 0
            row["saturation"] = {f"{k:g}": (max((dense(k) - dense(100.0)).norm(), (dense(-k) - dense(-100.0)).norm())
                                            / span).item() if span > 0 else float("nan")
                                 for k in (1.0, 2.0, 5.0, 10.0, 20.0)}
        out[name] = row
    return out


def table(rows: dict[str, dict[str, float]]) -> str:
    head = "| rule | IoU | points inside | objects hit | fg px / map | regions / map | absent maps with points |"
    lines = [head, "|" + "---|" * 7]
    for name, s in rows.items():
        lines.append(f"| {name} | {s['iou']:.2f} | {s['points_inside']:.2f} | {s['objects_hit']:.2f} | "
                     f"{s['foreground_pixels']:.1f} | {s['valid_regions']:.2f} | {s['absent_maps_with_points']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["generated", "real", "mask", "both"], default="both",
                    help="both = generated + real + mask")
    ap.add_argument("--images", type=int, default=200, help="generated images per grid (6 maps each)")
    ap.add_argument("--scenes", type=int, default=100, help="validation scenes for the trained model")
    ap.add_argument("--model", help="a checkpoint trained on the synthetic benchmark (default: the bundled model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the numbers here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = {}
    if args.part in ("generated", "both"):
        result["generated"] = generated(args.images, args.seed)
        print(f"## Generated maps: {args.images} images x 6 classes per grid, grids {GRIDS}, seed {args.seed}, 5 regions\n")
        print(table(result["generated"]) + "\n")
    if args.part in ("real", "both"):
        result["real"] = real(args.scenes, args.model)
        for src, r in result["real"].items():
            print(f"## {args.model or 'Bundled model'}, {args.scenes} validation scenes, {src} (spread max - mean {r['spread']:.3f})\n")
            print(table(r["rules"]) + "\n")
    if args.part in ("mask", "both"):
        result["mask"] = mask_prompt_scale()
        print("## Dense prompt of one cell (norm), the bundled model's mask encoders\n")
        blocks = list(result["mask"])
        print("| form | " + " | ".join(blocks) + " |\n|---|" + "---|" * len(blocks))
        for key in result["mask"][blocks[0]]:
            if key != "saturation":
                print(f"| {key} | " + " | ".join(f"{result['mask'][b][key]:.2f}" for b in blocks) + " |")
        print("\nsaturation |e(k) - e(100)| / |e(100) - e(-100)| per logit k: "
              + "; ".join(f"{b}: " + ", ".join(f"{k}: {v:.3f}" for k, v in result["mask"][b]["saturation"].items())
                          for b in blocks) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
