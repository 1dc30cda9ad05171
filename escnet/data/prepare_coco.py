"""COCO-Stuff converter for `escnet prepare` (171 classes; the training set and a benchmark).

Raw (COCO 2017 images + ``stuffthingmaps_trainval2017.zip``)::

    coco-stuff/images/{train2017,val2017}/*.jpg
    coco-stuff/annotations/{train2017,val2017}/*.png   8-bit, value = COCO category id - 1, 255 = unlabelled
    -> coco-stuff/annotations_detectron2/{train2017,val2017}/*.png   train ids 0..170, 255 = ignore

COCO's category ids 1..182 leave 11 ids unused (the 80 thing classes skip 12, 26, 29, 30, 45, 66,
68, 69, 71, 83 and stuff starts at 92 after the unused 91); in the stuffthingmaps PNGs (id - 1) that
is 11, 25, 28, 29, 44, 65, 67, 68, 70, 82 and 90. The 171 used values, in increasing order, are
train ids 0..170 (CAT-Seg's ``COCO_CATEGORIES`` table); anything else becomes 255.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from escnet.data.prepare import (
    PrepareError, mark_prepared, open_array, require_dir, run_jobs, save_array, start_output, summarize,
)

UNUSED_MAP_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_MAP_VALUES = tuple(v for v in range(182) if v not in UNUSED_MAP_VALUES)

_LUT = np.full(256, 255, dtype=np.uint8)
_LUT[np.asarray(COCO_STUFF_MAP_VALUES)] = np.arange(len(COCO_STUFF_MAP_VALUES), dtype=np.uint8)


def coco_stuff_label(raw: np.ndarray) -> np.ndarray:
    """(H, W) uint8 stuffthingmaps values -> (H, W) uint8 train ids (255 = ignore)."""
    return _LUT[raw]


def _convert(job: tuple[Path, Path, bool]) -> str:
    src, dst, force = job
    if dst.exists() and not force:
        return "existing"
    raw = open_array(src, "COCO-Stuff annotation")
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise PrepareError(
            f"COCO-Stuff annotation {src} must be an 8-bit single-channel PNG, got {raw.dtype} {raw.shape}")
    save_array(coco_stuff_label(raw), dst, "PNG")
    return "written"


def prepare_coco_stuff(root: Path, workers: int = 1, force: bool = False) -> dict:
    hint = "unzip stuffthingmaps_trainval2017.zip into coco-stuff/annotations/ (train2017/, val2017/)"
    base = require_dir(root / "coco-stuff", hint)
    ann = require_dir(base / "annotations", hint)
    splits = [s for s in ("val2017", "train2017") if (ann / s).is_dir()]
    if not splits:
        raise PrepareError(f"neither {ann / 'val2017'} nor {ann / 'train2017'} exists; {hint}")
    summary: dict = {}
    for split in splits:
        out_dir = base / "annotations_detectron2" / split
        if not start_output(out_dir, force):
            summary[split] = "already prepared"
            continue
        files = sorted(p for p in (ann / split).iterdir() if p.suffix == ".png" and not p.name.startswith("."))
        if not files:
            raise PrepareError(f"no .png annotations in {ann / split}")
        jobs = [(f, out_dir / f.name, force) for f in files]
        summary[split] = {"labels": len(files), **summarize(run_jobs(_convert, jobs, workers, f"coco-stuff {split}"))}
        mark_prepared(out_dir, {"dataset": "coco-stuff", "split": split, "labels": len(files)})
    return summary
