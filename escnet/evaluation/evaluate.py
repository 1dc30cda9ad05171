"""Evaluation (`escnet evaluate`, escnet/commands/evaluate.py): mIoU of a model on a benchmark or a user folder, the paper's Table 1 protocol.

One confusion matrix is accumulated over the whole set (escnet.evaluation.metrics) and every number is
computed from it: mIoU under both formulas in use (detectron2 main: the default; detectron2 v0.6 /
mmseg), fwIoU, mACC, pACC and a per-class table. ``results.json`` and ``confusion_matrix.npy`` are
written so the numbers can be recomputed (`escnet.evaluation.metrics.compute_metrics`).

Images go through CAT-Seg's official evaluation protocol (escnet/inference/protocol.py) unless
``--resize antialias`` is given; results.json records the protocol, the resize mode and the class
mode. For more than 256 classes ``--class-mode top256`` (CAT-Seg's truncation) is the mode that
reproduces CAT-Seg's published ADE-847 / PC-459 numbers; the default ``exact`` scores every class.

Under ``torchrun`` each process takes every world-size-th image (rank::world), the matrices are
summed with all_reduce (gloo on CPU, nccl on CUDA) and rank 0 writes the outputs; the numbers are
identical to a single-process run because the matrix is a sum of per-image counts.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np

from escnet.data.datasets import GENERATED, DatasetError, SegDataset, get_dataset, load_custom_dataset
from escnet.errors import EscnetError
from escnet.fileio import atomic_write_all
from escnet.progress import progress as progress_of

# results.json says which large-vocabulary mode ran and what it reproduces
CLASS_MODE_NOTES = {
    "exact": "every class scored (exact all-class inference); CAT-Seg's published ADE-847 / PC-459 "
             "numbers used top256 instead",
    "top256": "CAT-Seg's truncation: per view only the 256 classes with the highest CLIP score are "
              "aggregated, the rest get logit -100; reproduces CAT-Seg's published ADE-847 / PC-459 numbers",
}
RESIZE_NOTES = {
    "official": "CAT-Seg's official evaluation protocol (escnet/inference/protocol.py)",
    "antialias": "CAT-Seg's protocol with antialiased model-side image downscales (not the official numbers)",
}

MATRIX_LAYOUT = (
    "(T+1, T+1) int64; [p, g] = pixels predicted as class p with ground truth g; "
    "last column = pixels whose ground truth is the ignore label (not used by any metric)"
)


class EvaluationError(EscnetError, RuntimeError):
    """A prediction that cannot be scored (wrong shape or class range); names the image."""


def _rank_world() -> tuple[int, int]:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate(
    segmenter,
    dataset: SegDataset,
    output_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    progress: bool = True,
    meta: dict | None = None,
    groups: dict[str, list[int]] | None = None,
) -> dict:
    """Run ``segmenter`` over ``dataset`` and score it.

    Args:
        segmenter: anything with ``segment(image (H, W, 3) uint8, classes: list[str])`` returning
            an object with ``labels`` (H, W) integer class indices into ``classes`` (or that array).
        dataset: a `SegDataset` (benchmark or custom folder).
        output_dir: where rank 0 writes ``results.json`` and ``confusion_matrix.npy`` (None: nowhere).
        limit: score only the first ``limit`` images (quick checks; recorded in the results).
        progress: show a progress bar on rank 0.
        meta: extra fields for results.json (model path, protocol, ...).

    Returns the results dict (the same on every rank): `compute_metrics` fields plus run info.
    """
    from escnet.evaluation.metrics import ConfusionMatrix, compute_metrics

    rank, world = _rank_world()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = range(rank, n, world)
    classes = dataset.prompt_classes
    cm = ConfusionMatrix(dataset.num_classes, dataset.ignore_label)
    # A bar on a terminal, plain lines in a log; other ranks stay quiet.
    bar = progress_of(indices, desc=f"evaluate {Path(dataset.name).name}", unit="img",
                      disable=(not progress) or rank != 0)
    start = time.perf_counter()
    # ESC-Net: PPG statistics per block from the evaluation's own forwards (Segmenter.observe_ppg:
    # forward hooks, escnet/inference/ppg_metrics.py); None for other models
    observe = getattr(segmenter, "observe_ppg", None)
    with (observe(len(classes)) if observe else contextlib.nullcontext()) as meter:
        _score(segmenter, dataset, bar, classes, cm, meter)
    seconds = time.perf_counter() - start
    cm.all_reduce()
    matrix = cm.numpy()
    results = {
        "dataset": dataset.name,
        "num_images": n,
        "limit": limit,
        "world_size": world,
        **(meta or {}),
        **compute_metrics(matrix, dataset.class_names),
        "confusion_matrix_layout": MATRIX_LAYOUT,
        "seconds_rank0": round(seconds, 3),
    }
    if meter is not None:
        results["ppg"] = meter.results()
    if groups:
        results["groups"] = group_metrics(results["per_class"], groups)
    if output_dir is not None and rank == 0:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=1)
        atomic_write_all({out / "confusion_matrix.npy": lambda tmp: np.save(tmp, matrix),  # tmp ends in .npy
                          out / "results.json": lambda tmp: tmp.write_text(text)})
    return results


def _score(segmenter, dataset: SegDataset, bar, classes: list[str], cm, meter) -> None:
    """Segment every image of `bar` and add it to the confusion matrix `cm` (and the PPG meter)."""
    from escnet.evaluation.metrics import LabelRangeError

    for i in bar:
        image_path, label_path = dataset.items[i]
        image, gt = dataset[i]
        result = segmenter.segment(image, classes)
        pred = np.asarray(getattr(result, "labels", result))
        if pred.shape != gt.shape:
            raise EvaluationError(
                f"prediction for {image_path} has shape {pred.shape}, its label {label_path} has {gt.shape}"
            )
        if not np.issubdtype(pred.dtype, np.integer):
            raise EvaluationError(f"prediction for {image_path} has dtype {pred.dtype}; expected integer class indices")
        if pred.size and (pred.min() < 0 or pred.max() >= len(classes)):
            raise EvaluationError(
                f"prediction for {image_path} has class ids {pred.min()}..{pred.max()}, outside 0..{len(classes) - 1}"
            )
        if dataset.background_index is not None:
            # VOC-20b: every class past the 20 VOC classes stands for the background.
            pred = np.minimum(pred, dataset.background_index)
        try:
            cm.update(pred, gt, source=str(label_path))
        except LabelRangeError as exc:
            raise DatasetError(str(exc)) from None
        if meter is not None:
            meter.image_done(gt, dataset.ignore_label)


def group_metrics(per_class: list[dict], groups: dict[str, list[int]]) -> dict:
    """Mean IoU (percent) per class group, e.g. {"seen": ids, "unseen": ids} ->
    {"seen_mIoU": ..., "unseen_mIoU": ..., "hIoU": harmonic mean of the two}; a group none of whose
    classes occurs in the ground truth gets None."""
    out: dict = {}
    for name, ids in groups.items():
        values = [per_class[i]["IoU"] for i in ids if per_class[i]["IoU"] is not None]
        out[f"{name}_mIoU"] = float(np.mean(values)) if values else None
    seen, unseen = out.get("seen_mIoU"), out.get("unseen_mIoU")
    if seen and unseen:
        out["hIoU"] = 2 * seen * unseen / (seen + unseen)
    return out


# ---------------------------------------------------------------------------------------------
# Datasets by name (the command is escnet/commands/evaluate.py)


def load_dataset(spec: str, root: str | None = None, split: str = "val", classes: str | None = None,
                 ignore_label: int = 255) -> tuple[SegDataset, dict[str, list[int]] | None]:
    """A benchmark name (escnet.data.vocab.BENCHMARKS), "synthetic" / "synthetic-grouping" (escnet's
    generated benchmarks, with their seen / unseen class groups) or a custom dataset folder -> (dataset, class groups or None)."""
    if Path(spec).is_dir():
        return load_custom_dataset(spec, class_file=classes, ignore_label=ignore_label), None
    from escnet.data.train_dataset import resolve_dataset

    if spec in GENERATED:
        info = resolve_dataset(spec, root, split)
        return info.dataset, info.groups
    return get_dataset(spec, root, split), None
