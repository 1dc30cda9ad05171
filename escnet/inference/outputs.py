"""Standard output formats of a `SegmentationResult`: per-class masks with scores, COCO RLE, and a
Hugging Face `pipeline("image-segmentation")`-style list.

    result = segmenter.segment("photo.jpg", "cat, dog, sky")
    pipeline_output(result)   # [{"label": "cat", "score": 0.91, "mask": <PIL "L" image, 255 = class>}, ...]
    coco_json(result)         # {"images": [...], "categories": [...], "annotations": [{"segmentation": RLE, ...}]}
    save_outputs(result, "out/", "photo", ["png", "masks", "coco"])

A class appears in the masks, the pipeline list and the COCO annotations only if it got at least
one pixel. Its score is `result.scores` (the mean probability over its pixels).

COCO RLE is the compressed form pycocotools writes (`mask.encode`): run lengths of the mask in
column-major order, starting with a run of zeros, each stored as the difference to the run two
before it (from the third on) in 5-bit groups offset by 48 into printable ASCII, bit 0x20 marking
that another group follows. `rle_decode` reverses it; pycocotools decodes it too (tested).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from escnet.fileio import atomic_write

FORMATS = ("png", "masks", "coco")
FORMAT_HELP = ("png: <name>_overlay.png, <name>_labels.png, <name>.json (default); "
               "masks: <name>_mask_<id>.png per class present (255 = class) and <name>_masks.json "
               "with label, score and file, as the Hugging Face pipeline lists them; "
               "coco: <name>_coco.json, COCO-style annotations with compressed RLE masks and scores")


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Binary mask (H, W) -> COCO compressed RLE {"size": [H, W], "counts": str}."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs a 2-D mask, got shape {mask.shape}")
    flat = mask.reshape(-1, order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs  # the first run counts zeros
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences end at -1
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr(c + 48 + (0x20 if more else 0)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO compressed RLE -> binary mask (H, W) uint8 (the inverse of `rle_encode`)."""
    height, width = rle["size"]
    text = rle["counts"]
    runs, pos = [], 0
    while pos < len(text):
        x, shift, more = 0, 0, True
        while more:
            c = ord(text[pos]) - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                x |= -1 << shift
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    values = np.arange(len(runs)) % 2
    flat = np.repeat(values.astype(np.uint8), runs)
    if flat.size != height * width:
        raise ValueError(f"RLE runs cover {flat.size} pixels, the size says {height} x {width}")
    return flat.reshape((height, width), order="F")


def class_masks(result) -> list[dict[str, Any]]:
    """Per class present: {"id", "label" (display name), "entry", "score", "mask" (H, W) bool},
    in class order."""
    present = np.flatnonzero(np.bincount(result.labels.reshape(-1), minlength=len(result.classes)))
    scores = result.scores if result.scores is not None else np.full(len(result.classes), np.nan)
    return [{"id": int(i), "label": result.names[i], "entry": result.classes[i], "score": float(scores[i]),
             "mask": result.labels == i} for i in present]


def pipeline_output(result) -> list[dict[str, Any]]:
    """The list a Hugging Face `pipeline("image-segmentation")` returns: {"label", "score",
    "mask"} per class present, the mask a PIL "L" image (255 inside the class, 0 elsewhere); score
    None when the result has no scores (as the pipeline's semantic subtask gives)."""
    return [{"label": m["label"], "score": None if result.scores is None else m["score"],
             "mask": Image.fromarray(m["mask"].astype(np.uint8) * 255)}
            for m in class_masks(result)]


def coco_json(result, image_id: int = 1, file_name: str = "") -> dict[str, Any]:
    """A COCO-style document for one image (loads with pycocotools' COCO): every vocabulary
    entry is a category (id = class id + 1, as COCO ids start at 1); one annotation per class
    present, with a compressed RLE mask, area, bbox [x, y, w, h] and score."""
    height, width = result.labels.shape
    annotations = []
    for k, m in enumerate(class_masks(result), start=1):
        ys, xs = np.nonzero(m["mask"])
        annotations.append({
            "id": k, "image_id": image_id, "category_id": m["id"] + 1, "segmentation": rle_encode(m["mask"]),
            "area": int(ys.size), "score": m["score"], "iscrowd": 0,
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
        })
    return {
        "images": [{"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}],
        "categories": [{"id": i + 1, "name": name, "entry": entry}
                       for i, (name, entry) in enumerate(zip(result.names, result.classes))],
        "annotations": annotations,
        "info": result.info,
    }


def parse_formats(text: str) -> list[str]:
    """"png,coco" -> ["png", "coco"]; an unknown name is a ValueError naming the choices."""
    formats = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown output format {', '.join(unknown) or repr(text)}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def save_outputs(result, directory: Union[str, os.PathLike], name: str, formats: list[str],
                 file_name: str = "") -> list[Path]:
    """Write the result in each of `formats` into directory; returns the paths written. Each
    file appears by an atomic rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "png" in formats:
        written.extend(result.save(directory, name=name).values())
    if "masks" in formats:
        listing = []
        for m in class_masks(result):
            path = directory / f"{name}_mask_{m['id']}.png"
            mask = Image.fromarray(m["mask"].astype(np.uint8) * 255)
            written.append(atomic_write(path, lambda tmp, mask=mask: mask.save(tmp, format="PNG")))
            listing.append({"id": m["id"], "label": m["label"], "entry": m["entry"], "score": m["score"],
                            "mask": path.name})
        written.append(_write_json(directory / f"{name}_masks.json", listing))
    if "coco" in formats:
        written.append(_write_json(directory / f"{name}_coco.json", coco_json(result, file_name=file_name)))
    return written


def _write_json(path: Path, payload: Any) -> Path:
    text = json.dumps(payload, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
