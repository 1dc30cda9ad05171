"""PASCAL converters for `escnet prepare`: PASCAL-Context 59 / 459 and PASCAL VOC 2012 (20 / 20b).

PASCAL-Context 59 (raw: ``VOCtrainval_03-May-2010.tar`` + ``trainval_merged.json``)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg
    VOCdevkit/VOC2010/trainval_merged.json   'images' (file_name, image_id, height, width, phase) and
                                             'annos_segmentation' (image_id, category_id, COCO RLE)
    -> VOCdevkit/VOC2010/annotations_detectron2/pc59_val/*.png   train ids 0..58, 255 = ignore

  Each val image's masks are painted in file order with their category id (ids of the 459-class
  ``labels.txt``); the 59 ids of `PC59_CATEGORY_IDS` become 0..58 in increasing id order, every other
  pixel (unannotated or another class) 255.

PASCAL-Context 459 (raw: the same VOC2010 + ``trainval.tar.gz`` with one .mat per image)::

    VOCdevkit/VOC2010/trainval/<id>.mat      'LabelMap', values 1..459 (labels.txt numbering)
    VOCdevkit/VOC2010/pascalcontext_val.txt  val ids (CAT-Seg ships it; else the val images of
                                             trainval_merged.json are used, the same 5105 ids)
    -> VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif   uint16 LabelMap - 1 (0..458);
       every pixel is labelled, so detectron2's ignore value 459 never occurs.

PASCAL VOC 2012 (raw: ``VOCtrainval_11-May-2012.tar`` + ``SegmentationClassAug.zip``)::

    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png  0 = background, 1..20 classes, 255 = boundary
                                             (the val labels equal SegmentationClass/, used if Aug is absent)
    -> VOCdevkit/VOC2012/annotations_detectron2/val/<id>.png     VOC-20: background -> 255, c -> c - 1;
       a label left with no class pixel is not written, so that image is not evaluated (CAT-Seg)
    -> VOCdevkit/VOC2012/annotations_detectron2_bg/val/<id>.png  VOC-20b: background -> 20
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from escnet.data.vocab import benchmark_vocabulary
from escnet.data.prepare import (
    PrepareError, mark_prepared, open_array, require_dir, require_file, run_jobs, save_array,
    start_output, summarize,
)

# labels.txt ids of PASCAL-Context's 59 classes, in train-id order (aeroplane=2 ... wood=458).
PC59_CATEGORY_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308,
    324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)
PC459_NUM_CLASSES = 459

_PC59_LUT = np.full(PC459_NUM_CLASSES + 1, 255, dtype=np.uint8)
_PC59_LUT[np.asarray(PC59_CATEGORY_IDS)] = np.arange(len(PC59_CATEGORY_IDS), dtype=np.uint8)

_VOC_LUT = np.full(256, 255, dtype=np.uint8)
_VOC_LUT[1:21] = np.arange(20, dtype=np.uint8)
_VOC_BG_LUT = _VOC_LUT.copy()
_VOC_BG_LUT[0] = 20


# ---------------------------------------------------------------------------------------------
# COCO run-length encoding (trainval_merged.json), decoded without pycocotools


def _rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed RLE string: 5 bits per character (offset 48), bit 0x20 = more
    characters follow, bit 0x10 of the last one = negative; from the third run on, each value is
    stored as the difference to the run two places before."""
    counts: list[int] = []
    data = s.encode("ascii")
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("RLE string ends inside a number")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict, where: str = "RLE") -> np.ndarray:
    """COCO RLE ({'size': [h, w], 'counts': str | list}) -> (h, w) uint8 mask.
    Runs alternate 0s and 1s, starting with 0s, over the pixels in column-major order."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
        runs = _rle_counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    except (KeyError, TypeError, ValueError) as exc:
        raise PrepareError(f"{where}: malformed RLE ({exc})") from None
    runs_arr = np.asarray(runs, dtype=np.int64)
    if (runs_arr < 0).any() or runs_arr.sum() != h * w:
        raise PrepareError(f"{where}: RLE runs cover {runs_arr.sum()} pixels, the mask has {h}x{w} = {h * w}")
    flat = np.repeat((np.arange(len(runs_arr)) % 2).astype(np.uint8), runs_arr)
    return flat.reshape(w, h).T


# ---------------------------------------------------------------------------------------------
# PASCAL-Context 59


def _convert_pc59(job) -> str:
    dst, height, width, annos, force = job
    if dst.exists() and not force:
        return "existing"
    mask = np.zeros((height, width), dtype=np.int64)
    for category_id, rle, where in annos:
        m = rle_decode(rle, where)
        if m.shape != mask.shape:
            raise PrepareError(f"{where}: mask is {m.shape} but the image is {mask.shape}")
        mask[m != 0] = category_id
    mask = np.clip(mask, 0, PC459_NUM_CLASSES)
    save_array(_PC59_LUT[mask], dst, "PNG")
    return "written"


def _load_merged_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise PrepareError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "images" not in data or "annos_segmentation" not in data:
        raise PrepareError(f"{path} has no 'images' and 'annos_segmentation' (is it trainval_merged.json?)")
    return data


def prepare_pc59(root: Path, workers: int = 1, force: bool = False) -> dict:
    base = require_dir(root / "VOCdevkit" / "VOC2010", "untar VOCtrainval_03-May-2010.tar into the datasets folder")
    json_path = require_file(base / "trainval_merged.json", "download trainval_merged.json into VOCdevkit/VOC2010")
    out_dir = base / "annotations_detectron2" / "pc59_val"
    if not start_output(out_dir, force):
        return {"output": str(out_dir), "status": "already prepared"}
    data = _load_merged_json(json_path)
    try:
        val = {im["image_id"]: im for im in data["images"] if im.get("phase") == "val"}
        annos: dict = {k: [] for k in val}
        for i, a in enumerate(data["annos_segmentation"]):
            if a["image_id"] in annos:
                where = f"{json_path.name}: annos_segmentation[{i}] (image {val[a['image_id']]['file_name']})"
                annos[a["image_id"]].append((int(a["category_id"]), a["segmentation"], where))
        jobs = [
            (out_dir / (Path(im["file_name"]).stem + ".png"), int(im["height"]), int(im["width"]), annos[k], force)
            for k, im in val.items()
        ]
    except (KeyError, TypeError) as exc:
        raise PrepareError(f"{json_path}: unexpected structure, missing key {exc}") from None
    if not jobs:
        raise PrepareError(f"{json_path} has no image with phase 'val'")
    counts = summarize(run_jobs(_convert_pc59, jobs, workers, "pc59"))
    mark_prepared(out_dir, {"dataset": "pc59", "labels": len(jobs)})
    return {"output": str(out_dir), "labels": len(jobs), **counts}


# ---------------------------------------------------------------------------------------------
# PASCAL-Context 459


def _load_labelmap(path: Path) -> np.ndarray:
    import scipy.io  # optional dependency (extra "data"), only PC-459 needs it

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for truncated/foreign files
        raise PrepareError(f"cannot read PASCAL-Context annotation {path}: {exc}") from None
    if "LabelMap" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise PrepareError(f"PASCAL-Context annotation {path} has no 'LabelMap' (keys: {keys})")
    return np.asarray(mat["LabelMap"])


def _convert_pc459(job) -> str:
    src, dst, force = job
    if dst.exists() and not force:
        return "existing"
    lab = _load_labelmap(src)
    if lab.ndim != 2 or lab.size == 0 or lab.min() < 1 or lab.max() > PC459_NUM_CLASSES:
        lo, hi = (lab.min(), lab.max()) if lab.size else (None, None)
        raise PrepareError(
            f"PASCAL-Context LabelMap in {src} must be 2-D with values 1..459, got {lab.shape} in {lo}..{hi}")
    save_array((lab.astype(np.int64) - 1).astype(np.uint16), dst, "TIFF")
    return "written"


def _pc_val_ids(base: Path) -> tuple[list[str], str]:
    txt = base / "pascalcontext_val.txt"
    if txt.is_file():
        return [line.strip() for line in txt.read_text().splitlines() if line.strip()], txt.name
    merged = base / "trainval_merged.json"
    if merged.is_file():
        data = _load_merged_json(merged)
        return [Path(im["file_name"]).stem for im in data["images"] if im.get("phase") == "val"], merged.name
    raise PrepareError(
        f"need the PASCAL-Context val list: {txt} (from CAT-Seg's datasets/) or {merged}"
    )


def check_pc459_labels_txt(path: Path) -> list[str]:
    """Compare PASCAL-Context's ``labels.txt`` ('id: name' lines) with the packaged pc459 vocabulary;
    returns a list of mismatch descriptions (empty if they agree)."""
    names = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if ":" in line:
            idx, name = line.split(":", 1)
            if idx.strip().isdigit():
                names[int(idx)] = name.strip()
    vocab = benchmark_vocabulary("pc459")
    problems = [f"id {i + 1}: labels.txt {names.get(i + 1)!r}, vocabulary {v!r}"
                for i, v in enumerate(vocab) if names.get(i + 1) != v]
    extra = sorted(set(names) - set(range(1, len(vocab) + 1)))
    if extra:
        problems.append(f"labels.txt has ids outside 1..{len(vocab)}: {extra[:5]}")
    return problems


def prepare_pc459(root: Path, workers: int = 1, force: bool = False) -> dict:
    base = require_dir(root / "VOCdevkit" / "VOC2010", "untar VOCtrainval_03-May-2010.tar into the datasets folder")
    mat_dir = require_dir(base / "trainval", "untar trainval.tar.gz (PASCAL-Context 459) into VOCdevkit/VOC2010")
    out_dir = base / "annotations_detectron2" / "pc459_val"
    if not start_output(out_dir, force):
        return {"output": str(out_dir), "status": "already prepared"}
    summary: dict = {"output": str(out_dir)}
    if (base / "labels.txt").is_file():
        problems = check_pc459_labels_txt(base / "labels.txt")
        if problems:
            summary["labels_txt_mismatches"] = problems[:5]
    ids, source = _pc_val_ids(base)
    # CAT-Seg skips val ids without a .mat; say how many, since it changes the evaluated set.
    present = [i for i in ids if (mat_dir / f"{i}.mat").is_file()]
    jobs = [(mat_dir / f"{i}.mat", out_dir / f"{i}.tif", force) for i in present]
    if not jobs:
        raise PrepareError(f"none of the {len(ids)} val ids of {source} has a .mat file in {mat_dir}")
    counts = summarize(run_jobs(_convert_pc459, jobs, workers, "pc459"))
    mark_prepared(out_dir, {"dataset": "pc459", "labels": len(jobs), "val_list": source})
    summary.update({"labels": len(jobs), "val_ids_without_mat": len(ids) - len(present), **counts})
    return summary


# ---------------------------------------------------------------------------------------------
# PASCAL VOC 2012


def _convert_voc(job) -> str:
    src, dst, dst_bg, force = job
    if dst.exists() and dst_bg.exists() and not force:
        return "existing"
    raw = open_array(src, "VOC annotation")
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise PrepareError(
            f"VOC annotation {src} must be an 8-bit single-channel (grey or palette) PNG, got {raw.dtype} {raw.shape}")
    lab, lab_bg = _VOC_LUT[raw], _VOC_BG_LUT[raw]
    background_only = bool((lab == 255).all())
    if not background_only and (force or not dst.exists()):
        save_array(lab, dst, "PNG")
    if not (lab_bg == 255).all() and (force or not dst_bg.exists()):
        save_array(lab_bg, dst_bg, "PNG")
    return "background only (not in VOC-20)" if background_only else "written"


def prepare_voc(root: Path, workers: int = 1, force: bool = False) -> dict:
    base = require_dir(root / "VOCdevkit" / "VOC2012", "untar VOCtrainval_11-May-2012.tar into the datasets folder")
    val_txt = require_file(base / "ImageSets" / "Segmentation" / "val.txt", "the VOC 2012 download is incomplete")
    src_dir = base / "SegmentationClassAug"
    if not src_dir.is_dir():
        src_dir = require_dir(base / "SegmentationClass", "unzip SegmentationClassAug.zip into VOCdevkit/VOC2012")
    out_dir = base / "annotations_detectron2" / "val"
    out_bg = base / "annotations_detectron2_bg" / "val"
    todo, todo_bg = start_output(out_dir, force), start_output(out_bg, force)
    if not (todo or todo_bg):
        return {"output": [str(out_dir), str(out_bg)], "status": "already prepared"}
    ids = [line.strip() for line in val_txt.read_text().splitlines() if line.strip()]
    jobs = [(src_dir / f"{i}.png", out_dir / f"{i}.png", out_bg / f"{i}.png", force) for i in ids]
    for src, *_ in jobs:
        if not src.is_file():
            raise PrepareError(f"VOC annotation {src} (listed in {val_txt}) not found")
    counts = summarize(run_jobs(_convert_voc, jobs, workers, "voc"))
    n20 = len(ids) - counts.get("background only (not in VOC-20)", 0)
    mark_prepared(out_dir, {"dataset": "voc20", "labels_listed": len(ids), "source": src_dir.name})
    mark_prepared(out_bg, {"dataset": "voc20b", "labels_listed": len(ids), "source": src_dir.name})
    return {"output": [str(out_dir), str(out_bg)], "labels": len(ids), "voc20_labels_written": n20, **counts}
